"""Gateway API HTTPRoute -> typed rules -> Envoy routes (controlplane/envoy/httproute.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controlplane.envoy.bootstrap import as_json
from controlplane.envoy.errors import L7ConfigError
from controlplane.envoy.httproute import (
    gamma_virtual_services,
    ordered_rules,
    parse_http_route,
    parsed_routes,
)
from controlplane.envoy.routes import build_routes
from controlplane.envoy.spec import ConsistentHash, Destination
from controlplane.model import ClusterState, HTTPRoute, Severity
from controlplane.sources.decode import decode

FQDN = "backend.demo.svc.cluster.local"


def http_route(spec: str, name: str = "r", namespace: str = "demo") -> HTTPRoute:
    decoded = decode(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": yaml.safe_load(spec),
        }
    )
    assert not [p for p in decoded.problems if p.severity is Severity.ERROR], decoded.problems
    assert isinstance(decoded.obj, HTTPRoute)
    return decoded.obj


class Names:
    """Destinations as plain cluster names (the waypoint's own resolver is tested there)."""

    def cluster(self, destination: Destination) -> str:
        return f"outbound|{destination.port}||{destination.host}"

    def consistent_hash(self, cluster: str) -> ConsistentHash | None:
        return None


PARENT = "parentRefs: [{group: '', kind: Service, name: backend, port: 80}]\n"


def routes_json(spec: str, port: int = 80) -> list[dict[str, Any]]:
    parsed, _ = parse_http_route(http_route(spec))
    return [as_json(r) for r in build_routes(ordered_rules([parsed]), port, Names(), "demo.r")]


def one_route(rule: str) -> dict[str, Any]:
    (route,) = routes_json(PARENT + f"rules:\n- {rule}")
    return route


BACKEND = "backendRefs: [{name: backend, port: 80}]"


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("{path: {type: Exact, value: /a}}", {"path": "/a"}),
        ("{path: {type: PathPrefix, value: /api/}}", {"path_separated_prefix": "/api"}),
        ("{path: {value: /}}", {"prefix": "/"}),
        (
            "{path: {type: RegularExpression, value: '/v[0-9]+/.*'}}",
            {"safe_regex": {"regex": "/v[0-9]+/.*"}},
        ),
        (
            "{headers: [{name: End-User, value: jason},"
            " {type: RegularExpression, name: x, value: 'a.*'}]}",
            {
                "prefix": "/",
                "headers": [
                    {"name": "end-user", "string_match": {"exact": "jason"}},
                    {"name": "x", "string_match": {"safe_regex": {"regex": "a.*"}}},
                ],
            },
        ),
        (
            "{queryParams: [{name: debug, value: '1'}]}",
            {
                "prefix": "/",
                "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}],
            },
        ),
        (
            "{method: POST}",
            {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
        ),
    ],
)
def test_matches(match: str, expected: dict[str, Any]) -> None:
    route = one_route(f"matches: [{match}]\n  {BACKEND}")
    assert route["match"] == expected


def test_no_match_is_every_path() -> None:
    assert one_route(BACKEND)["match"] == {"prefix": "/"}


def test_weighted_backends_default_weight_one() -> None:
    route = one_route(
        "backendRefs: [{name: backend-v1, port: 80, weight: 90}, {name: backend-v2, port: 8080}]"
    )
    assert route["route"]["weighted_clusters"]["clusters"] == [
        {"name": "outbound|80||backend-v1.demo.svc.cluster.local", "weight": 90},
        {"name": "outbound|8080||backend-v2.demo.svc.cluster.local", "weight": 1},
    ]


def test_backend_in_other_namespace_is_refused_with_a_warning() -> None:
    """No ReferenceGrant is read, so a cross-namespace backend is never routed to."""
    parsed, warnings = parse_http_route(
        http_route(PARENT + "rules: [{backendRefs: [{name: b, namespace: other, port: 9}]}]")
    )
    assert parsed.rules[0].route == ()
    assert parsed.rules[0].direct_response is not None
    assert parsed.rules[0].direct_response.status == 500
    assert "ReferenceGrant" in warnings[0].message and "refused" in warnings[0].message


def test_no_usable_backend_answers_500() -> None:
    assert one_route("backendRefs: [{name: backend, port: 80, weight: 0}]")["direct_response"] == {
        "status": 500
    }
    assert one_route("matches: [{path: {value: /x}}]")["direct_response"] == {"status": 500}


