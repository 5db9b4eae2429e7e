"""Waypoint binding: use-waypoint labels, waypoint-for, addresses, and the workload API."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.messages import security
from api.messages import workload as wl
from controlplane.model import (
    ClusterState,
    FrozenMap,
    Gateway,
    GatewayListener,
    Namespace,
    Pod,
    Service,
    ServicePort,
    deep_freeze,
    is_enrolled,
)
from controlplane.validate import validate_paths
from controlplane.workloadapi import MeshConfig, translate
from controlplane.workloadapi.incremental import IncrementalTranslator
from controlplane.workloadapi.waypoints import (
    TrafficType,
    WaypointIndex,
    binding_issues,
    requested_waypoint,
)

MESH = MeshConfig()
WAYPOINT_VIP = "10.96.0.100"
OTHER_VIP = "10.96.0.200"


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, labels=FrozenMap({"istio.io/dataplane-mode": "ambient", **labels}))


def waypoint(
    name: str = "waypoint",
    namespace: str = "demo",
    waypoint_for: str | None = None,
    allowed: dict[str, Any] | None = None,
    cls: str = "istio-waypoint",
) -> Gateway:
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else {}
    return Gateway(
        namespace,
        name,
        cls,
        labels=FrozenMap(labels),
        listeners=(
            GatewayListener(
                "mesh", 15008, "HBONE", allowed_routes=deep_freeze(allowed) if allowed else None
            ),
        ),
    )


def waypoint_service(
    name: str = "waypoint", namespace: str = "demo", vip: str = WAYPOINT_VIP
) -> Service:
    return Service(
        namespace,
        name,
        labels=FrozenMap({"gateway.networking.k8s.io/gateway-name": name}),
        selector=FrozenMap({"gateway.networking.k8s.io/gateway-name": name}),
        cluster_ips=(vip,),
        ports=(ServicePort(15008, 15008, "mesh"),),
    )


def waypoint_pod(name: str = "waypoint", namespace: str = "demo", ip: str = "10.244.1.50") -> Pod:
    return Pod(
        namespace,
        name,
        labels=FrozenMap(
            {"gateway.networking.k8s.io/gateway-name": name, "istio.io/dataplane-mode": "none"}
        ),
        node_name="node1",
        service_account=name,
        ip=ip,
        phase="Running",
        ready=True,
    )


def backend_service(**labels: str) -> Service:
    return Service(
        "demo",
        "backend",
        labels=FrozenMap(labels),
        selector=FrozenMap({"app": "backend"}),
        cluster_ips=("10.96.0.10",),
        ports=(ServicePort(80, 8080, "http"),),
    )


def backend_pod(**labels: str) -> Pod:
    return Pod(
        "demo",
        "backend-1",
        labels=FrozenMap({"app": "backend", **labels}),
        node_name="node2",
        service_account="backend",
        ip="10.244.2.5",
        phase="Running",
        ready=True,
    )


def state(
    *,
    namespaces: tuple[Namespace, ...] = (),
    gateways: tuple[Gateway, ...] = (),
    services: tuple[Service, ...] = (),
    pods: tuple[Pod, ...] = (),
) -> ClusterState:
    all_ns = {n.name: n for n in (ns("demo"), ns("other"), *namespaces)}
    return ClusterState(
        namespaces=all_ns,
        gateways={g.key: g for g in gateways},
        services={s.key: s for s in services},
        pods={p.key: p for p in pods},
    )


def scenario(
    *,
    demo_labels: dict[str, str] | None = None,
    svc_labels: dict[str, str] | None = None,
    pod_labels: dict[str, str] | None = None,
    gateways: tuple[Gateway, ...] = (waypoint(),),
    extra_services: tuple[Service, ...] = (),
) -> ClusterState:
    return state(
        namespaces=(ns("demo", **(demo_labels or {})),),
        gateways=gateways,
        services=(
            backend_service(**(svc_labels or {})),
            waypoint_service(),
            waypoint_service("other-wp", "other", OTHER_VIP),
            *extra_services,
        ),
        pods=(backend_pod(**(pod_labels or {})), waypoint_pod()),
    )


def bound(st: ClusterState) -> tuple[str | None, str | None]:
    """(service waypoint, workload waypoint) as (namespace/name) of the backend."""
    index = WaypointIndex(st)
    svc = index.for_service(st.services[("demo", "backend")]).waypoint
    pod = index.for_pod(st.pods[("demo", "backend-1")]).waypoint
    return (
        f"{svc.namespace}/{svc.name}" if svc else None,
        f"{pod.namespace}/{pod.name}" if pod else None,
    )


USE = "istio.io/use-waypoint"
USE_NS = "istio.io/use-waypoint-namespace"
OTHER_ALL = waypoint("other-wp", "other", allowed={"namespaces": {"from": "All"}})


NAME_LABEL = "kubernetes.io/metadata.name"


def across(selector: dict[str, Any]) -> dict[str, Any]:
    """A Service of demo asking for waypoint other/other-wp, which admits namespaces by
    an allowedRoutes ``selector``."""
    allowed = {"namespaces": {"from": "Selector", "selector": selector}}
    return {
        "svc_labels": {USE: "other/other-wp"},
        "gateways": (waypoint("other-wp", "other", allowed=allowed),),
    }


def in_demo(operator: str) -> dict[str, Any]:
    return {"key": NAME_LABEL, "operator": operator, "values": ["demo"]}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, (None, None)),
        ({"demo_labels": {USE: "waypoint"}}, ("demo/waypoint", None)),
        ({"svc_labels": {USE: "waypoint"}}, ("demo/waypoint", None)),
        ({"demo_labels": {USE: "waypoint"}, "svc_labels": {USE: "#none"}}, (None, None)),
        ({"pod_labels": {USE: "waypoint"}}, (None, None)),  # a service waypoint
        (
            {"pod_labels": {USE: "waypoint"}, "gateways": (waypoint(waypoint_for="workload"),)},
            (None, "demo/waypoint"),
        ),
        (
            {"demo_labels": {USE: "waypoint"}, "gateways": (waypoint(waypoint_for="all"),)},
            ("demo/waypoint", "demo/waypoint"),
        ),
        (
            {
                "demo_labels": {USE: "waypoint"},
                "pod_labels": {USE: "#none"},
                "gateways": (waypoint(waypoint_for="all"),),
            },
            ("demo/waypoint", None),
        ),
        (
            {"demo_labels": {USE: "waypoint"}, "gateways": (waypoint(waypoint_for="none"),)},
            (None, None),
        ),
        # the most specific label wins: the service's over its namespace's
        (
            {
                "demo_labels": {USE: "waypoint"},
                "svc_labels": {USE: "other/other-wp"},
                "gateways": (waypoint(), OTHER_ALL),
            },
            ("other/other-wp", None),
        ),
        (
            {"svc_labels": {USE: "other-wp", USE_NS: "other"}, "gateways": (OTHER_ALL,)},
            ("other/other-wp", None),
        ),
        # cross-namespace needs the waypoint's allowedRoutes to allow it
        (
            {"svc_labels": {USE: "other/other-wp"}, "gateways": (waypoint("other-wp", "other"),)},
            (None, None),
        ),
        (across({"matchLabels": {NAME_LABEL: "demo"}}), ("other/other-wp", None)),
        (across({"matchExpressions": [in_demo("In")]}), ("other/other-wp", None)),
        (across({"matchExpressions": [in_demo("NotIn")]}), (None, None)),
        (across({"matchExpressions": [{"key": "team", "operator": "Exists"}]}), (None, None)),
        (across({"matchExpressions": [{"key": "team", "operator": "Sometimes"}]}), (None, None)),
        ({"svc_labels": {USE: "missing"}}, (None, None)),
        (
            {"svc_labels": {USE: "ingress"}, "gateways": (waypoint("ingress", cls="istio"),)},
            (None, None),
        ),
    ],
    ids=[
        "unlabelled",
        "namespace",
        "service",
        "service-opts-out",
        "pod-label-service-waypoint",
        "pod-workload-waypoint",
        "namespace-all",
        "pod-opts-out",
        "waypoint-for-none",
        "service-beats-namespace",
        "use-waypoint-namespace",
        "cross-ns-not-allowed",
        "cross-ns-selector",
        "cross-ns-expression-in",
        "cross-ns-expression-not-in",
        "cross-ns-expression-exists",
        "cross-ns-expression-unknown",
        "missing-gateway",
        "not-a-waypoint",
    ],
)
def test_binding_table(kwargs: dict[str, Any], expected: tuple[str | None, str | None]) -> None:
    assert bound(scenario(**kwargs)) == expected


def test_requested_waypoint_forms() -> None:
    assert requested_waypoint({USE: "w"}, "a") == ("a", "w")
    assert requested_waypoint({USE: "b/w"}, "a") == ("b", "w")
    assert requested_waypoint({USE: "w", USE_NS: "c"}, "a") == ("c", "w")
    assert requested_waypoint({USE: "#none"}, "a") is None
    assert requested_waypoint({}, "a") is None


def test_waypoint_address_is_its_services_cluster_ip_labelled_or_named() -> None:
    st = scenario()
    assert WaypointIndex(st).waypoints[("demo", "waypoint")].address == WAYPOINT_VIP
    named = replace(waypoint_service(), labels=FrozenMap(), cluster_ips=("10.96.0.77",))
    st2 = state(gateways=(waypoint(),), services=(named,))
    assert WaypointIndex(st2).waypoints[("demo", "waypoint")].address == "10.96.0.77"
    st3 = state(gateways=(waypoint(),))
    assert WaypointIndex(st3).waypoints[("demo", "waypoint")].address is None
    assert WaypointIndex(st3).waypoints[("demo", "waypoint")].traffic_type is TrafficType.SERVICE


def _addresses(st: ClusterState) -> dict[str, Any]:
    return dict(translate(st, MESH).addresses)


def _gateway(address: str) -> Any:
    return wl.GatewayAddress(
        address=wl.NetworkAddress(network="", address=ipaddress.ip_address(address).packed),
        hbone_mtls_port=15008,
    )


def test_workload_api_carries_waypoints_as_istiod_does() -> None:
    st = scenario(demo_labels={USE: "waypoint"}, gateways=(waypoint(waypoint_for="all"),))
    out = _addresses(st)
    svc = out["demo/backend.demo.svc.cluster.local"].service
    assert svc.waypoint == _gateway(WAYPOINT_VIP)
    pod = out["Kubernetes//Pod/demo/backend-1"].workload
    assert pod.waypoint == _gateway(WAYPOINT_VIP)
    # the waypoint's own Service and pod never use a waypoint; its pod speaks HBONE
    assert not out["demo/waypoint.demo.svc.cluster.local"].service.HasField("waypoint")
    wp = out["Kubernetes//Pod/demo/waypoint"].workload
    assert not wp.HasField("waypoint")
    assert wp.tunnel_protocol == wl.HBONE
    assert wp.service_account == "waypoint"


def test_waypoint_pods_are_never_enrolled() -> None:
    labelled_ambient = replace(
        waypoint_pod(),
        labels=FrozenMap(
            {"gateway.networking.k8s.io/gateway-name": "w", "istio.io/dataplane-mode": "ambient"}
        ),
    )
    assert not is_enrolled(labelled_ambient, ns("demo"))
    assert not is_enrolled(waypoint_pod(), ns("demo"))


def test_no_waypoint_without_an_address() -> None:
    st = state(
        namespaces=(ns("demo", **{USE: "waypoint"}),),
        gateways=(waypoint(),),
        services=(backend_service(),),
        pods=(backend_pod(),),
    )
    svc = _addresses(st)["demo/backend.demo.svc.cluster.local"].service
    assert not svc.HasField("waypoint")
    (issue,) = binding_issues(st)
    assert issue.kind == "Namespace" and "has no address yet" in issue.message


def test_binding_issues_name_missing_gateways() -> None:
    st = scenario(svc_labels={USE: "missing"}, pod_labels={USE: "other/nope"})
    issues = binding_issues(st)
    assert [(i.kind, i.name, i.field) for i in issues] == [
        ("Service", "backend", "metadata.labels.istio.io/use-waypoint"),
        ("Pod", "backend-1", "metadata.labels.istio.io/use-waypoint"),
    ]
    assert "waypoint demo/missing does not exist" in issues[0].message
    assert "waypoint other/nope does not exist" in issues[1].message
    assert binding_issues(scenario(svc_labels={USE: "waypoint"})) == []


def _relabel_ns(st: ClusterState, **labels: str) -> ClusterState:
    return replace(st, namespaces={**st.namespaces, "demo": ns("demo", **labels)})


def test_incremental_follows_labels_gateways_and_waypoint_services() -> None:
    steps: list[ClusterState] = []
    st = scenario()
    steps.append(st)
    st = _relabel_ns(st, **{USE: "waypoint"})  # namespace label
    steps.append(st)
    st = replace(st, gateways={("demo", "waypoint"): waypoint(waypoint_for="all")})  # Gateway
    steps.append(st)
    moved = replace(waypoint_service(), cluster_ips=("10.96.0.101",))  # waypoint Service
    st = replace(st, services={**st.services, moved.key: moved})
    steps.append(st)
    pod = backend_pod(**{USE: "#none"})  # pod label
    st = replace(st, pods={**st.pods, pod.key: pod})
    steps.append(st)
    svc = backend_service(**{USE: "#none"})  # service label
    st = replace(st, services={**st.services, svc.key: svc})
    steps.append(st)
    st = replace(st, gateways={})  # waypoint deleted
    steps.append(st)
    translator = IncrementalTranslator(MESH)
    for step in steps:
        assert translator.update(step).addresses == translate(step, MESH).addresses
    assert translator.update(steps[3]).addresses == translate(steps[3], MESH).addresses


def test_validate_warns_for_a_use_waypoint_naming_no_gateway(tmp_path: Path) -> None:
    (tmp_path / "ns.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\n"
        "metadata: {name: demo, labels: {istio.io/use-waypoint: nowhere}}\n"
    )
    state = validate_paths([tmp_path])
    (warning,) = [w for w in state.warnings if "use-waypoint" in w.field]
    assert str(warning) == (
        f"{tmp_path / 'ns.yaml'}:1: warning: Namespace/demo: "
        "metadata.labels.istio.io/use-waypoint: waypoint demo/nowhere does not exist "
        "(no Gateway of class istio-waypoint by that name)"
    )


def test_served_workloads_list_the_implicit_allow_from_their_waypoint() -> None:
    st = scenario(svc_labels={USE: "waypoint"})
    snapshot = translate(st, MESH)
    policy = snapshot.authorizations["demo/istio_allow_waypoint_demo_waypoint"]
    assert (policy.action, policy.scope) == (security.ALLOW, security.WORKLOAD_SELECTOR)
    (rule,) = policy.rules
    (clause,) = rule.clauses
    (match,) = clause.matches
    assert [p.exact for p in match.principals] == ["cluster.local/ns/demo/sa/waypoint"]
    backend = snapshot.addresses["Kubernetes//Pod/demo/backend-1"].workload
    assert list(backend.authorization_policies) == ["demo/istio_allow_waypoint_demo_waypoint"]
    waypoint_pod = snapshot.addresses["Kubernetes//Pod/demo/waypoint"].workload
    assert list(waypoint_pod.authorization_policies) == []
    unbound = translate(scenario(), MESH).addresses["Kubernetes//Pod/demo/backend-1"].workload
    assert list(unbound.authorization_policies) == []


def test_implicit_allow_lives_in_the_served_namespace_and_names_ingress_gateways() -> None:
    ingress = Gateway(
        "edge",
        "web",
        "istio",
        listeners=(GatewayListener("http", 80, "HTTP"),),
    )
    st = scenario(svc_labels={USE: "other/other-wp"}, gateways=(OTHER_ALL, ingress))
    snapshot = translate(st, MESH)
    policy = snapshot.authorizations["demo/istio_allow_waypoint_other_other-wp"]
    assert policy.namespace == "demo"
    principals = [p.exact for p in policy.rules[0].clauses[0].matches[0].principals]
    assert principals == [
        "cluster.local/ns/other/sa/other-wp",
        "cluster.local/ns/edge/sa/web-istio",
    ]
    backend = snapshot.addresses["Kubernetes//Pod/demo/backend-1"].workload
    assert list(backend.authorization_policies) == ["demo/istio_allow_waypoint_other_other-wp"]


_NS_LABELS = st.sampled_from(
    [{}, {USE: "waypoint"}, {USE: "#none"}, {USE: "other/other-wp"}, {USE: "missing"}]
)
_OBJ_LABELS = st.sampled_from(
    [{}, {USE: "waypoint"}, {USE: "#none"}, {USE: "other-wp", USE_NS: "other"}]
)
_GATEWAYS = st.sampled_from(
    [
        (),
        (waypoint(),),
        (waypoint(waypoint_for="all"), OTHER_ALL),
        (waypoint(waypoint_for="workload"),),
        (OTHER_ALL,),
    ]
)
_VIPS = st.sampled_from([WAYPOINT_VIP, "10.96.0.101", None])


@settings(max_examples=20, deadline=None)
@given(
    steps=st.lists(
        st.tuples(_NS_LABELS, _OBJ_LABELS, _OBJ_LABELS, _GATEWAYS, _VIPS), min_size=2, max_size=5
    )
)
def test_incremental_equals_full_over_random_binding_changes(steps: list[Any]) -> None:
    translator = IncrementalTranslator(MESH)
    for ns_labels, svc_labels, pod_labels, gateways, vip in steps:
        extra = () if vip is None else (waypoint_service(vip=vip),)
        st_ = scenario(
            demo_labels=ns_labels, svc_labels=svc_labels, pod_labels=pod_labels, gateways=gateways
        )
        services = {k: v for k, v in st_.services.items() if k != ("demo", "waypoint")}
        st_ = replace(st_, services={**services, **{s.key: s for s in extra}})
        full = translate(st_, MESH)
        got = translator.update(st_)
        assert got.addresses == full.addresses
        assert got.authorizations == full.authorizations


def test_resource_rows_show_waypoints() -> None:
    from controlplane.workloadapi.summary import resource_rows

    st_ = scenario(demo_labels={USE: "waypoint"}, gateways=(waypoint(waypoint_for="all"),))
    rows = {r["name"]: r["summary"] for r in resource_rows(translate(st_, MESH))}
    assert rows["demo/backend.demo.svc.cluster.local"].endswith(" waypoint=10.96.0.100:15008")
    assert " waypoint=10.96.0.100:15008" in rows["Kubernetes//Pod/demo/backend-1"]
    assert "waypoint=" not in rows["Kubernetes//Pod/demo/waypoint"]


def test_ingress_use_waypoint_from_the_service_or_its_namespace() -> None:
    label = "istio.io/ingress-use-waypoint"
    for kwargs, expected in (
        ({}, False),
        ({"svc_labels": {label: "true"}}, True),
        ({"demo_labels": {label: "true"}}, True),
        ({"demo_labels": {label: "true"}, "svc_labels": {label: "false"}}, False),
    ):
        out = translate(scenario(**kwargs), MESH).addresses  # type: ignore[arg-type]
        svc = out["demo/backend.demo.svc.cluster.local"].service
        assert svc.ingress_use_waypoint is expected, kwargs


def test_implicit_allow_names_the_waypoint_pods_service_accounts() -> None:
    st_ = scenario(svc_labels={USE: "waypoint"})
    custom = replace(waypoint_pod(), service_account="custom-sa")
    st_ = replace(st_, pods={**st_.pods, custom.key: custom})
    policy = translate(st_, MESH).authorizations["demo/istio_allow_waypoint_demo_waypoint"]
    principals = [p.exact for p in policy.rules[0].clauses[0].matches[0].principals]
    assert principals == ["cluster.local/ns/demo/sa/custom-sa"]
