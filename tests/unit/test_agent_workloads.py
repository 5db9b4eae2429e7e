"""Which pods of a node the programs know, and the plan that brings the maps in step."""

from __future__ import annotations

from agent.layout import WorkloadFlags
from agent.workloads import LocalWorkload, local_workloads, plan
from controlplane.model import ClusterState, FrozenMap, Namespace, Pod

AMBIENT = FrozenMap({"istio.io/dataplane-mode": "ambient"})


def state(*pods: Pod, mesh_labels: FrozenMap[str, str] = AMBIENT) -> ClusterState:
    namespaces = {"mesh": Namespace("mesh", mesh_labels), "plain": Namespace("plain")}
    return ClusterState(namespaces=namespaces, pods={p.key: p for p in pods})


def pod(name: str, ns: str = "mesh", node: str = "node1", ip: str | None = "10.244.1.2", **kw):  # type: ignore[no-untyped-def]
    return Pod(namespace=ns, name=name, node_name=node, ip=ip, **kw)


def test_every_pod_of_the_node_with_an_address_is_known_enrolled_or_not() -> None:
    got = local_workloads(
        state(
            pod("a", ip="10.244.1.2"),
            pod("b", ns="plain", ip="10.244.1.3"),
            pod("c", node="node2", ip="10.244.2.2"),
            pod("pending", ip=None),
            pod("host", ip="172.30.1.11", host_network=True),
            pod("v6", ip="fd00::5"),
            pod("optout", ip="10.244.1.4", labels=FrozenMap({"istio.io/dataplane-mode": "none"})),
        ),
        "node1",
    )
    assert {ip: w.enrolled for ip, w in got.items()} == {
        "10.244.1.2": True,
        "10.244.1.3": False,
        "10.244.1.4": False,
    }
    assert got["10.244.1.2"].key == "mesh/a"


def test_flags_and_stable_id() -> None:
    a = LocalWorkload("mesh", "a", "10.244.1.2", enrolled=True)
    assert a.flags == WorkloadFlags.ENROLLED | WorkloadFlags.LOCAL
    assert LocalWorkload("plain", "b", "10.244.1.3", enrolled=False).flags == WorkloadFlags.LOCAL
    assert a.workload_id == LocalWorkload("mesh", "a", "10.244.1.9", True).workload_id
    assert 0 < a.workload_id < 1 << 31


def test_plan_adds_updates_and_removes() -> None:
    a = LocalWorkload("mesh", "a", "10.244.1.2", True)
    b = LocalWorkload("mesh", "b", "10.244.1.3", True)
    c = LocalWorkload("mesh", "c", "10.244.1.4", True)
    b_out = LocalWorkload("mesh", "b", "10.244.1.3", False)
    changes = plan({a.ip: a, b_out.ip: b_out}, {b.ip: b, c.ip: c})
    assert changes.add == (a,)
    assert changes.update == (b_out,)
    assert changes.remove == (c,)
    assert plan({a.ip: a}, {a.ip: a}).empty


def test_unlabelling_the_namespace_unenrolls_but_keeps_the_pod_known() -> None:
    before = local_workloads(state(pod("a")), "node1")
    after = local_workloads(state(pod("a"), mesh_labels=FrozenMap()), "node1")
    changes = plan(after, before)
    assert changes.update == (LocalWorkload("mesh", "a", "10.244.1.2", False),)
    assert not changes.remove


def test_pods_of_excluded_namespaces_are_never_enrolled_even_if_labelled() -> None:
    labelled = FrozenMap({"istio.io/dataplane-mode": "ambient"})
    got = local_workloads(
        state(
            pod("a", ip="10.244.1.2"),
            pod("dns", ns="kube-system", ip="10.244.1.3", labels=labelled),
            pod("gw", ns="istio-system", ip="10.244.1.4", labels=labelled),
            pod("b", ns="plain", ip="10.244.1.5", labels=labelled),
        ),
        "node1",
        frozenset({"kube-system", "istio-system"}),
    )
    # still known to the programs (their SYNs to enrolled pods must reach ztunnel)
    assert {ip: w.enrolled for ip, w in got.items()} == {
        "10.244.1.2": True,
        "10.244.1.3": False,
        "10.244.1.4": False,
        "10.244.1.5": True,
    }


def test_an_excluded_mesh_namespace_drops_out_of_the_mesh() -> None:
    got = local_workloads(state(pod("a", ip="10.244.1.2")), "node1", ("mesh",))
    assert not got["10.244.1.2"].enrolled