def test_request_and_response_header_modifiers() -> None:
    route = one_route(
        f"""{BACKEND}
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{{name: X-A, value: '1'}}]
      add: [{{name: x-b, value: '2'}}]
      remove: [x-c]
  - type: ResponseHeaderModifier
    responseHeaderModifier: {{set: [{{name: x-d, value: '3'}}], remove: [server]}}"""
    )
    assert route["request_headers_to_add"] == [
        {"header": {"key": "x-a", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-b", "value": "2"}},
    ]
    assert route["request_headers_to_remove"] == ["x-c"]
    assert route["response_headers_to_add"] == [
        {"header": {"key": "x-d", "value": "3"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    ]
    assert route["response_headers_to_remove"] == ["server"]


def test_per_backend_header_filters() -> None:
    route = one_route(
        """backendRefs:
  - name: a
    port: 80
    weight: 1
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-v, value: a}]}}
  - {name: b, port: 80, weight: 1}"""
    )
    first = route["route"]["weighted_clusters"]["clusters"][0]
    assert first["request_headers_to_add"][0]["header"] == {"key": "x-v", "value": "a"}


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        (
            "{scheme: https, hostname: new.example, port: 8443, statusCode: 301, "
            "path: {type: ReplaceFullPath, replaceFullPath: /new}}",
            {
                "scheme_redirect": "https",
                "host_redirect": "new.example",
                "port_redirect": 8443,
                "path_redirect": "/new",
            },
        ),
        (
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
            {"prefix_rewrite": "/v2", "response_code": "FOUND"},
        ),
    ],
)
def test_request_redirect(redirect: str, expected: dict[str, Any]) -> None:
    route = one_route(f"filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]")
    assert route["redirect"] == expected
    assert "route" not in route


def test_url_rewrite() -> None:
    prefix = one_route(
        f"{BACKEND}\n  filters: [{{type: URLRewrite, urlRewrite: {{hostname: b.example, "
        "path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]"
    )
    assert prefix["route"]["prefix_rewrite"] == "/new"
    assert prefix["route"]["host_rewrite_literal"] == "b.example"
    full = one_route(
        f"{BACKEND}\n  filters: [{{type: URLRewrite, urlRewrite: {{"
        "path: {type: ReplaceFullPath, replaceFullPath: /only}}}]"
    )
    assert full["route"]["regex_rewrite"] == {
        "pattern": {"regex": "^/.*$"},
        "substitution": "/only",
    }


def test_request_mirror_percent_and_fraction() -> None:
    route = one_route(
        f"""{BACKEND}
  filters:
  - {{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 80}}, percent: 25}}}}
  - type: RequestMirror
    requestMirror:
      backendRef: {{name: shadow2, port: 80}}
      fraction: {{numerator: 1, denominator: 8}}
  - {{type: RequestMirror, requestMirror: {{backendRef: {{name: all, port: 80}}}}}}"""
    )
    mirrors = route["route"]["request_mirror_policies"]
    assert [m["cluster"].split("|")[3].split(".")[0] for m in mirrors] == [
        "shadow",
        "shadow2",
        "all",
    ]
    assert [m["runtime_fraction"]["default_value"]["numerator"] for m in mirrors] == [
        250000,
        125000,
        1000000,
    ]


def test_timeouts_and_retry() -> None:
    route = one_route(
        f"{BACKEND}\n  timeouts: {{request: 10s, backendRequest: 2s}}\n"
        "  retry: {attempts: 3, codes: [500, 503], backoff: 100ms}"
    )
    action = route["route"]
    assert action["timeout"] == "10s"
    assert action["retry_policy"]["num_retries"] == 3
    assert action["retry_policy"]["per_try_timeout"] == "2s"
    assert action["retry_policy"]["retriable_status_codes"] == [500, 503]
    assert action["retry_policy"]["retry_on"] == (
        "connect-failure,refused-stream,retriable-status-codes"
    )


def test_precedence_not_writing_order() -> None:
    spec = (
        PARENT
        + """rules:
- matches: [{path: {value: /}}]
  backendRefs: [{name: root, port: 80}]
- matches: [{path: {value: /api}}, {path: {type: Exact, value: /api/health}}]
  backendRefs: [{name: api, port: 80}]
- matches: [{path: {value: /api}, method: GET}]
  backendRefs: [{name: api-get, port: 80}]
- matches: [{path: {value: /api}, headers: [{name: a, value: b}]}]
  backendRefs: [{name: api-h, port: 80}]
"""
    )
    names = [r["name"] for r in routes_json(spec)]
    assert names == ["demo.r.r.1.1", "demo.r.r.2.0", "demo.r.r.3.0", "demo.r.r.1.0", "demo.r.r.0.0"]


def test_wrong_fields_are_named() -> None:
    with pytest.raises(L7ConfigError) as err:
        parse_http_route(
            http_route(
                PARENT + "rules: [{matches: [{path: {type: Glob, value: /a}}], "
                "filters: [{type: Teleport}], backendRefs: [{name: b}]}]"
            )
        )
    text = str(err.value)
    assert "spec.rules[0].matches[0].path.type" in text
    assert "spec.rules[0].filters[0].type: unknown filter type 'Teleport'" in text
    assert "spec.rules[0].backendRefs[0].port: required field is missing" in text


def test_unsupported_filters_are_warnings() -> None:
    _, warnings = parse_http_route(
        http_route(PARENT + "rules: [{filters: [{type: ExtensionRef}], " + BACKEND + "}]")
    )
    assert "ExtensionRef filters are not supported" in warnings[0].message


# --- GAMMA -------------------------------------------------------------------------------------


def test_gamma_routes_per_service_in_precedence_order() -> None:
    a = http_route(PARENT + "rules: [{matches: [{path: {value: /}}], " + BACKEND + "}]", "a")
    b = http_route(
        "parentRefs: [{kind: Service, group: '', name: backend}]\n"
        "rules: [{matches: [{path: {type: Exact, value: /x}}], " + BACKEND + "}]",
        "b",
    )
    gateway = http_route("parentRefs: [{name: ingress}]\nrules: [{" + BACKEND + "}]", "gw")
    consumer = http_route(
        "parentRefs: [{kind: Service, group: '', name: backend, namespace: demo}]\n"
        "rules: [{" + BACKEND + "}]",
        "consumer",
        "client-ns",
    )
    state = ClusterState(http_routes={r.key: r for r in (a, b, gateway, consumer)})
    (vs,), issues = gamma_virtual_services(state)
    assert vs.hosts == (FQDN,)
    assert [r.name for r in vs.http] == ["b.0.0", "a.0.0"]
    # parentRefs port 80 binds route a to that port only
    assert [m.port for r in vs.http for m in r.matches] == [None, 80]
    assert [i.field for i in issues] == ["spec.parentRefs[0]"]
    assert "consumer route" in issues[0].message


def test_bad_routes_are_issues_not_exceptions() -> None:
    bad = http_route(PARENT + "rules: [{backendRefs: [{name: b}]}]", "bad")
    routes, issues = parsed_routes(ClusterState(http_routes={bad.key: bad}))
    assert routes == []
    assert issues[0].severity is Severity.ERROR and issues[0].kind == "HTTPRoute"


def test_httproutes_take_over_their_services_virtual_services() -> None:
    from controlplane.envoy.spec import VirtualServiceSpec

    route = http_route(PARENT + "rules: [{" + BACKEND + "}]", "a")
    mesh_vs = [
        VirtualServiceSpec("demo", "backend", ("backend",)),
        VirtualServiceSpec("demo", "other", ("other.demo.svc.cluster.local",)),
    ]
    from controlplane.envoy.httproute import with_gamma_routes

    kept, issues = with_gamma_routes(mesh_vs, ClusterState(http_routes={route.key: route}))
    assert [(vs.name, vs.hosts) for vs in kept] == [
        ("other", ("other.demo.svc.cluster.local",)),
        ("httproute", (FQDN,)),
    ]
    assert issues == []


def test_waypoint_serves_a_services_httproute() -> None:
    """GAMMA end to end: an HTTPRoute whose parentRef is a Service routes it at its waypoint."""
    from controlplane.envoy import translate_waypoint
    from controlplane.model import FrozenMap, Service, ServicePort

    backend = Service(
        "demo",
        "backend",
        selector=FrozenMap({"app": "backend"}),
        cluster_ips=("10.96.0.10",),
        ports=(ServicePort(80, 8080, "http"),),
    )
    v2 = Service(
        "demo",
        "backend-v2",
        selector=FrozenMap({"app": "backend", "version": "v2"}),
        cluster_ips=("10.96.0.11",),
        ports=(ServicePort(80, 8080, "http"),),
    )
    route = http_route(
        PARENT + "rules:\n"
        "- matches: [{headers: [{name: end-user, value: jason}]}]\n"
        "  backendRefs: [{name: backend-v2, port: 80}]\n"
        "- " + BACKEND + "\n",
        "canary",
    )
    services = {s.key: s for s in (backend, v2)}
    state = ClusterState(services=services, http_routes={route.key: route})
    resources = translate_waypoint(state, [backend])
    config = as_json(resources.routes[f"inbound-vip|80|http|{FQDN}"])
    routes = config["virtual_hosts"][0]["routes"]
    assert [r["route"]["cluster"] for r in routes] == [
        "outbound|80||backend-v2.demo.svc.cluster.local",
        f"outbound|80||{FQDN}",
    ]
    assert routes[0]["match"]["headers"][0]["name"] == "end-user"
    # without the HTTPRoute the service keeps its plain route
    plain = translate_waypoint(ClusterState(services=services), [backend])
    plain_routes = as_json(plain.routes[f"inbound-vip|80|http|{FQDN}"])["virtual_hosts"][0]
    assert [r["route"]["cluster"] for r in plain_routes["routes"]] == [f"outbound|80||{FQDN}"]
