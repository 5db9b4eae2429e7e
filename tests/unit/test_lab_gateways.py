"""Gateway objects in ``ambient lab apply -f``: the waypoint and gateway pods and Services
the lab makes for them (as Istio's gateway controller does), and how it starts them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TypeVar

from controlplane.model import FrozenMap
from controlplane.sources.documents import Document, parse_text
from lab import mesh
from lab.manifests import gateways, parse, planner
from lab.manifests.model import Manifest
from lab.manifests.planner import (
    AddNamespace,
    AddPod,
    AddService,
    Applied,
    LabView,
    PodView,
    RemovePod,
    RemoveService,
    ServiceView,
)
from lab.model import ServicePort
from lab.processes import STOP_TIMEOUT

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "deploy" / "examples" / "tutorial"
NODES = ("node1", "node2")

NS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"""
ISTIO_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{istio: {selector}}}
  servers:
  - port: {{number: {port}, name: {portname}, protocol: HTTP}}
    hosts: ["*"]
"""
API_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: shop}}
spec:
  gatewayClassName: {cls}
  listeners:
  - {{name: {listener}, port: {port}, protocol: {protocol}}}
"""


def _manifests(*texts: str) -> tuple[Manifest, ...]:
    docs: list[Document] = []
    for text in texts:
        docs += parse_text(textwrap.dedent(text), "t.yaml").documents
    return parse.parse_documents(docs).check().manifests


def _plan(
    manifests: tuple[Manifest, ...], view: LabView, record: planner.Record | None = None
) -> planner.Plan:
    return planner.plan_apply(manifests, view, record or {})


def _of(plan: planner.Plan, kind: type[T]) -> list[T]:
    return [a for a in plan.actions if isinstance(a, kind)]


def _view_after(plan: planner.Plan, base: LabView) -> LabView:
    """The lab as it is once ``plan`` ran (pods, Services, namespaces, files)."""
    pods = dict(base.pods)
    services = dict(base.services)
    namespaces = dict(base.namespaces)
    files = dict(base.files)
    vip = 10
    for a in plan.actions:
        if isinstance(a, AddNamespace):
            namespaces[a.name] = dict(a.labels)
        elif isinstance(a, AddPod):
            pods[f"{a.namespace}/{a.name}"] = PodView(a.namespace, a.name, a.node, a.labels)
        elif isinstance(a, AddService):
            vip += 1
            services[f"{a.namespace}/{a.name}"] = ServiceView(
                a.namespace, a.name, a.vip or f"10.96.0.{vip}", a.selector, a.ports
            )
        elif isinstance(a, planner.WriteFile):
            files[a.filename] = a.text
    return LabView(base.nodes, namespaces, pods, services, files)


