"""Envoy itself validates the L7 translations of rbac.py (``envoy --mode validate``).

The RBAC filters of policies using every field sit in an HTTP connection manager
before the router; Envoy must accept the result. About a second per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.envoy.bootstrap import HCM, ROUTER, as_json
from controlplane.envoy.rbac import PeerIdentity, build_rbac_filters
from controlplane.model import AuthorizationPolicy, Severity
from controlplane.sources.decode import decode
from tests.envoy_validate import envoy_validate

POLICIES = """
- action: DENY
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules:
  - to: [{operation: {methods: [POST, DELETE], notPaths: ['/public/*'], ports: ['80']}}]
    when:
    - {key: 'request.headers[x-debug]', values: ['*'], notValues: [disabled]}
    - {key: destination.ip, values: [10.96.0.0/12]}
    - {key: connection.sni, values: ['*.local']}
- action: ALLOW
  targetRefs: [{kind: Service, name: backend}]
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/demo/sa/frontend, '*/sa/admin', 'cluster.local/*', '*']
        notPrincipals: [cluster.local/ns/demo/sa/bad]
        namespaces: [demo, 'team-*']
        notNamespaces: [kube-system]
        ipBlocks: [10.0.0.0/8, 'fd00::/64']
        notIpBlocks: [10.9.9.9]
        remoteIpBlocks: [192.168.0.0/16]
        notRemoteIpBlocks: [192.168.1.1]
        trustDomains: [cluster.local]
        requestPrincipals: ['*']
    - source: {notRequestPrincipals: ['*'], serviceAccounts: [frontend, other/client]}
    to:
    - operation:
        hosts: [backend, '*.example.com', '*']
        notHosts: [internal.example.com]
        methods: [GET, HEAD]
        paths: [/exact, /api/*, '*.html', '*']
        notPorts: ['9090']
    when:
    - {key: source.ip, values: [10.0.0.1]}
    - {key: remote.ip, notValues: [10.0.0.2]}
    - {key: source.namespace, values: [demo]}
    - {key: source.principal, values: [cluster.local/ns/demo/sa/x]}
    - {key: source.serviceAccount, values: [demo/x]}
    - {key: destination.port, values: ['80', '8080']}
    - {key: 'request.auth.claims[groups]', values: [admins]}
  - {}
- action: AUDIT
  targetRefs: [{kind: Gateway, name: waypoint}]
  rules: [{to: [{operation: {paths: [/audit]}}]}]
- action: ALLOW
  targetRefs: [{kind: Gateway, name: waypoint}]
  metadata: {annotations: {istio.io/dry-run: 'true'}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


def policies() -> list[AuthorizationPolicy]:
    out = []
    for i, spec in enumerate(yaml.safe_load(POLICIES)):
        meta = {"name": f"p{i}", "namespace": "demo", **spec.pop("metadata", {})}
        decoded = decode(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": meta,
                "spec": spec,
            }
        )
        assert not [p for p in decoded.problems if p.severity is Severity.ERROR], decoded.problems
        assert isinstance(decoded.obj, AuthorizationPolicy)
        out.append(decoded.obj)
    return out


def hcm_listener(
    name: str, port: int, http_filters: list[dict[str, Any]], route_config: dict[str, Any]
) -> dict[str, Any]:
    """A listener on 127.0.0.1 with an HTTP connection manager: ``http_filters`` then
    the router."""
    manager = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": route_config,
        "http_filters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


DIRECT_OK = {
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
        }
    ]
}


def rbac_bootstrap() -> dict[str, Any]:
    listeners = []
    for index, (peer, port) in enumerate(
        [(PeerIdentity.FILTER_STATE, None), (PeerIdentity.TLS, 80)]
    ):
        filters = [as_json(f) for f in build_rbac_filters(policies(), port=port, peer=peer)]
        assert len(filters) == 3
        listeners.append(hcm_listener(f"rbac{index}", 21000 + index, filters, DIRECT_OK))
    return {"static_resources": {"listeners": listeners}}


def tcp_listener(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    """A listener on 127.0.0.1: ``filters`` then a direct response (no upstream)."""
    answer = {
        "name": "envoy.filters.network.direct_response",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3."
            "Config",
            "response": {"inline_string": "ok\n"},
        },
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [*filters, answer]}],
    }


def network_rbac_bootstrap() -> dict[str, Any]:
    from controlplane.envoy.rbac import build_rbac_network_filters

    filters = [as_json(f) for f in build_rbac_network_filters(policies(), port=80)]
    assert len(filters) == 3
    return {"static_resources": {"listeners": [tcp_listener("tcp", 21010, filters)]}}


@pytest.mark.timeout(120)
def test_envoy_accepts_network_rbac_filters(tmp_path: Path) -> None:
    done = envoy_validate(network_rbac_bootstrap(), tmp_path / "tcp.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


@pytest.mark.timeout(120)
def test_envoy_accepts_rbac_filters(tmp_path: Path) -> None:
    done = envoy_validate(rbac_bootstrap(), tmp_path / "rbac.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


@pytest.mark.timeout(120)
def test_rbac_validation_can_fail(tmp_path: Path) -> None:
    """The check is real: a principal regex RE2 refuses fails validation."""
    config = rbac_bootstrap()
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    rules = manager["typed_config"]["http_filters"][2]["typed_config"]["rules"]
    rules["policies"]["broken"] = {
        "permissions": [{"any": True}],
        "principals": [
            {"header": {"name": "x", "string_match": {"safe_regex": {"regex": "(?!a)"}}}}
        ],
    }
    done = envoy_validate(config, tmp_path / "broken.json")
    assert done.returncode != 0


# --- HTTPRoute and the ingress gateway ---------------------------------------------------------

HTTP_ROUTE = """
parentRefs: [{group: '', kind: Service, name: backend, port: 80}]
rules:
- matches:
  - path: {type: PathPrefix, value: /api/}
    headers:
    - {name: end-user, value: jason}
    - {type: RegularExpression, name: x-id, value: '[0-9]+'}
    queryParams: [{name: debug, value: '1'}, {type: RegularExpression, name: v, value: 'a|b'}]
    method: GET
  - path: {type: Exact, value: /exact}
  - path: {type: RegularExpression, value: '/v[0-9]+/.*'}
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{name: x-a, value: '1'}]
      add: [{name: x-b, value: '2'}]
      remove: [x-c]
  - type: ResponseHeaderModifier
    responseHeaderModifier: {set: [{name: x-d, value: '3'}], remove: [server]}
  - type: URLRewrite
    urlRewrite: {hostname: b.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
  - type: RequestMirror
    requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 3}}
  backendRefs:
  - name: backend-v1
    port: 80
    weight: 90
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-v, value: v1}]}}]
  - {name: backend-v2, port: 8080, weight: 10}
  timeouts: {request: 10s, backendRequest: 2s}
  retry: {attempts: 3, codes: [503]}
- matches: [{path: {type: Exact, value: /full}}]
  filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /only}}}]
  backendRefs: [{name: backend, port: 80}]
- matches: [{path: {value: /old}}]
  filters:
  - type: RequestRedirect
    requestRedirect: {scheme: https, hostname: new.example, port: 8443, statusCode: 301,
                      path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
- matches: [{path: {value: /moved}}]
  filters:
  - type: RequestRedirect
    requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /here}, statusCode: 302}
- matches: [{path: {value: /none}}]
  backendRefs: [{name: backend, port: 80, weight: 0}]
"""


def httproute_bootstrap() -> dict[str, Any]:
    from controlplane.envoy.bootstrap import static_bootstrap
    from controlplane.envoy.clusters import build_cluster
    from controlplane.envoy.httproute import gamma_virtual_services
    from controlplane.envoy.routes import build_routes, route_configuration
    from controlplane.envoy.waypoint import WaypointResources
    from controlplane.model import ClusterState, HTTPRoute
    from tests.unit.test_controlplane_l7_httproute import Names, http_route

    route: HTTPRoute = http_route(HTTP_ROUTE, "every-field")
    (vs,), issues = gamma_virtual_services(ClusterState(http_routes={route.key: route}))
    assert not [i for i in issues if i.severity is Severity.ERROR], issues
    built = build_routes(vs.http, 80, Names(), f"{vs.namespace}.{vs.name}")
    config = route_configuration("inbound-vip|80|http|backend", "backend:80", ["*"], built)
    names = set()
    for r in built:
        action = as_json(r).get("route", {})
        names |= {action.get("cluster")} | {
            c["name"] for c in action.get("weighted_clusters", {}).get("clusters", [])
        }
        names |= {m["cluster"] for m in action.get("request_mirror_policies", [])}
    clusters = {n: build_cluster(n, None) for n in names if n}
    assert len(clusters) == 4
    resources = WaypointResources(routes={config.name: config}, clusters=clusters)
    return static_bootstrap(resources)


@pytest.mark.timeout(120)
def test_envoy_accepts_httproute_routes(tmp_path: Path) -> None:
    done = envoy_validate(httproute_bootstrap(), tmp_path / "httproute.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


def ingress_bootstrap(tmp_path: Path) -> list[dict[str, Any]]:
    import datetime as dt

    from controlplane.envoy.bootstrap import proxy_bootstrap, static_secrets
    from controlplane.envoy.ingress import translate_ingress
    from controlplane.envoy.proxy import EnvoyResources, endpoints_of
    from tests.unit import test_controlplane_l7_ingress as ingress
    from ztunnel.identity.certs import LocalCA
    from ztunnel.identity.spiffe import SpiffeId

    now = dt.datetime.now(dt.UTC)
    ca = LocalCA.create(now)
    cert = ca.issue(SpiffeId("cluster.local", "istio-system", "istio-ingressgateway"), now)
    chain, key = b"".join(cert.chain_pem).decode(), cert.key_pem.decode()
    secrets = static_secrets(chain, key, ca.root_pem.decode())
    for name in ("shop-cert", "secure-cert"):
        secrets.append(
            {
                "name": f"kubernetes://{name}",
                "tls_certificate": {
                    "certificate_chain": {"inline_string": chain},
                    "private_key": {"inline_string": key},
                },
            }
        )
    # TLS to the frontend inside the tunnel (DestinationRule SIMPLE).
    tls_rule = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: frontend, namespace: tutorial}\n"
        "spec: {host: frontend, trafficPolicy: {tls: {mode: SIMPLE, sni: frontend}}}\n"
    )
    state = ingress.state(
        ingress.CLUSTER, ingress.TUTORIAL.read_text(), ingress.GATEWAY, ingress.API, tls_rule
    )
    configs = []
    for proxy in (ingress.INGRESS, ingress.WEB):
        out = translate_ingress(state, proxy)
        assert not [i for i in out.issues if i.severity is Severity.ERROR], out.issues
        resources = EnvoyResources(
            listeners=out.listeners,
            routes=out.routes,
            clusters=out.clusters,
            endpoints={n: endpoints_of(state, n, e) for n, e in out.endpoints.items()},
        )
        config = proxy_bootstrap(resources, secrets)
        # Validation binds no port: the listeners' privileged ports stay as they are.
        configs.append(config)
    return configs


@pytest.mark.timeout(120)
def test_envoy_accepts_ingress_gateways(tmp_path: Path) -> None:
    for index, config in enumerate(ingress_bootstrap(tmp_path)):
        done = envoy_validate(config, tmp_path / f"ingress{index}.json")
        assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


# --- DestinationRule tls ------------------------------------------------------------------------

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.timeout(120)
def test_envoy_accepts_destination_rule_tls(tmp_path: Path) -> None:
    from controlplane.envoy import translate_waypoint
    from controlplane.envoy.bootstrap import static_bootstrap
    from controlplane.model import (
        ClusterState,
        DestinationRule,
        FrozenMap,
        Service,
        ServicePort,
        deep_freeze,
    )

    ca = SYSTEM_CA if SYSTEM_CA.exists() else tmp_path / "none.pem"
    spec = yaml.safe_load(
        f"""
host: backend
trafficPolicy:
  tls: {{mode: SIMPLE, sni: backend.example, caCertificates: {ca},
         subjectAltNames: [backend.example, spiffe://x/ns/y/sa/z]}}
  portLevelSettings:
  - {{port: {{number: 8443}}, tls: {{mode: SIMPLE, insecureSkipVerify: true}}}}
  - {{port: {{number: 9443}}, tls: {{mode: SIMPLE}}}}
  - {{port: {{number: 9080}}, tls: {{mode: DISABLE}}}}
"""
    )
    if not SYSTEM_CA.exists():
        pytest.skip(f"no CA bundle at {SYSTEM_CA} to point caCertificates at")
    backend = Service(
        "demo",
        "backend",
        selector=FrozenMap({"app": "backend"}),
        cluster_ips=("10.96.0.10",),
        ports=tuple(ServicePort(p, p, f"http-{p}") for p in (80, 8443, 9443, 9080)),
    )
    state = ClusterState(
        services={backend.key: backend},
        destination_rules={
            ("demo", "backend"): DestinationRule(
                "demo", "backend", "backend", (), deep_freeze(spec)
            )
        },
    )
    resources = translate_waypoint(state, [backend])
    assert not resources.issues, resources.issues
    done = envoy_validate(static_bootstrap(resources), tmp_path / "tls.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
