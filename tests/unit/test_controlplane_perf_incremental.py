"""Incremental translation and serialization equal the full ones after any change sequence.

Hypothesis draws a sequence of clusters; each next state mixes the previous one with a
new draw table by table and key by key (unchanged objects stay the same objects, as
the sources keep them), so single-object changes, whole-table swaps and no-ops all
occur. After every step :class:`IncrementalTranslator` must give exactly what
:func:`translate` gives, and :class:`SnapshotBuilder` exactly what
``ServerSnapshot.build`` gives (bytes, versions, per-type versions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.messages import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from controlplane.model import ClusterState, FrozenMap, Namespace, Pod
from controlplane.server import SnapshotBuilder, snapshot_of
from controlplane.workloadapi import MeshConfig, Snapshot, translate
from controlplane.workloadapi.incremental import IncrementalTranslator, changed_keys
from tests.unit.test_controlplane_translate_properties import clusters

TABLES = ("namespaces", "pods", "services", "peer_authentications", "authorization_policies")


def encoded(messages: Any) -> dict[str, bytes]:
    return {n: m.SerializeToString(deterministic=True) for n, m in messages.items()}


def same(a: Snapshot, b: Snapshot) -> bool:
    return encoded(a.addresses) == encoded(b.addresses) and encoded(a.authorizations) == encoded(
        b.authorizations
    )


@st.composite
def mixed(draw: st.DrawFn, previous: ClusterState) -> ClusterState:
    """A state built from ``previous`` and a fresh draw, table by table, key by key."""
    new = draw(clusters())
    tables: dict[str, dict[Any, Any]] = {}
    for table in TABLES:
        old_t, new_t = getattr(previous, table), getattr(new, table)
        how = draw(st.sampled_from(["keep", "swap", "mix"]))
        if how == "keep":
            tables[table] = dict(old_t)
        elif how == "swap":
            tables[table] = dict(new_t)
        else:
            merged = {}
            for key in sorted(set(old_t) | set(new_t), key=str):
                pick = draw(st.sampled_from(["old", "new", "gone"]))
                source = old_t if pick == "old" else new_t if pick == "new" else {}
                if key in source:
                    merged[key] = source[key]
            tables[table] = merged
    return ClusterState(
        namespaces=tables["namespaces"],
        pods=tables["pods"],
        services=tables["services"],
        peer_authentications=tables["peer_authentications"],
        authorization_policies=tables["authorization_policies"],
    )


@st.composite
def sequences(draw: st.DrawFn) -> list[ClusterState]:
    states = [draw(clusters())]
    for _ in range(draw(st.integers(1, 5))):
        states.append(draw(mixed(states[-1])))
    return states


@settings(max_examples=80, deadline=None)
@given(sequences())
def test_incremental_translation_equals_full_translation(states: list[ClusterState]) -> None:
    translator = IncrementalTranslator(MeshConfig())
    for state in states:
        assert same(translator.update(state), translate(state, MeshConfig()))


@settings(max_examples=40, deadline=None)
@given(sequences())
def test_snapshot_builder_equals_full_build(states: list[ClusterState]) -> None:
    builder = SnapshotBuilder(MeshConfig())
    for state in states:
        built, full = builder.build(state), snapshot_of(state, MeshConfig())
        assert built.versions == full.versions
        for type_url in (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL):
            assert dict(built.of(type_url)) == dict(full.of(type_url))


def big_cluster(pods: int) -> ClusterState:
    ambient = FrozenMap({"istio.io/dataplane-mode": "ambient"})
    pod_list = [
        Pod(
            namespace=f"n{i % 10}",
            name=f"p{i}",
            labels=FrozenMap({"app": f"a{i % 50}"}),
            ip=f"10.1.{i // 256}.{i % 256}",
            phase="Running",
            ready=True,
        )
        for i in range(pods)
    ]
    return ClusterState(
        namespaces={f"n{i}": Namespace(f"n{i}", ambient) for i in range(10)},
        pods={p.key: p for p in pod_list},
    )


def test_a_one_pod_change_retranslates_one_workload() -> None:
    state = big_cluster(500)
    translator = IncrementalTranslator()
    translator.update(state)
    pods = dict(state.pods)
    old = pods[("n3", "p3")]
    pods[old.key] = dataclasses.replace(old, labels=FrozenMap({"app": "other"}))
    changed = ClusterState(namespaces=dict(state.namespaces), pods=pods)
    snapshot = translator.update(changed)
    assert translator.retranslated == 1
    assert same(snapshot, translate(changed))
    translator.update(ClusterState(namespaces=dict(state.namespaces), pods=pods))
    assert translator.retranslated == 0


def test_a_namespace_change_retranslates_its_pods_only() -> None:
    state = big_cluster(100)
    translator = IncrementalTranslator()
    translator.update(state)
    namespaces = dict(state.namespaces)
    namespaces["n1"] = Namespace("n1", FrozenMap())
    changed = ClusterState(namespaces=namespaces, pods=dict(state.pods))
    assert same(translator.update(changed), translate(changed))
    assert translator.retranslated == 10


def test_changed_keys_sees_additions_removals_and_new_values() -> None:
    assert sorted(changed_keys({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4})) == [
        "b",
        "c",
        "d",
    ]
    assert changed_keys({"a": 1}, {"a": 1}) == []


def test_a_root_namespace_selector_policy_retranslates_its_pods_in_every_namespace() -> None:
    from controlplane.model import AuthorizationPolicy
    from controlplane.sources.decode import decode

    state = big_cluster(500)
    translator = IncrementalTranslator()
    translator.update(state)
    decoded = decode(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-a7", "namespace": "istio-system"},
            "spec": {"selector": {"matchLabels": {"app": "a7"}}, "action": "DENY"},
        }
    )
    policy = decoded.obj
    assert isinstance(policy, AuthorizationPolicy)
    changed = dataclasses.replace(state, authorization_policies={policy.key: policy})
    snapshot = translator.update(changed)
    assert same(snapshot, translate(changed))
    assert translator.retranslated == 10  # the app=a7 pods, all outside istio-system
    picked = [
        a.workload.name
        for a in snapshot.addresses.values()
        if "istio-system/deny-a7" in a.workload.authorization_policies
    ]
    assert len(picked) == 10