def test_tutorial_gets_a_waypoint_and_the_ingress_gateway() -> None:
    manifests = parse.load([TUTORIAL]).check().manifests
    plan = _plan(manifests, LabView(nodes=NODES, namespaces={"default": {}}))
    pods = {f"{a.namespace}/{a.name}": a for a in _of(plan, AddPod)}
    waypoint = pods["tutorial/waypoint"]
    assert waypoint.labels == FrozenMap(
        {"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none"}
    )
    assert waypoint.service_account == "waypoint"
    assert [p.program for p in waypoint.programs] == [gateways.PROXY_PROGRAM]
    assert waypoint.programs[0].args == ("waypoint", "waypoint")
    ingress = pods["istio-system/istio-ingressgateway"]
    assert ingress.labels == FrozenMap(
        {
            "istio": "ingressgateway",
            "app": "istio-ingressgateway",
            "istio.io/dataplane-mode": "none",
        }
    )
    assert ingress.service_account == "istio-ingressgateway"
    assert ingress.programs[0].args == ("gateway", "istio-ingressgateway")
    assert AddNamespace("istio-system", FrozenMap()) in plan.actions
    services = {f"{a.namespace}/{a.name}": a for a in _of(plan, AddService)}
    assert services["tutorial/waypoint"].ports == (
        ServicePort(15008, 15008, "mesh"),
        ServicePort(15020, 15020, "metrics"),
        ServicePort(15021, 15021, "status-port"),
    )
    assert services["tutorial/waypoint"].selector == FrozenMap(
        {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    )
    ing = services["istio-system/istio-ingressgateway"]
    assert ing.selector == FrozenMap({"istio": "ingressgateway"})
    assert ServicePort(80, 80, "http") in ing.ports
    outcomes = {o.ref: o for o in plan.outcomes}
    assert outcomes["Gateway.networking.istio.io/tutorial/tutorial-gateway"].detail == (
        "gateway pod istio-system/istio-ingressgateway"
    )
    assert outcomes["Gateway.gateway.networking.k8s.io/tutorial/waypoint"].detail == (
        "waypoint pod tutorial/waypoint"
    )
    # The pod is made before its Service, both before nothing else needs them.
    order = [type(a).__name__ for a in plan.actions]
    assert order.index("AddNamespace", 1) < order.index("AddPod", order.index("AddNamespace", 1))


def test_reapplying_changes_nothing() -> None:
    manifests = parse.load([TUTORIAL]).check().manifests
    base = LabView(nodes=NODES, namespaces={"default": {}})
    first = _plan(manifests, base)
    again = _plan(manifests, _view_after(first, base), first.record)
    assert again.actions == ()
    assert {o.result for o in again.outcomes} == {"unchanged"}


def test_one_ingress_for_every_istio_gateway_with_the_union_of_ports() -> None:
    base = LabView(nodes=NODES, namespaces={"default": {}})
    a = _manifests(
        NS,
        ISTIO_GATEWAY.format(name="a", selector="ingressgateway", port=80, portname="http"),
        ISTIO_GATEWAY.format(name="b", selector="ingressgateway", port=8443, portname="https"),
    )
    plan = _plan(a, base)
    assert len(_of(plan, AddPod)) == 1
    (svc,) = _of(plan, AddService)
    assert {p.port for p in svc.ports} == {80, 8443, 15020, 15021}
    # A later apply adds a port: the Service is replaced, keeping its VIP; the pod stays.
    view = _view_after(plan, base)
    c = _manifests(
        ISTIO_GATEWAY.format(name="c", selector="ingressgateway", port=9000, portname="tcp")
    )
    later = _plan(c, view, plan.record)
    assert not _of(later, AddPod)
    (remove,) = _of(later, RemoveService)
    (add,) = _of(later, AddService)
    assert remove.name == add.name == "istio-ingressgateway"
    assert add.vip == view.services["istio-system/istio-ingressgateway"].vip
    assert {p.port for p in add.ports} == {80, 8443, 9000, 15020, 15021}


def test_gateways_the_lab_does_not_deploy() -> None:
    plan = _plan(
        _manifests(
            NS,
            ISTIO_GATEWAY.format(name="a", selector="eastwest", port=80, portname="http"),
            API_GATEWAY.format(name="b", cls="nginx", listener="http", port=80, protocol="HTTP"),
        ),
        LabView(nodes=NODES, namespaces={"default": {}}),
    )
    assert not _of(plan, AddPod)
    assert not _of(plan, AddService)


def test_gateway_api_class_istio_is_name_dash_istio() -> None:
    plan = _plan(
        _manifests(
            NS,
            API_GATEWAY.format(name="web", cls="istio", listener="http", port=80, protocol="HTTP"),
        ),
        LabView(nodes=NODES, namespaces={"default": {}}),
    )
    (pod,) = _of(plan, AddPod)
    assert (pod.namespace, pod.name, pod.service_account) == ("shop", "web-istio", "web-istio")
    assert pod.labels["gateway.networking.k8s.io/gateway-name"] == "web"
    assert pod.programs[0].args == ("gateway", "web")
    (svc,) = _of(plan, AddService)
    assert ServicePort(80, 80, "http") in svc.ports


def test_delete_removes_the_proxy_unless_another_gateway_needs_it() -> None:
    base = LabView(nodes=NODES, namespaces={"default": {}})
    both = _manifests(
        NS,
        ISTIO_GATEWAY.format(name="a", selector="ingressgateway", port=80, portname="http"),
        ISTIO_GATEWAY.format(name="b", selector="ingressgateway", port=81, portname="http2"),
        API_GATEWAY.format(
            name="w", cls="istio-waypoint", listener="mesh", port=15008, protocol="HBONE"
        ),
    )
    plan = _plan(both, base)
    view = _view_after(plan, base)
    only_a = _manifests(
        ISTIO_GATEWAY.format(name="a", selector="ingressgateway", port=80, portname="http")
    )
    gone_a = planner.plan_delete(only_a, view, plan.record)
    assert not [a for a in gone_a.actions if isinstance(a, RemovePod)]
    waypoint = _manifests(
        API_GATEWAY.format(
            name="w", cls="istio-waypoint", listener="mesh", port=15008, protocol="HBONE"
        )
    )
    gone_w = planner.plan_delete(waypoint, view, plan.record)
    assert RemovePod("shop", "w") in gone_w.actions
    assert RemoveService("shop", "w") in gone_w.actions
    # Deleting the whole namespace takes the ingress gateway in istio-system too, when
    # no Gateway elsewhere still selects it.
    gone_all = planner.plan_delete(both, view, plan.record)
    assert RemovePod("istio-system", "istio-ingressgateway") in gone_all.actions
    assert RemoveService("istio-system", "istio-ingressgateway") in gone_all.actions


def test_ingress_kept_when_a_gateway_elsewhere_still_selects_it() -> None:
    key = "istio-system/istio-ingressgateway"
    record = {
        "Gateway.networking.istio.io/other/g": Applied(
            files=("x.yaml",), pods=(key,), port_names=FrozenMap({"http": 80})
        )
    }
    view = LabView(
        nodes=NODES,
        namespaces={"shop": {}, "istio-system": {}},
        pods={key: PodView("istio-system", "istio-ingressgateway", "node1")},
        services={key: ServiceView("istio-system", "istio-ingressgateway", "10.96.0.20")},
    )
    gone = planner.plan_delete(
        _manifests(
            ISTIO_GATEWAY.format(name="a", selector="ingressgateway", port=80, portname="http")
        ),
        view,
        record,
    )
    assert not [a for a in gone.actions if isinstance(a, RemovePod | RemoveService)]


def test_proxy_argv_carries_the_control_plane_token_and_tracer(tmp_path: Path) -> None:
    endpoint = mesh.MeshEndpoint(
        xds_address="172.30.5.1:15012",
        xds_server_name="istiod.istio-system.svc",
        root_cert="/state/root-cert.pem",
        tokens={"node1": "/run/node1.token"},
    )
    mesh.register(tmp_path, endpoint.with_traces("172.30.5.1:9411"))
    back = mesh.registered(tmp_path)
    assert back is not None and back.traces_address == "172.30.5.1:9411"
    argv = mesh.proxy_argv(
        back,
        kind="waypoint",
        namespace="tutorial",
        service_account="waypoint",
        gateway_name="waypoint",
        ip="10.244.1.7",
        node="node1",
    )
    assert argv[:5] == ["python", "-m", "ambient", "waypoint", "run"]
    text = " ".join(argv)
    for part in (
        "--kind waypoint",
        "--gateway-name waypoint",
        "--xds-address 172.30.5.1:15012",
        "--xds-root-cert /state/root-cert.pem",
        "--auth-token-file /run/node1.token",
        "--collector 172.30.5.1:9411",
    ):
        assert part in text
    drain = float(argv[argv.index("--drain-seconds") + 1])
    assert 0 < drain < STOP_TIMEOUT  # the drain ends before the lab would kill the proxy
    assert mesh.registered(tmp_path / "nothing") is None


def test_outside_names_of_a_gateway() -> None:
    dep = gateways.ingress_deployment([{"http": 80}])
    assert gateways.outside_names(dep)[0] == "istio-ingressgateway.istio-system"
    assert gateways.outside_names(gateways.waypoint_deployment("ns", "w")) == []


def test_proxy_pods_are_recognised_by_their_labels() -> None:
    from types import SimpleNamespace

    from lab.manifests.proxies import proxy_pods
    from lab.model import Pod

    def pod(ns: str, name: str, labels: dict[str, str]) -> Pod:
        return Pod(
            name=name,
            namespace=ns,
            node="node1",
            netns=f"x-pod-{name}",
            ip="10.244.1.9",
            host_ifname="veth0",
            uid="u",
            service_account=name,
            labels=labels,
        )

    gw = gateways.GATEWAY_NAME_LABEL
    lab = SimpleNamespace(
        pods=[
            pod("istio-system", "istio-ingressgateway", {"istio": "ingressgateway"}),
            pod("tutorial", "waypoint", {gw: "waypoint"}),
            pod("shop", "web-istio", {gw: "web"}),
            pod("shop", "impostor", {gw: "web"}),
            pod("tutorial", "backend", {"app": "backend"}),
        ]
    )
    found = {(p.pod.key, p.kind, p.gateway_name) for p in proxy_pods(lab)}  # type: ignore[arg-type]
    assert found == {
        ("istio-system/istio-ingressgateway", "gateway", "istio-ingressgateway"),
        ("tutorial/waypoint", "waypoint", "waypoint"),
        ("shop/web-istio", "gateway", "web"),
    }
