"""Decoding Gateway API Gateways and HTTPRoutes and Istio Gateways into model shells."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.model import (
    Gateway,
    GatewayListener,
    GatewayStaticAddress,
    HTTPRoute,
    IstioGateway,
    ParentRef,
    Severity,
)
from controlplane.sources.decode import decode
from controlplane.sources.folder import FolderSource

WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: demo
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
"""

INGRESS = """
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: web, namespace: demo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: http}
    hosts: ["*"]
"""

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: backend, namespace: demo}
spec:
  parentRefs:
  - {name: backend, kind: Service, group: "", port: 8080}
  - {name: gw, namespace: other, sectionName: http}
  hostnames: [backend.demo]
  rules:
  - backendRefs:
    - {name: backend-v1, port: 8080, weight: 90}
    - {name: backend-v2, port: 8080, weight: 10}
"""


def load(text: str) -> Any:
    return yaml.safe_load(text)


def test_waypoint_gateway_decodes_to_a_shell() -> None:
    result = decode(load(WAYPOINT))
    assert result.problems == []
    gw = result.obj
    assert isinstance(gw, Gateway)
    assert (gw.namespace, gw.name, gw.gateway_class) == ("demo", "waypoint", "istio-waypoint")
    assert gw.is_waypoint
    assert gw.listeners == (GatewayListener(name="mesh", port=15008, protocol="HBONE"),)
    assert gw.labels["istio.io/waypoint-for"] == "service"
    assert gw.spec["listeners"][0]["port"] == 15008
    hash(gw)


def test_gateway_listeners_tls_allowed_routes_and_addresses() -> None:
    raw = load(WAYPOINT)
    raw["apiVersion"] = "gateway.networking.k8s.io/v1beta1"
    raw["spec"] = {
        "gatewayClassName": "istio",
        "addresses": [{"value": "10.96.0.50"}],
        "listeners": [
            {
                "name": "https",
                "port": 443,
                "protocol": "HTTPS",
                "hostname": "*.example.com",
                "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]},
                "allowedRoutes": {"namespaces": {"from": "All"}},
            }
        ],
    }
    gw = decode(raw).obj
    assert isinstance(gw, Gateway) and not gw.is_waypoint
    (listener,) = gw.listeners
    assert listener.hostname == "*.example.com"
    assert listener.tls is not None and listener.tls["certificateRefs"][0]["name"] == "cert"
    assert listener.allowed_routes == {"namespaces": {"from": "All"}}
    assert gw.addresses == (GatewayStaticAddress("10.96.0.50", "IPAddress"),)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"listeners": [{"name": "m", "port": 1, "protocol": "HBONE"}]}, "spec.gatewayClassName"),
        ({"gatewayClassName": "istio"}, "spec.listeners"),
        ({"gatewayClassName": "istio", "listeners": []}, "spec.listeners"),
        (
            {"gatewayClassName": "istio", "listeners": [{"name": "m", "protocol": "HTTP"}]},
            "spec.listeners[0].port",
        ),
        (
            {"gatewayClassName": "x", "listeners": [{"name": "m", "port": 80, "protocol": "FTP"}]},
            "spec.listeners[0].protocol",
        ),
        (
            {
                "gatewayClassName": "x",
                "listeners": [{"name": "m", "port": 443, "protocol": "HTTPS"}],
            },
            "spec.listeners[0].tls",
        ),
        (
            {
                "gatewayClassName": "x",
                "listeners": [
                    {"name": "m", "port": 80, "protocol": "HTTP"},
                    {"name": "m", "port": 81, "protocol": "HTTP"},
                ],
            },
            "spec.listeners[1].name",
        ),
        (
            {
                "gatewayClassName": "x",
                "listeners": [{"name": "m", "port": 80, "protocol": "HTTP"}],
                "addresses": [{"type": "IPAddress"}],
            },
            "spec.addresses[0].value",
        ),
    ],
)
def test_bad_gateways_name_the_field(spec: dict[str, Any], field: str) -> None:
    raw = load(WAYPOINT)
    raw["spec"] = spec
    result = decode(raw)
    assert result.obj is None
    assert field in [p.field for p in result.problems]


def test_gateway_api_version_must_be_v1_or_v1beta1() -> None:
    raw = load(WAYPOINT)
    raw["apiVersion"] = "gateway.networking.k8s.io/v1alpha2"
    assert "apiVersion" in [p.field for p in decode(raw).problems]


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_istio_gateway_decodes(version: str) -> None:
    raw = load(INGRESS)
    raw["apiVersion"] = f"networking.istio.io/{version}"
    result = decode(raw)
    assert result.problems == []
    gw = result.obj
    assert isinstance(gw, IstioGateway)
    assert gw.selector == {"istio": "ingressgateway"}
    (server,) = gw.servers
    assert (server.port, server.protocol, server.hosts, server.port_name) == (
        80,
        "HTTP",
        ("*",),
        "http",
    )
    assert result.key_kind == "Gateway.networking.istio.io"


@pytest.mark.parametrize(
    ("server", "field"),
    [
        ({"hosts": ["*"]}, "spec.servers[0].port"),
        ({"port": {"number": 80, "protocol": "HTTP"}}, "spec.servers[0].hosts"),
        (
            {"port": {"number": 0, "protocol": "HTTP"}, "hosts": ["*"]},
            "spec.servers[0].port.number",
        ),
        (
            {"port": {"number": 80, "protocol": "FTP"}, "hosts": ["*"]},
            "spec.servers[0].port.protocol",
        ),
        ({"port": {"number": 443, "protocol": "HTTPS"}, "hosts": ["*"]}, "spec.servers[0].tls"),
    ],
)
def test_bad_istio_gateways_name_the_field(server: dict[str, Any], field: str) -> None:
    raw = load(INGRESS)
    raw["spec"]["servers"] = [server]
    result = decode(raw)
    assert result.obj is None
    assert field in [p.field for p in result.problems]


def test_http_route_decodes() -> None:
    result = decode(load(ROUTE))
    assert result.problems == []
    route = result.obj
    assert isinstance(route, HTTPRoute)
    assert route.parent_refs == (
        ParentRef(name="backend", kind="Service", group="", port=8080),
        ParentRef(name="gw", namespace="other", section_name="http"),
    )
    assert route.hostnames == ("backend.demo",)
    assert route.spec["rules"][0]["backendRefs"][1]["weight"] == 10


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"parentRefs": [{"kind": "Gateway"}]}, "spec.parentRefs[0].name"),
        ({"rules": [{"backendRefs": [{"port": 80}]}]}, "spec.rules[0].backendRefs[0].name"),
        (
            {"rules": [{"backendRefs": [{"name": "b", "weight": -1}]}]},
            "spec.rules[0].backendRefs[0].weight",
        ),
        ({"hostnames": [3]}, "spec.hostnames[0]"),
    ],
)
def test_bad_http_routes_name_the_field(patch: dict[str, Any], field: str) -> None:
    raw = load(ROUTE)
    raw["spec"].update(patch)
    result = decode(raw)
    assert result.obj is None
    assert field in [p.field for p in result.problems]
    assert all(p.severity is Severity.ERROR for p in result.problems)


def test_folder_keeps_both_gateway_kinds_apart(tmp_path: Path) -> None:
    ingress = INGRESS.replace("name: web", "name: waypoint")
    (tmp_path / "all.yaml").write_text(WAYPOINT + "---" + ingress + "---" + ROUTE)
    state = FolderSource(tmp_path).load()
    assert state.errors == () and state.warnings == ()
    assert set(state.gateways) == {("demo", "waypoint")}
    assert set(state.istio_gateways) == {("demo", "waypoint")}
    assert set(state.http_routes) == {("demo", "backend")}


def test_folder_keeps_last_good_istio_gateway(tmp_path: Path) -> None:
    source = FolderSource(tmp_path)
    (tmp_path / "gw.yaml").write_text(INGRESS)
    assert ("demo", "web") in source.load().istio_gateways
    (tmp_path / "gw.yaml").write_text(INGRESS.replace('hosts: ["*"]', "hosts: []"))
    state = source.load()
    assert ("demo", "web") in state.istio_gateways
    assert "previous version stays in force" in state.errors[0].message


def test_the_kubernetes_source_lists_and_decodes_gateway_kinds() -> None:
    from controlplane.sources.kube import DEFAULT_KINDS, KindTable, state_of

    kinds = {(k.group, k.kind): k for k in DEFAULT_KINDS}
    tables = []
    for key, text in (
        (("gateway.networking.k8s.io", "Gateway"), WAYPOINT),
        (("networking.istio.io", "Gateway"), INGRESS),
        (("gateway.networking.k8s.io", "HTTPRoute"), ROUTE),
    ):
        raw = load(text)
        del raw["apiVersion"], raw["kind"]  # list items carry neither
        table = KindTable(kinds[key])
        table.replace([raw], "1")
        tables.append(table)
    state = state_of(tables)
    assert state.errors == ()
    assert set(state.gateways) == {("demo", "waypoint")}
    assert set(state.istio_gateways) == {("demo", "web")}
    assert set(state.http_routes) == {("demo", "backend")}
