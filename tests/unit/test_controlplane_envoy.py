"""L7 translation: VirtualService and DestinationRule YAML in, Envoy proto fields out."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2

from controlplane.envoy import L7ConfigError, parse_virtual_service, translate_waypoint
from controlplane.envoy.bootstrap import as_json
from controlplane.envoy.parse import parse_duration
from controlplane.envoy.waypoint import WaypointResources
from controlplane.model import (
    ClusterState,
    DestinationRule,
    FrozenMap,
    Service,
    ServicePort,
    Severity,
    VirtualService,
    deep_freeze,
)

FQDN = "backend.demo.svc.cluster.local"
ROUTE = f"inbound-vip|80|http|{FQDN}"
V1 = f"outbound|80|v1|{FQDN}"
V2 = f"outbound|80|v2|{FQDN}"
WHOLE = f"outbound|80||{FQDN}"
SUBSETS = "subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]"


def _service(name: str = "backend", ns: str = "demo", ports: tuple[int, ...] = (80,)) -> Service:
    return Service(
        ns,
        name,
        selector=FrozenMap({"app": name}),
        cluster_ips=("10.96.0.10",),
        ports=tuple(ServicePort(p, 8080, f"http-{p}") for p in ports),
    )


def _translate(
    vs: str | None = None,
    dr: str | None = None,
    *,
    service: Service | None = None,
    extra: tuple[Service, ...] = (),
) -> WaypointResources:
    service = service or _service()
    vss = {}
    if vs is not None:
        spec = yaml.safe_load(vs)
        vss[("demo", "backend")] = VirtualService(
            "demo",
            "backend",
            tuple(spec["hosts"]),
            tuple(spec.get("gateways", ())),
            deep_freeze(spec),
        )
    drs = {}
    if dr is not None:
        spec = yaml.safe_load(dr)
        names = tuple(s["name"] for s in spec.get("subsets", ()))
        drs[("demo", "backend")] = DestinationRule(
            "demo", "backend", spec["host"], names, deep_freeze(spec)
        )
    services = {s.key: s for s in (service, *extra)}
    state = ClusterState(services=services, virtual_services=vss, destination_rules=drs)
    return translate_waypoint(state, [service])


def _rule(http: str, dr: str | None = None) -> dict[str, Any]:
    """The first Envoy route built from one ``http`` rule of a VirtualService on backend."""
    vs = "hosts: [backend]\nhttp:\n- " + http.replace("\n", "\n  ")
    resources = _translate(vs, dr or f"host: backend\n{SUBSETS}")
    assert not [i for i in resources.issues if i.severity is Severity.ERROR], resources.issues
    route_config = as_json(resources.routes[ROUTE])
    routes: list[dict[str, Any]] = route_config["virtual_hosts"][0]["routes"]
    return routes[0]


def _cluster_json(cluster: Any) -> dict[str, Any]:
    """A cluster as JSON, with ``lb_policy`` even at its proto default (ROUND_ROBIN)."""
    out = as_json(cluster)
    out["lb_policy"] = cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)
    return out


def _cluster(dr: str, name: str = WHOLE) -> dict[str, Any]:
    return _cluster_json(_translate(None, dr).clusters[name])


DEST = "route: [{destination: {host: backend}}]"

ROUTE_CASES: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("uri exact", "match: [{uri: {exact: /a}}]\n" + DEST, ("match",), {"path": "/a"}),
    ("uri prefix", "match: [{uri: {prefix: /a}}]\n" + DEST, ("match",), {"prefix": "/a"}),
    (
        "uri regex",
        "match: [{uri: {regex: '/a/[0-9]+'}}]\n" + DEST,
        ("match", "safe_regex"),
        {"regex": "/a/[0-9]+"},
    ),
    (
        "ignoreUriCase",
        "match: [{uri: {prefix: /A}, ignoreUriCase: true}]\n" + DEST,
        ("match", "case_sensitive"),
        False,
    ),
    ("no match", DEST, ("match",), {"prefix": "/"}),
    (
        "headers exact, prefix, regex (names lower-cased)",
        "match: [{headers: {End-User: {exact: jason}, x-p: {prefix: ab}, x-r: {regex: 'a.*'}}}]\n"
        + DEST,
        ("match", "headers"),
        [
            {"name": "end-user", "string_match": {"exact": "jason"}},
            {"name": "x-p", "string_match": {"prefix": "ab"}},
            {"name": "x-r", "string_match": {"safe_regex": {"regex": "a.*"}}},
        ],
    ),
    (
        "header presence and withoutHeaders",
        "match: [{headers: {x-p: {}}, withoutHeaders: {x-debug: {}, x-env: {exact: dev}}}]\n"
        + DEST,
        ("match", "headers"),
        [
            {"name": "x-p", "present_match": True},
            {"name": "x-debug", "present_match": True, "invert_match": True},
            {"name": "x-env", "string_match": {"exact": "dev"}, "invert_match": True},
        ],
    ),
    (
        "query parameter presence",
        "match: [{queryParams: {debug: {}}}]\n" + DEST,
        ("match", "query_parameters"),
        [{"name": "debug", "present_match": True}],
    ),
    (
        "method",
        "match: [{method: {exact: POST}}]\n" + DEST,
        ("match", "headers"),
        [{"name": ":method", "string_match": {"exact": "POST"}}],
    ),
    (
        "authority",
        "match: [{authority: {prefix: backend}}]\n" + DEST,
        ("match", "headers"),
        [{"name": ":authority", "string_match": {"prefix": "backend"}}],
    ),
    (
        "queryParams",
        "match: [{queryParams: {debug: {exact: '1'}, v: {regex: '[0-9]'}}}]\n" + DEST,
        ("match", "query_parameters"),
        [
            {"name": "debug", "string_match": {"exact": "1"}},
            {"name": "v", "string_match": {"safe_regex": {"regex": "[0-9]"}}},
        ],
    ),
    ("lone destination", DEST, ("route", "cluster"), WHOLE),
    (
        "subset",
        "route: [{destination: {host: backend, subset: v2}}]",
        ("route", "cluster"),
        V2,
    ),
    (
        "destination port",
        "route: [{destination: {host: backend, port: {number: 9090}}}]",
        ("route", "cluster"),
        f"outbound|9090||{FQDN}",
    ),
    (
        "weighted subsets",
        "route: [{destination: {host: backend, subset: v1}, weight: 80},"
        " {destination: {host: backend, subset: v2}, weight: 20}]",
        ("route", "weighted_clusters", "clusters"),
        [{"name": V1, "weight": 80}, {"name": V2, "weight": 20}],
    ),
    (
        "weight 0 dropped",
        "route: [{destination: {host: backend, subset: v1}, weight: 100},"
        " {destination: {host: backend, subset: v2}, weight: 0}]",
        ("route", "cluster"),
        V1,
    ),
    (
        "fqdn destination",
        f"route: [{{destination: {{host: {FQDN}}}}}]",
        ("route", "cluster"),
        WHOLE,
    ),
    ("default timeout is none", DEST, ("route", "timeout"), "0s"),
    ("timeout", "timeout: 1.5s\n" + DEST, ("route", "timeout"), "1.500s"),
    ("default retries", DEST, ("route", "retry_policy", "num_retries"), 2),
    (
        "default retryOn",
        DEST,
        ("route", "retry_policy", "retry_on"),
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    ),
    (
        "retries attempts",
        "retries: {attempts: 3}\n" + DEST,
        ("route", "retry_policy", "num_retries"),
        3,
    ),
    (
        "retries perTryTimeout",
        "retries: {attempts: 3, perTryTimeout: 250ms}\n" + DEST,
        ("route", "retry_policy", "per_try_timeout"),
        "0.250s",
    ),
    (
        "retries retryOn with a status code",
        "retries: {attempts: 1, retryOn: 'gateway-error,connect-failure,502'}\n" + DEST,
        ("route", "retry_policy", "retry_on"),
        "gateway-error,connect-failure,retriable-status-codes",
    ),
    (
        "retries retryOn codes",
        "retries: {attempts: 1, retryOn: '502,504'}\n" + DEST,
        ("route", "retry_policy", "retriable_status_codes"),
        [502, 504],
    ),
    (
        "fault delay",
        "fault: {delay: {fixedDelay: 2s, percentage: {value: 10}}}\n" + DEST,
        ("typed_per_filter_config", "envoy.filters.http.fault", "delay"),
        {"fixed_delay": "2s", "percentage": {"numerator": 100000, "denominator": "MILLION"}},
    ),
    (
        "fault abort",
        "fault: {abort: {httpStatus: 503, percentage: {value: 0.5}}}\n" + DEST,
        ("typed_per_filter_config", "envoy.filters.http.fault", "abort"),
        {"http_status": 503, "percentage": {"numerator": 5000, "denominator": "MILLION"}},
    ),
    (
        "fault delay with the deprecated percent",
        "fault: {delay: {fixedDelay: 1s, percent: 7}}\n" + DEST,
        ("typed_per_filter_config", "envoy.filters.http.fault", "delay", "percentage"),
        {"numerator": 70000, "denominator": "MILLION"},
    ),
    (
        "fault abort grpcStatus",
        "fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n" + DEST,
        ("typed_per_filter_config", "envoy.filters.http.fault", "abort", "grpc_status"),
        14,
    ),
    (
        "fault abort without percentage is 100%",
        "fault: {abort: {httpStatus: 500}}\n" + DEST,
        ("typed_per_filter_config", "envoy.filters.http.fault", "abort", "percentage"),
        {"numerator": 1000000, "denominator": "MILLION"},
    ),
    ("rewrite uri", "rewrite: {uri: /v2}\n" + DEST, ("route", "prefix_rewrite"), "/v2"),
    (
        "rewrite authority",
        "rewrite: {authority: other.example}\n" + DEST,
        ("route", "host_rewrite_literal"),
        "other.example",
    ),
    (
        "uriRegexRewrite",
        "uriRegexRewrite: {match: '^/old/(.*)$', rewrite: '/new/\\1'}\n" + DEST,
        ("route", "regex_rewrite"),
        {"pattern": {"regex": "^/old/(.*)$"}, "substitution": "/new/\\1"},
    ),
    (
        "redirect",
        "redirect: {uri: /new, authority: b.example, port: 8443, scheme: https, redirectCode: 307}",
        ("redirect",),
        {
            "path_redirect": "/new",
            "host_redirect": "b.example",
            "port_redirect": 8443,
            "scheme_redirect": "https",
            "response_code": "TEMPORARY_REDIRECT",
        },
    ),
    ("redirect default code", "redirect: {uri: /new}", ("redirect",), {"path_redirect": "/new"}),
    (
        "directResponse string",
        "directResponse: {status: 503, body: {string: down}}",
        ("direct_response",),
        {"status": 503, "body": {"inline_bytes": "ZG93bg=="}},
    ),
    (
        "directResponse bytes",
        "directResponse: {status: 200, body: {bytes: aGk=}}",
        ("direct_response",),
        {"status": 200, "body": {"inline_bytes": "aGk="}},
    ),
    (
        "directResponse no body",
        "directResponse: {status: 204}",
        ("direct_response",),
        {"status": 204},
    ),
    (
        "request headers set and add",
        "headers: {request: {set: {x-a: '1'}, add: {x-b: '2'}}}\n" + DEST,
        ("request_headers_to_add",),
        [
            {"header": {"key": "x-a", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "x-b", "value": "2"}},
        ],
    ),
    (
        "request headers remove",
        "headers: {request: {remove: [x-c]}}\n" + DEST,
        ("request_headers_to_remove",),
        ["x-c"],
    ),
    (
        "response headers",
        "headers: {response: {set: {x-r: v}, remove: [server]}}\n" + DEST,
        ("response_headers_to_remove",),
        ["server"],
    ),
    (
        "response headers set",
        "headers: {response: {set: {x-r: v}}}\n" + DEST,
        ("response_headers_to_add",),
        [{"header": {"key": "x-r", "value": "v"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    ),
    (
        "headers of a weighted destination",
        "route: [{destination: {host: backend, subset: v1}, weight: 50},"
        " {destination: {host: backend, subset: v2}, weight: 50,"
        " headers: {request: {set: {x-canary: 'yes'}}}}]",
        ("route", "weighted_clusters", "clusters", "1", "request_headers_to_add"),
        [
            {
                "header": {"key": "x-canary", "value": "yes"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    ),
    (
        "headers of a lone destination go on the route",
        "route: [{destination: {host: backend}, headers: {response: {remove: [x-d]}}}]",
        ("response_headers_to_remove",),
        ["x-d"],
    ),
    (
        "mirror and mirrorPercentage",
        "mirror: {host: backend, subset: v2}\nmirrorPercentage: {value: 12.5}\n" + DEST,
        ("route", "request_mirror_policies"),
        [
            {
                "cluster": V2,
                "runtime_fraction": {
                    "default_value": {"numerator": 125000, "denominator": "MILLION"}
                },
            }
        ],
    ),
    (
        "mirrors",
        "mirrors: [{destination: {host: backend, subset: v1}}]\n" + DEST,
        ("route", "request_mirror_policies", "0", "cluster"),
        V1,
    ),
    ("named rule", "name: canary\n" + DEST, ("name",), "demo.backend.canary"),
    (
        "corsPolicy",
        "corsPolicy: {allowOrigins: [{exact: 'https://a.example'}, {regex: '.*\\.b\\.example'}],"
        " allowMethods: [GET, POST], allowHeaders: [x-a, x-b], exposeHeaders: [x-c],"
        " maxAge: 24h, allowCredentials: true, unmatchedPreflights: IGNORE}\n" + DEST,
        ("typed_per_filter_config", "envoy.filters.http.cors"),
        {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [
                {"exact": "https://a.example"},
                {"safe_regex": {"regex": ".*\\.b\\.example"}},
            ],
            "allow_methods": "GET,POST",
            "allow_headers": "x-a,x-b",
            "expose_headers": "x-c",
            "max_age": "86400",
            "allow_credentials": True,
            "forward_not_matching_preflights": False,
        },
    ),
]


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        value = value[int(key)] if isinstance(value, list) else value.get(key)
    return value


@pytest.mark.parametrize(
    ("http", "path", "expected"),
    [c[1:] for c in ROUTE_CASES],
    ids=[c[0] for c in ROUTE_CASES],
)
def test_http_rule_field(http: str, path: tuple[str, ...], expected: Any) -> None:
    assert _at(_rule(http), path) == expected


def test_retries_attempts_zero_disables_retries() -> None:
    assert "retry_policy" not in _rule("retries: {attempts: 0}\n" + DEST)["route"]


def test_a_redirect_rule_has_no_route_action() -> None:
    assert "route" not in _rule("redirect: {uri: /new}")


def test_rules_keep_their_order_one_route_per_match() -> None:
    vs = (
        "hosts: [backend]\nhttp:\n"
        "- match: [{uri: {exact: /a}}, {uri: {exact: /b}}]\n"
        "  route: [{destination: {host: backend, subset: v2}}]\n"
        "- route: [{destination: {host: backend, subset: v1}}]\n"
    )
    routes = as_json(_translate(vs, f"host: backend\n{SUBSETS}").routes[ROUTE])
    got = [(r["match"], r["route"]["cluster"]) for r in routes["virtual_hosts"][0]["routes"]]
    assert got == [({"path": "/a"}, V2), ({"path": "/b"}, V2), ({"prefix": "/"}, V1)]


def test_match_port_keeps_a_rule_to_its_service_port() -> None:
    vs = (
        "hosts: [backend]\nhttp:\n"
        "- match: [{port: 81}]\n  route: [{destination: {host: backend, subset: v2}}]\n"
        "- route: [{destination: {host: backend}}]\n"
    )
    resources = _translate(vs, service=_service(ports=(80, 81)))
    on_80 = as_json(resources.routes[ROUTE])["virtual_hosts"][0]["routes"]
    on_81 = as_json(resources.routes[f"inbound-vip|81|http|{FQDN}"])["virtual_hosts"][0]["routes"]
    assert [r["route"]["cluster"] for r in on_80] == [WHOLE]
    assert [r["route"]["cluster"] for r in on_81] == [
        f"outbound|81|v2|{FQDN}",
        f"outbound|81||{FQDN}",
    ]


@pytest.mark.parametrize("host", ["backend", "backend.demo", "backend.demo.svc", FQDN])
def test_virtual_service_host_names(host: str) -> None:
    vs = f"hosts: ['{host}']\nhttp: [{{route: [{{destination: {{host: backend, subset: v2}}}}]}}]"
    routes = as_json(_translate(vs, f"host: backend\n{SUBSETS}").routes[ROUTE])
    assert routes["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == V2


@pytest.mark.parametrize(("gateways", "applies"), [("[]", True), ("[mesh]", True), ("[gw]", False)])
def test_gateways_select_mesh_traffic(gateways: str, applies: bool) -> None:
    vs = (
        f"hosts: [backend]\ngateways: {gateways}\n"
        "http: [{route: [{destination: {host: backend, subset: v2}}]}]"
    )
    routes = as_json(_translate(vs, f"host: backend\n{SUBSETS}").routes[ROUTE])
    cluster = routes["virtual_hosts"][0]["routes"][0]["route"]["cluster"]
    assert cluster == (V2 if applies else WHOLE)


@pytest.mark.parametrize(
    ("match_gateways", "routes"),
    [("[mesh]", ["v2", "whole"]), ("[gw]", ["whole"]), ("[demo/gw, mesh]", ["v2", "whole"])],
)
def test_match_gateways_select_mesh_traffic(match_gateways: str, routes: list[str]) -> None:
    vs = (
        "hosts: [backend]\ngateways: [mesh, gw]\nhttp:\n"
        f"- match: [{{uri: {{prefix: /v2}}, gateways: {match_gateways}}}]\n"
        "  route: [{destination: {host: backend, subset: v2}}]\n"
        "- route: [{destination: {host: backend}}]\n"
    )
    config = as_json(_translate(vs, f"host: backend\n{SUBSETS}").routes[ROUTE])
    clusters = [r["route"]["cluster"] for r in config["virtual_hosts"][0]["routes"]]
    assert clusters == [{"v2": V2, "whole": WHOLE}[r] for r in routes]


def test_scheme_match() -> None:
    vs = (
        "hosts: [backend]\nhttp: [{match: [{scheme: {exact: https}}], "
        "route: [{destination: {host: backend}}]}]"
    )
    route = as_json(_translate(vs).routes[ROUTE])["virtual_hosts"][0]["routes"][0]
    assert route["match"]["headers"] == [{"name": ":scheme", "string_match": {"exact": "https"}}]


def test_virtual_host_answers_every_name_of_the_service() -> None:
    vhost = as_json(_translate().routes[ROUTE])["virtual_hosts"][0]
    assert vhost["name"] == f"{FQDN}:80"
    assert set(vhost["domains"]) == {
        d
        for name in (FQDN, "backend", "backend.demo", "backend.demo.svc", "10.96.0.10")
        for d in (name, f"{name}:80")
    }


def test_without_a_virtual_service_everything_goes_to_the_service() -> None:
    routes = as_json(_translate().routes[ROUTE])["virtual_hosts"][0]["routes"]
    assert [(r["match"], r["route"]["cluster"]) for r in routes] == [({"prefix": "/"}, WHOLE)]


def test_destination_in_another_namespace_gets_its_cluster_and_single_port() -> None:
    ratings = _service("ratings", "other", ports=(9080,))
    vs = "hosts: [backend]\nhttp: [{route: [{destination: {host: ratings.other}}]}]"
    resources = _translate(vs, extra=(ratings,))
    name = "outbound|9080||ratings.other.svc.cluster.local"
    assert _at(as_json(resources.routes[ROUTE]), ("virtual_hosts", "0", "routes", "0")) is not None
    assert name in resources.clusters
    assert resources.endpoints[name].service == ("other", "ratings")


def test_unknown_destination_and_subset_are_warned_about() -> None:
    vs = (
        "hosts: [backend]\nhttp: [{route: [{destination: {host: nowhere}, weight: 50},"
        " {destination: {host: backend, subset: v9}, weight: 50}]}]"
    )
    issues = _translate(vs, service=_service(ports=(80, 81))).issues
    messages = " / ".join(i.message for i in issues)
    assert all(i.severity is Severity.WARNING for i in issues)
    assert len(issues) == 2, issues
    assert {i.field for i in issues} == {"spec.http"}
    assert "nowhere.demo.svc.cluster.local is not a known service" in messages
    assert "subset 'v9'" in messages


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("httpHeaderName: x-user", {"header": {"header_name": "x-user"}}),
        (
            "httpCookie: {name: session, path: /, ttl: 60s}",
            {"cookie": {"name": "session", "path": "/", "ttl": "60s"}},
        ),
        ("useSourceIp: true", {"connection_properties": {"source_ip": True}}),
        ("httpQueryParameterName: user", {"query_parameter": {"name": "user"}}),
    ],
)
def test_consistent_hash_key_goes_on_the_route(key: str, expected: dict[str, Any]) -> None:
    dr = f"host: backend\ntrafficPolicy: {{loadBalancer: {{consistentHash: {{{key}}}}}}}"
    assert _rule(DEST, dr)["route"]["hash_policy"] == [expected]


CLUSTER_CASES: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("default lb", "", ("lb_policy",), "LEAST_REQUEST"),
    ("default connect timeout", "", ("connect_timeout",), "10s"),
    (
        "eds",
        "",
        ("eds_cluster_config",),
        {"service_name": WHOLE, "eds_config": {"ads": {}, "resource_api_version": "V3"}},
    ),
    ("simple ROUND_ROBIN", "loadBalancer: {simple: ROUND_ROBIN}", ("lb_policy",), "ROUND_ROBIN"),
    ("simple RANDOM", "loadBalancer: {simple: RANDOM}", ("lb_policy",), "RANDOM"),
    (
        "simple LEAST_REQUEST",
        "loadBalancer: {simple: LEAST_REQUEST}",
        ("lb_policy",),
        "LEAST_REQUEST",
    ),
    (
        "consistentHash",
        "loadBalancer: {consistentHash: {httpHeaderName: x, minimumRingSize: 2048}}",
        ("ring_hash_lb_config", "minimum_ring_size"),
        "2048",
    ),
    (
        "consistentHash lb",
        "loadBalancer: {consistentHash: {useSourceIp: true}}",
        ("lb_policy",),
        "RING_HASH",
    ),
    (
        "default thresholds unlimited",
        "",
        ("circuit_breakers", "thresholds", "0"),
        {
            "max_connections": 2**32 - 1,
            "max_pending_requests": 2**32 - 1,
            "max_requests": 2**32 - 1,
            "max_retries": 2**32 - 1,
            "track_remaining": True,
        },
    ),
    (
        "connectionPool thresholds",
        "connectionPool: {tcp: {maxConnections: 10},"
        " http: {http1MaxPendingRequests: 1, http2MaxRequests: 2, maxRetries: 3}}",
        ("circuit_breakers", "thresholds", "0"),
        {
            "max_connections": 10,
            "max_pending_requests": 1,
            "max_requests": 2,
            "max_retries": 3,
            "track_remaining": True,
        },
    ),
    (
        "connectionPool connectTimeout",
        "connectionPool: {tcp: {connectTimeout: 250ms}}",
        ("connect_timeout",),
        "0.250s",
    ),
    (
        "connectionPool maxRequestsPerConnection and idleTimeout",
        "connectionPool: {http: {maxRequestsPerConnection: 1, idleTimeout: 30s}}",
        (
            "typed_extension_protocol_options",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options",
        ),
        {"idle_timeout": "30s", "max_requests_per_connection": 1},
    ),
    (
        "outlierDetection",
        "outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 2,"
        " interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}",
        ("outlier_detection",),
        {
            "consecutive_5xx": 5,
            "enforcing_consecutive_5xx": 100,
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "enforcing_success_rate": 0,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 50,
        },
    ),
    (
        "outlierDetection gateway errors only",
        "outlierDetection: {consecutiveGatewayErrors: 1}",
        ("outlier_detection", "enforcing_consecutive_5xx"),
        0,
    ),
]


@pytest.mark.parametrize(
    ("policy", "path", "expected"),
    [c[1:] for c in CLUSTER_CASES],
    ids=[c[0] for c in CLUSTER_CASES],
)
def test_traffic_policy_field(policy: str, path: tuple[str, ...], expected: Any) -> None:
    dr = f"host: backend\ntrafficPolicy: {{{policy}}}" if policy else "host: backend"
    assert _at(_cluster(dr), path) == expected


def test_subset_policy_overrides_the_top_level_part_by_part() -> None:
    dr = (
        "host: backend\n"
        "trafficPolicy: {loadBalancer: {simple: RANDOM},"
        " connectionPool: {tcp: {maxConnections: 7}}}\n"
        "subsets:\n- {name: v1, labels: {version: v1},"
        " trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n"
        "- {name: v2, labels: {version: v2}}\n"
    )
    resources = _translate(None, dr)
    v1, v2 = _cluster_json(resources.clusters[V1]), _cluster_json(resources.clusters[V2])
    assert (v1["lb_policy"], v2["lb_policy"]) == ("ROUND_ROBIN", "RANDOM")
    assert v1["circuit_breakers"]["thresholds"][0]["max_connections"] == 7
    assert resources.endpoints[V1].subset_labels == (("version", "v1"),)
    assert resources.endpoints[V1].subset == "v1"
    assert resources.endpoints[WHOLE].subset_labels == ()


@pytest.mark.parametrize(
    ("http", "field", "message"),
    [
        ("retries: {attempts: three}\n" + DEST, "spec.http[0].retries.attempts", "integer"),
        ("timeout: soon\n" + DEST, "spec.http[0].timeout", "duration"),
        ("match: [{uri: {exact: /a, prefix: /}}]\n" + DEST, "spec.http[0].match[0].uri", "one"),
        ("match: [{uri: {}}]\n" + DEST, "spec.http[0].match[0].uri", "one"),
        ("match: [{uri: {regex: '('}}]\n" + DEST, "spec.http[0].match[0].uri.regex", "regular"),
        (
            "fault: {abort: {httpStatus: 500, percentage: {value: 150}}}\n" + DEST,
            "spec.http[0].fault.abort.percentage.value",
            "0-100",
        ),
        (
            "fault: {delay: {percentage: {value: 5}}}\n" + DEST,
            "spec.http[0].fault.delay.fixedDelay",
            "missing",
        ),
        ("redirect: {uri: /x, redirectCode: 399}", "spec.http[0].redirect.redirectCode", "one of"),
        (
            "fault: {abort: {grpcStatus: BROKEN}}\n" + DEST,
            "spec.http[0].fault.abort.grpcStatus",
            "unknown gRPC status",
        ),
        (
            "fault: {abort: {grpcStatus: ABORTED, httpStatus: 500}}\n" + DEST,
            "spec.http[0].fault.abort",
            "not both",
        ),
        ("redirect: {uri: /x}\n" + DEST, "spec.http[0].redirect", "one of"),
        ("directResponse: {status: 200}\n" + DEST, "spec.http[0].directResponse", "one of"),
        ("directResponse: {body: {string: x}}", "spec.http[0].directResponse.status", "missing"),
        (
            "directResponse: {status: 200, body: {bytes: '!'}}",
            "spec.http[0].directResponse.body.bytes",
            "base64",
        ),
        ("timeout: 1s", "spec.http[0].route", "needs a route"),
        (
            "corsPolicy: {allowOrigins: [{exact: a, prefix: b}]}\n" + DEST,
            "spec.http[0].corsPolicy.allowOrigins[0]",
            "exactly one",
        ),
        (
            "corsPolicy: {unmatchedPreflights: DROP}\n" + DEST,
            "spec.http[0].corsPolicy.unmatchedPreflights",
            "FORWARD or IGNORE",
        ),
        ("route: [{destination: {subset: v1}}]", "spec.http[0].route[0].destination.host", ""),
        ("bogus: 1\n" + DEST, "spec.http[0].bogus", "unknown field"),
        (
            "match: [{uri: {regex: '/(?!admin)'}}]\n" + DEST,
            "spec.http[0].match[0].uri.regex",
            "RE2",
        ),
        (
            "uriRegexRewrite: {match: '(a)\\1', rewrite: x}\n" + DEST,
            "spec.http[0].uriRegexRewrite.match",
            "RE2",
        ),
    ],
)
def test_wrong_fields_are_named(http: str, field: str, message: str) -> None:
    spec = yaml.safe_load("hosts: [backend]\nhttp:\n- " + http.replace("\n", "\n  "))
    vs = VirtualService("demo", "backend", ("backend",), (), deep_freeze(spec))
    with pytest.raises(L7ConfigError) as caught:
        parse_virtual_service(vs)
    assert "VirtualService demo/backend" in str(caught.value)
    assert any(p.field == field and message in p.message for p in caught.value.problems), (
        caught.value.problems
    )


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ("loadBalancer: {simple: FASTEST}", "spec.trafficPolicy.loadBalancer.simple"),
        (
            "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "spec.trafficPolicy.loadBalancer",
        ),
        ("loadBalancer: {consistentHash: {}}", "spec.trafficPolicy.loadBalancer.consistentHash"),
        (
            "connectionPool: {tcp: {maxConnections: 0}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        ),
        (
            "outlierDetection: {maxEjectionPercent: 101}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        ("outlierDetection: {interval: 5}", "spec.trafficPolicy.outlierDetection.interval"),
    ],
)
def test_wrong_destination_rule_is_skipped_with_an_issue(policy: str, field: str) -> None:
    resources = _translate(None, f"host: backend\ntrafficPolicy: {{{policy}}}")
    errors = [i for i in resources.issues if i.severity is Severity.ERROR]
    assert [(i.kind, i.namespace, i.name, i.field) for i in errors] == [
        ("DestinationRule", "demo", "backend", field)
    ]
    assert _cluster_json(resources.clusters[WHOLE])["lb_policy"] == "LEAST_REQUEST"


def test_untranslated_fields_are_warnings_and_the_rest_translates() -> None:
    vs = (
        "hosts: [backend, '*.example.com']\ntls: [{route: [{destination: {host: backend}}]}]\n"
        "http: [{match: [{sourceLabels: {app: x}}], route: [{destination: {host: backend}}]}]"
    )
    resources = _translate(vs)
    assert {(i.severity, i.field) for i in resources.issues} == {
        (Severity.WARNING, "spec.tls"),
        (Severity.WARNING, "spec.hosts[1]"),
        (Severity.WARNING, "spec.http[0].match[0].sourceLabels"),
    }
    assert ROUTE in resources.routes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("250ms", 0.25), ("1.5s", 1.5), ("1h30m", 5400.0), ("10us", 1e-5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "-1s", "1s "])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_port_level_settings_apply_to_their_port_then_the_subset_over_them() -> None:
    dr = (
        "host: backend\n"
        "trafficPolicy:\n"
        "  loadBalancer: {simple: RANDOM}\n"
        "  connectionPool: {tcp: {maxConnections: 7}}\n"
        "  portLevelSettings:\n"
        "  - port: {number: 81}\n"
        "    loadBalancer: {simple: ROUND_ROBIN}\n"
        "    outlierDetection: {consecutive5xxErrors: 4}\n"
        "subsets:\n"
        "- name: v1\n"
        "  labels: {version: v1}\n"
        "  trafficPolicy:\n"
        "    portLevelSettings:\n"
        "    - {port: {number: 81}, connectionPool: {tcp: {maxConnections: 1}}}\n"
    )
    resources = _translate(None, dr, service=_service(ports=(80, 81)))

    def at(port: int, subset: str) -> dict[str, Any]:
        return _cluster_json(resources.clusters[f"outbound|{port}|{subset}|{FQDN}"])

    assert at(80, "")["lb_policy"] == "RANDOM"
    assert "outlier_detection" not in at(80, "")
    assert at(81, "")["lb_policy"] == "ROUND_ROBIN"
    assert at(81, "")["outlier_detection"]["consecutive_5xx"] == 4
    assert at(81, "")["circuit_breakers"]["thresholds"][0]["max_connections"] == 7
    assert at(81, "v1")["circuit_breakers"]["thresholds"][0]["max_connections"] == 1
    assert at(81, "v1")["lb_policy"] == "ROUND_ROBIN"
    assert at(80, "v1")["circuit_breakers"]["thresholds"][0]["max_connections"] == 7


def test_port_level_settings_need_a_port_once() -> None:
    dr = (
        "host: backend\ntrafficPolicy:\n  portLevelSettings:\n"
        "  - {port: {number: 80}, loadBalancer: {simple: RANDOM}}\n"
        "  - {port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}\n"
        "  - {loadBalancer: {simple: RANDOM}}\n"
    )
    errors = {(i.field, i.message) for i in _translate(None, dr).issues}
    assert errors == {
        ("spec.trafficPolicy.portLevelSettings[1].port", "port 80 has settings already"),
        ("spec.trafficPolicy.portLevelSettings[2].port", "required field is missing"),
    }


@pytest.mark.parametrize(
    ("tls", "warned"),
    [
        ("{mode: ISTIO_MUTUAL}", []),
        ("{mode: DISABLE}", []),
        ("{mode: ISTIO_MUTUAL, sni: x}", ["spec.trafficPolicy.tls.sni"]),
        ("{mode: MUTUAL, clientCertificate: /c.pem}", ["spec.trafficPolicy.tls.mode"]),
        ("{mode: SIMPLE, credentialName: ca}", ["spec.trafficPolicy.tls.credentialName"]),
    ],
)
def test_tls_modes_in_ambient(tls: str, warned: list[str]) -> None:
    """HBONE is the mesh's mTLS: ISTIO_MUTUAL and DISABLE add nothing inside the tunnel."""
    resources = _translate(None, f"host: backend\ntrafficPolicy: {{tls: {tls}}}")
    fields = [i.field for i in resources.issues if i.severity is Severity.WARNING]
    assert fields == warned
    if "SIMPLE" not in tls:
        assert not resources.clusters[WHOLE].HasField("transport_socket")


