"""Properties of the translation over generated clusters: it never fails, and every
reference it makes (policy names, service keys) points at a resource it also sends."""

# ruff: noqa: E501  (strategy definitions read best one field per line)

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model import (
    AuthorizationAction,
    AuthorizationPolicy,
    ClusterState,
    Condition,
    ContainerPort,
    FrozenMap,
    MtlsMode,
    Namespace,
    Operation,
    PeerAuthentication,
    Pod,
    Rule,
    Service,
    ServicePort,
    Source,
)
from controlplane.workloadapi import translate

NAMESPACES = ["istio-system", "a", "b"]
APPS = ["x", "y", "z"]
LABEL_KEYS = st.sampled_from(["app", "version"])
label_maps = st.dictionaries(LABEL_KEYS, st.sampled_from(APPS), max_size=2)
selectors = st.one_of(
    st.none(), st.dictionaries(LABEL_KEYS, st.sampled_from(APPS), min_size=1).map(FrozenMap)
)
modes = st.sampled_from(list(MtlsMode))
ports = st.integers(min_value=1, max_value=65535)
wildcard_values = st.sampled_from(["*", "a*", "*b", "exact", "cluster.local/ns/a/sa/x"])


@st.composite
def pods(draw: st.DrawFn, index: int) -> Pod:
    return Pod(
        namespace=draw(st.sampled_from(NAMESPACES)),
        name=f"p{index}",
        labels=FrozenMap(draw(label_maps)),
        ip=draw(st.one_of(st.none(), st.just(f"10.244.0.{index + 1}"))),
        phase=draw(st.sampled_from(["Running", "Pending", "Succeeded", ""])),
        ready=draw(st.booleans()),
        host_network=draw(st.booleans()),
        ports=tuple(ContainerPort(p, n) for p, n in draw(st.lists(st.tuples(ports, st.sampled_from(["http", "grpc"])), max_size=2))),
    )  # fmt: skip


@st.composite
def services(draw: st.DrawFn, index: int) -> Service:
    targets = st.one_of(ports, st.sampled_from(["http", "grpc", "nope"]))
    return Service(
        namespace=draw(st.sampled_from(NAMESPACES)),
        name=f"s{index}",
        selector=draw(selectors),
        cluster_ips=draw(st.sampled_from([(), (f"10.96.0.{index + 1}",)])),
        type=draw(st.sampled_from(["ClusterIP", "ExternalName"])),
        ports=tuple(ServicePort(p, t, name=f"n{i}") for i, (p, t) in enumerate(draw(st.lists(st.tuples(ports, targets), max_size=3)))),
    )  # fmt: skip


rules = st.builds(
    Rule,
    sources=st.lists(st.builds(Source, principals=st.lists(wildcard_values, max_size=2).map(tuple), request_principals=st.lists(wildcard_values, max_size=1).map(tuple), ip_blocks=st.sampled_from([(), ("10.0.0.0/8",)])), max_size=2).map(tuple),
    operations=st.lists(st.builds(Operation, ports=st.lists(ports, max_size=2).map(tuple), methods=st.sampled_from([(), ("GET",)])), max_size=2).map(tuple),
    conditions=st.lists(st.sampled_from([Condition("source.ip", ("10.0.0.1",)), Condition("destination.port", ("80",)), Condition("source.namespace", (), ("a*",)), Condition("request.headers[x]", ("v",))]), max_size=2).map(tuple),
)  # fmt: skip


@st.composite
def clusters(draw: st.DrawFn) -> ClusterState:
    pod_list = [draw(pods(i)) for i in range(draw(st.integers(0, 6)))]
    svc_list = [draw(services(i)) for i in range(draw(st.integers(0, 4)))]
    pas = [
        PeerAuthentication(
            namespace=draw(st.sampled_from(NAMESPACES)),
            name=f"pa{i}",
            selector=draw(selectors),
            mode=draw(modes),
            port_level_mtls=FrozenMap(draw(st.dictionaries(ports, modes, max_size=3))),
        )
        for i in range(draw(st.integers(0, 4)))
    ]
    aps = [
        AuthorizationPolicy(
            namespace=draw(st.sampled_from(NAMESPACES)),
            name=f"ap{i}",
            action=draw(st.sampled_from(list(AuthorizationAction))),
            selector=draw(selectors),
            rules=tuple(draw(st.lists(rules, max_size=3))),
        )
        for i in range(draw(st.integers(0, 4)))
    ]
    namespaces = {
        n: Namespace(n, FrozenMap({"istio.io/dataplane-mode": "ambient"} if draw(st.booleans()) else {}))
        for n in NAMESPACES
    }  # fmt: skip
    return ClusterState(
        namespaces=namespaces,
        pods={p.key: p for p in pod_list},
        services={s.key: s for s in svc_list},
        peer_authentications={p.key: p for p in pas},
        authorization_policies={a.key: a for a in aps},
    )


def _workloads(addresses: dict[str, Any]) -> list[Any]:
    return [a.workload for a in addresses.values() if a.WhichOneof("type") == "workload"]


@settings(max_examples=60, deadline=None)
@given(clusters())
def test_every_reference_points_at_a_sent_resource(state: ClusterState) -> None:
    snap = translate(state)
    for w in _workloads(dict(snap.addresses)):
        assert w.uid in snap.addresses
        for name in w.authorization_policies:
            assert name in snap.authorizations, name
        for key in w.services:
            assert key in snap.addresses, key
    for name, message in snap.authorizations.items():
        assert name == f"{message.namespace}/{message.name}"
        assert message.SerializeToString()
    sent_pods = {w.name for w in _workloads(dict(snap.addresses))}
    expected = {p.name for p in state.pods.values() if p.ip and p.phase != "Succeeded"}
    assert sent_pods == expected
