"""Domain model: enrollment rules, frozen maps, policy scopes."""

from __future__ import annotations

import pytest

from controlplane.model import (
    FrozenMap,
    MtlsMode,
    Namespace,
    PeerAuthentication,
    Pod,
    PolicyScope,
    deep_freeze,
    deep_thaw,
    is_enrolled,
)

AMBIENT_NS = Namespace("demo", labels=FrozenMap({"istio.io/dataplane-mode": "ambient"}))
PLAIN_NS = Namespace("plain")


def pod(labels: dict[str, str] | None = None, **kw: object) -> Pod:
    args: dict[str, object] = {"namespace": "demo", "name": "p", "ip": "10.244.1.5"}
    args.update(kw)
    return Pod(labels=FrozenMap(labels or {}), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("the_pod", "namespace", "expected"),
    [
        (pod(), AMBIENT_NS, True),
        (pod(), PLAIN_NS, False),
        (pod(), None, False),
        (pod({"istio.io/dataplane-mode": "ambient"}), PLAIN_NS, True),
        (pod({"istio.io/dataplane-mode": "ambient"}), None, True),
        (pod({"istio.io/dataplane-mode": "none"}), AMBIENT_NS, False),
        (pod(ip=None), AMBIENT_NS, False),
        (pod({"istio.io/dataplane-mode": "ambient"}, ip=None), PLAIN_NS, False),
        (pod(host_network=True), AMBIENT_NS, False),
        (
            pod(annotations=FrozenMap({"sidecar.istio.io/status": "{}"})),
            AMBIENT_NS,
            False,
        ),
    ],
    ids=[
        "ns-ambient",
        "ns-plain",
        "ns-unknown",
        "pod-label",
        "pod-label-no-ns",
        "pod-opt-out",
        "no-ip",
        "pod-label-no-ip",
        "host-network",
        "sidecar",
    ],
)
def test_is_enrolled(the_pod: Pod, namespace: Namespace | None, expected: bool) -> None:
    assert is_enrolled(the_pod, namespace) is expected


def test_frozen_map_is_hashable_and_equal_to_dicts() -> None:
    a = FrozenMap({"x": "1", "y": "2"})
    assert a == {"y": "2", "x": "1"}
    assert hash(a) == hash(FrozenMap({"y": "2", "x": "1"}))
    assert a != FrozenMap({"x": "1"})
    with pytest.raises(TypeError):
        a["z"] = "3"  # type: ignore[index]


def test_deep_freeze_round_trips() -> None:
    raw = {"http": [{"route": [{"destination": {"host": "a", "port": {"number": 80}}}]}]}
    frozen = deep_freeze(raw)
    assert isinstance(frozen, FrozenMap)
    assert isinstance(frozen["http"], tuple)
    hash(frozen)
    assert deep_thaw(frozen) == raw


def test_peer_authentication_scope() -> None:
    assert PeerAuthentication("istio-system", "d").scope() is PolicyScope.MESH
    assert PeerAuthentication("demo", "d").scope() is PolicyScope.NAMESPACE
    sel = PeerAuthentication("demo", "d", selector=FrozenMap({"app": "x"}), mode=MtlsMode.STRICT)
    assert sel.scope() is PolicyScope.WORKLOAD
    assert PeerAuthentication("mesh-root", "d").scope("mesh-root") is PolicyScope.MESH