def test_tls_simple_originates_tls_to_the_application() -> None:
    dr = (
        "host: backend\ntrafficPolicy:\n  tls: {mode: SIMPLE, sni: backend.example, "
        "caCertificates: /etc/ssl/ca.pem, subjectAltNames: [backend.example]}\n"
        "  portLevelSettings:\n"
        "  - {port: {number: 8443}, tls: {mode: SIMPLE, insecureSkipVerify: true}}"
    )
    resources = _translate(None, dr, service=_service(ports=(80, 8443)))
    socket = as_json(resources.clusters[WHOLE])["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["sni"] == "backend.example"
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/ca.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "backend.example"}},
        {"san_type": "URI", "matcher": {"exact": "backend.example"}},
    ]
    skip = as_json(resources.clusters[f"outbound|8443||{FQDN}"])["transport_socket"]
    assert "validation_context" not in skip["typed_config"].get("common_tls_context", {})


def test_tls_simple_without_ca_uses_the_system_roots() -> None:
    resources = _translate(None, "host: backend\ntrafficPolicy: {tls: {mode: SIMPLE}}")
    context = as_json(resources.clusters[WHOLE])["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["validation_context"] == {"system_root_certs": {}}


def test_tls_unknown_mode_is_an_error() -> None:
    resources = _translate(None, "host: backend\ntrafficPolicy: {tls: {mode: STRICT}}")
    (issue,) = [i for i in resources.issues if i.severity is Severity.ERROR]
    assert issue.field == "spec.trafficPolicy.tls.mode"


def _tcp(vs: str, port: int = 80, ports: tuple[int, ...] = (80,)) -> dict[str, Any]:
    resources = _translate(vs, f"host: backend\n{SUBSETS}", service=_service(ports=ports))
    assert not [i for i in resources.issues if i.severity is Severity.ERROR], resources.issues
    return as_json(resources.tcp_proxies[f"inbound-vip|{port}|tcp|{FQDN}"])


def test_tcp_rule_weights() -> None:
    vs = (
        "hosts: [backend]\ntcp: [{route: [{destination: {host: backend, subset: v1}, weight: 90},"
        " {destination: {host: backend, subset: v2}, weight: 10}]}]"
    )
    assert _tcp(vs) == {
        "stat_prefix": f"inbound-vip|80|tcp|{FQDN}",
        "weighted_clusters": {"clusters": [{"name": V1, "weight": 90}, {"name": V2, "weight": 10}]},
    }


def test_tcp_rules_by_port_first_match_wins() -> None:
    vs = (
        "hosts: [backend]\ntcp:\n"
        "- {match: [{port: 81}], route: [{destination: {host: backend, subset: v2}}]}\n"
        "- {route: [{destination: {host: backend, subset: v1}}]}\n"
        "- {match: [{port: 80}], route: [{destination: {host: backend, subset: v2}}]}\n"
    )
    assert _tcp(vs, 81, (80, 81))["cluster"] == f"outbound|81|v2|{FQDN}"
    assert _tcp(vs, 80, (80, 81))["cluster"] == V1


def test_tcp_without_rules_goes_to_the_service_and_http_keeps_its_default() -> None:
    vs = "hosts: [backend]\ntcp: [{match: [{port: 9}], route: [{destination: {host: backend}}]}]"
    assert _tcp(vs)["cluster"] == WHOLE
    routes = as_json(_translate(vs).routes[ROUTE])["virtual_hosts"][0]["routes"]
    assert [r["route"]["cluster"] for r in routes] == [WHOLE]


def test_tcp_rule_needs_a_destination() -> None:
    resources = _translate("hosts: [backend]\ntcp: [{match: [{port: 80}]}]")
    assert [(i.field, i.message) for i in resources.issues] == [
        ("spec.tcp[0].route", "a tcp rule needs at least one destination")
    ]
