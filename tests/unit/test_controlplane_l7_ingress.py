"""The ingress gateway's resources (controlplane/envoy/ingress.py): the tutorial's Istio
Gateway + VirtualService, Gateway API class istio + HTTPRoute, TLS, policies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.envoy import hbone
from controlplane.envoy.bootstrap import as_json
from controlplane.envoy.ingress import IngressResources, translate_ingress
from controlplane.model import ClusterState, Severity
from controlplane.sources.documents import parse_text
from controlplane.sources.folder import decode_file, merge_files

TUTORIAL = Path(__file__).parents[2] / "deploy" / "examples" / "tutorial" / "traffic.yaml"

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: tutorial, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: frontend, namespace: tutorial}
spec:
  selector: {app: frontend}
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 80, targetPort: 5678}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: tutorial}
spec:
  selector: {app: backend}
  clusterIP: 10.96.0.31
  ports: [{name: http, port: 80, targetPort: 5678}]
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels: {istio: ingressgateway, app: istio-ingressgateway}
spec: {serviceAccountName: istio-ingressgateway, nodeName: node1}
status: {podIP: 10.1.0.50, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: web-istio, namespace: web, labels: {gateway.networking.k8s.io/gateway-name: web}}
spec: {serviceAccountName: web-istio, nodeName: node1}
status: {podIP: 10.1.0.51, phase: Running}
"""


@dataclass(frozen=True)
class Proxy:
    namespace: str
    gateway_name: str
    service_account: str
    ip: str


INGRESS = Proxy("istio-system", "istio-ingressgateway", "istio-ingressgateway", "10.1.0.50")
WEB = Proxy("web", "web", "web-istio", "10.1.0.51")


def state(*texts: str) -> ClusterState:
    results = [
        decode_file(f"f{i}.yaml", parse_text(t, f"f{i}.yaml"), {}) for i, t in enumerate(texts)
    ]
    merged = merge_files(results)
    assert not merged.errors, merged.errors
    return merged


def translate(*texts: str, proxy: Proxy = INGRESS) -> IngressResources:
    return translate_ingress(state(CLUSTER, *texts), proxy)


def hcm(listener: Any, chain: int = -1) -> dict[str, Any]:
    config = as_json(listener)
    manager: dict[str, Any] = config["filter_chains"][chain]["filters"][0]["typed_config"]
    return manager


# --- Istio Gateway + VirtualService (the tutorial) --------------------------------------------


def test_tutorial_gateway_routes_to_frontend_over_hbone() -> None:
    out = translate(TUTORIAL.read_text())
    assert not [i for i in out.issues if i.severity is Severity.ERROR], out.issues
    assert sorted(out.listeners) == ["0.0.0.0_80", hbone.CONNECT_ORIGINATE]
    listener = as_json(out.listeners["0.0.0.0_80"])
    assert listener["address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 80}}
    manager = hcm(out.listeners["0.0.0.0_80"])
    assert manager["rds"]["route_config_name"] == "http.80"
    assert manager["use_remote_address"] is True
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    (vhost,) = as_json(out.routes["http.80"])["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    assert (
        vhost["routes"][0]["route"]["cluster"] == "outbound|80||frontend.tutorial.svc.cluster.local"
    )
    frontend = out.clusters["outbound|80||frontend.tutorial.svc.cluster.local"]
    assert frontend.transport_socket.name == "envoy.transport_sockets.internal_upstream"
    assert hbone.CONNECT_ORIGINATE in out.clusters
    assert out.endpoints["outbound|80||frontend.tutorial.svc.cluster.local"].service == (
        "tutorial",
        "frontend",
    )
    # The mesh-only backend VirtualService does not reach the gateway.
    assert not any("backend" in name for name in out.clusters)


def test_wildcard_gateway_hosts_are_not_warned_about() -> None:
    out = translate(TUTORIAL.read_text())
    assert not [i for i in out.issues if "wildcard" in i.message], out.issues


GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: tutorial}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com, "tutorial/api.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 8080, name: other, protocol: HTTP}
    hosts: ["*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: tutorial}
spec:
  hosts: [shop.example.com, api.example.com]
  gateways: [tutorial/gw, mesh]
  http:
  - match: [{uri: {prefix: /api}, port: 8080, scheme: {exact: http}, gateways: [gw]}]
    route: [{destination: {host: backend, port: {number: 80}}}]
  - route: [{destination: {host: frontend}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: tutorial}
spec:
  hosts: [shop.example.com]
  gateways: [other-gateway]
  http: [{route: [{destination: {host: backend}}]}]
"""


def test_servers_hosts_ports_and_virtual_services() -> None:
    out = translate(GATEWAY)
    assert sorted(out.routes) == ["http.443", "http.80", "http.8080"]
    http80 = as_json(out.routes["http.80"])["virtual_hosts"]
    assert [v["domains"] for v in http80] == [["api.example.com"], ["shop.example.com"]]
    assert all(v["require_tls"] == "ALL" for v in http80)
    # port-bound match: only on 8080
    assert [len(v["routes"]) for v in http80] == [1, 1]
    http8080 = as_json(out.routes["http.8080"])["virtual_hosts"]
    assert [len(v["routes"]) for v in http8080] == [2, 2]
    assert http8080[0]["routes"][0]["route"]["cluster"] == (
        "outbound|80||backend.tutorial.svc.cluster.local"
    )
    # the other gateway's VirtualService is not here
    assert all(r["name"].startswith("tutorial.shop.") for v in http80 for r in v["routes"])


def test_https_server_terminates_tls_with_the_credential_over_sds() -> None:
    out = translate(GATEWAY)
    listener = as_json(out.listeners["0.0.0.0_443"])
    (chain,) = listener["filter_chains"]
    assert chain["filter_chain_match"] == {
        "server_names": ["shop.example.com"],
        "transport_protocol": "tls",
    }
    context = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["tls_certificate_sds_secret_configs"] == [
        {"name": "kubernetes://shop-cert", "sds_config": {"ads": {}, "resource_api_version": "V3"}}
    ]
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"


def test_gateway_selecting_other_pods_is_not_served() -> None:
    out = translate(GATEWAY.replace("istio: ingressgateway", "istio: egressgateway"))
    assert out.listeners == {} and out.routes == {}


def test_unsupported_servers_are_warnings() -> None:
    tcp = GATEWAY.replace("protocol: HTTPS", "protocol: TLS").replace(
        "mode: SIMPLE", "mode: PASSTHROUGH"
    )
    out = translate(tcp)
    assert any("TLS servers are not served yet" in i.message for i in out.issues)


def test_policies_selecting_the_gateway_pod() -> None:
    policy = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]
"""
    out = translate(TUTORIAL.read_text(), policy)
    names = [f["name"] for f in hcm(out.listeners["0.0.0.0_80"])["http_filters"]]
    assert names[0] == "envoy.filters.http.rbac"


# --- Gateway API class istio + HTTPRoute ------------------------------------------------------

API = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: web}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com",
     allowedRoutes: {namespaces: {from: All}}}
  - {name: https, port: 443, protocol: HTTPS, hostname: secure.example.com,
     tls: {mode: Terminate, certificateRefs: [{name: secure-cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: tutorial}
spec:
  parentRefs: [{name: web, namespace: web, sectionName: http}]
  hostnames: [shop.example.com, other.org]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: backend, port: 80}]
  - backendRefs: [{name: frontend, port: 80, weight: 9}, {name: backend, port: 80, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secure, namespace: web}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: frontend, namespace: tutorial, port: 80}]}]
"""


def test_gateway_api_listeners_and_routes() -> None:
    out = translate(API, proxy=WEB)
    assert sorted(out.listeners) == ["0.0.0.0_443", "0.0.0.0_80", hbone.CONNECT_ORIGINATE]
    http80 = as_json(out.routes["http.80"])["virtual_hosts"]
    by_domain = {v["domains"][0]: v for v in http80}
    # the route's hostnames within the listener's; the 'secure' route (no hostnames,
    # attached to every listener) takes the listener's hostname
    assert sorted(by_domain) == ["*.example.com", "shop.example.com"]
    shop = by_domain["shop.example.com"]["routes"]
    assert shop[0]["match"] == {"path_separated_prefix": "/api"}
    assert [c["weight"] for c in shop[1]["route"]["weighted_clusters"]["clusters"]] == [9, 1]
    secure = as_json(out.routes["http.443"])["virtual_hosts"]
    assert [v["domains"] for v in secure] == [["secure.example.com"]]
    chain = as_json(out.listeners["0.0.0.0_443"])["filter_chains"][0]
    assert chain["filter_chain_match"]["server_names"] == ["secure.example.com"]


def test_allowed_routes_same_namespace_by_default() -> None:
    same = API.replace("allowedRoutes: {namespaces: {from: All}}", "name2: x").replace(
        ",\n     name2: x", ""
    )
    out = translate(same, proxy=WEB)
    http80 = as_json(out.routes["http.80"])["virtual_hosts"]
    assert [v["domains"] for v in http80] == [["*.example.com"]]


def test_root_namespace_policy_selecting_a_gateway_pod_of_another_namespace() -> None:
    policy = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: NS}
spec:
  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: web}}
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]
"""
    # Istio: a root-namespace selector matches workloads in every namespace.
    out = translate(API, policy.replace("NS", "istio-system"), proxy=WEB)
    names = [f["name"] for f in hcm(out.listeners["0.0.0.0_80"])["http_filters"]]
    assert names[0] == "envoy.filters.http.rbac"
    # Any other namespace's selector stays in that namespace.
    out = translate(API, policy.replace("NS", "tutorial"), proxy=WEB)
    names = [f["name"] for f in hcm(out.listeners["0.0.0.0_80"])["http_filters"]]
    assert "envoy.filters.http.rbac" not in names


def test_policy_targeting_the_gateway() -> None:
    policy = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: web}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""
    out = translate(API, policy, proxy=WEB)
    names = [f["name"] for f in hcm(out.listeners["0.0.0.0_80"])["http_filters"]]
    assert names[0] == "envoy.filters.http.rbac"


def test_destination_rule_tls_stays_inside_the_tunnel() -> None:
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: frontend, namespace: tutorial}
spec: {host: frontend, trafficPolicy: {tls: {mode: SIMPLE, sni: frontend.example}}}
"""
    out = translate(TUTORIAL.read_text(), rule)
    socket = as_json(out.clusters["outbound|80||frontend.tutorial.svc.cluster.local"])[
        "transport_socket"
    ]
    assert socket["name"] == "envoy.transport_sockets.internal_upstream"
    inner = socket["typed_config"]["transport_socket"]
    assert inner["name"] == "envoy.transport_sockets.tls"
    assert inner["typed_config"]["sni"] == "frontend.example"


def test_match_gateways_pick_routes_per_gateway() -> None:
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: tutorial}
spec:
  hosts: [shop.example.com]
  gateways: [gw, mesh]
  http:
  - match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}]
    route: [{destination: {host: backend}}]
  - match: [{uri: {prefix: /edge}, gateways: [gw]}]
    route: [{destination: {host: frontend}}]
"""
    gateway = GATEWAY.split("---", maxsplit=1)[0]
    out = translate(gateway, vs)
    (vhost,) = as_json(out.routes["http.8080"])["virtual_hosts"]
    assert [r["match"]["prefix"] for r in vhost["routes"]] == ["/edge"]
