"""L7 AuthorizationPolicy -> Envoy RBAC filters (controlplane/envoy/rbac.py), field by field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controlplane.envoy.bootstrap import as_json
from controlplane.envoy.hbone import PEER_PRINCIPAL_KEY
from controlplane.envoy.rbac import (
    PeerIdentity,
    build_rbac_filters,
    policy_problems,
    rbac_filters,
    string_matcher,
    waypoint_policies,
)
from controlplane.model import (
    AuthorizationPolicy,
    ClusterState,
    Service,
    ServicePort,
    Severity,
)
from controlplane.sources.decode import decode

WAYPOINT = ("demo", "waypoint")
BACKEND = Service("demo", "backend", ports=(ServicePort(80, 8080, "http"),))


def policy(spec: str, name: str = "p", namespace: str = "demo", **meta: Any) -> AuthorizationPolicy:
    raw = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": yaml.safe_load(spec),
    }
    decoded = decode(raw)
    errors = [p for p in decoded.problems if p.severity is Severity.ERROR]
    assert not errors, errors
    assert isinstance(decoded.obj, AuthorizationPolicy)
    return decoded.obj


def filters_json(*policies: AuthorizationPolicy, **kw: Any) -> list[dict[str, Any]]:
    return [as_json(f) for f in build_rbac_filters(policies, **kw)]


def one_rule(spec: str, **kw: Any) -> dict[str, Any]:
    """The only Envoy policy of the only filter."""
    (f,) = filters_json(policy(spec), **kw)
    (rule,) = f["typed_config"]["rules"]["policies"].values()
    return dict(rule)


def fs(match: dict[str, Any]) -> dict[str, Any]:
    return {"filter_state": {"key": PEER_PRINCIPAL_KEY, "string_match": match}}


# --- which policies a waypoint enforces ------------------------------------------------------

TARGETED = """
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
rules: [{to: [{operation: {methods: [GET]}}]}]
"""


def test_attachment_by_gateway_service_and_gateway_class() -> None:
    by_gateway = policy(TARGETED, "gw")
    by_service = policy(
        "targetRefs: [{kind: Service, group: '', name: backend}]\nrules: [{}]", "svc"
    )
    other_service = policy("targetRefs: [{kind: Service, name: frontend}]\nrules: [{}]", "other")
    other_gateway = policy("targetRefs: [{kind: Gateway, name: other-wp}]\nrules: [{}]", "ogw")
    elsewhere = policy(TARGETED, "elsewhere", namespace="prod")
    by_class = policy(
        "targetRefs: [{kind: GatewayClass, name: istio-waypoint}]\nrules: [{}]",
        "all",
        namespace="istio-system",
    )
    by_class_not_root = policy(
        "targetRefs: [{kind: GatewayClass, name: istio-waypoint}]\nrules: [{}]", "cls"
    )
    selector = policy("selector: {matchLabels: {app: backend}}\nrules: [{}]", "sel")
    namespace_wide = policy("rules: [{}]", "nswide")
    custom = policy(
        "targetRefs: [{kind: Gateway, name: waypoint}]\naction: CUSTOM\n"
        "provider: {name: ext}\nrules: [{}]",
        "custom",
    )
    everything = [
        by_gateway,
        by_service,
        other_service,
        other_gateway,
        elsewhere,
        by_class,
        by_class_not_root,
        selector,
        namespace_wide,
        custom,
    ]
    state = ClusterState(authorization_policies={p.key: p for p in everything})
    names = [p.name for p in waypoint_policies(state, WAYPOINT, BACKEND)]
    assert sorted(names) == ["all", "gw", "svc"]
    assert sorted(p.name for p in waypoint_policies(state, WAYPOINT, None)) == ["all", "gw"]


def test_no_policy_no_filter() -> None:
    assert rbac_filters(ClusterState(), WAYPOINT, BACKEND) == []


def test_rbac_filters_from_state() -> None:
    p = policy(TARGETED)
    filters = rbac_filters(ClusterState(authorization_policies={p.key: p}), WAYPOINT, BACKEND)
    assert [f.name for f in filters] == ["envoy.filters.http.rbac"]


# --- actions and their order -----------------------------------------------------------------


def test_actions_in_order_audit_deny_allow() -> None:
    allow = policy(TARGETED, "a")
    deny = policy(TARGETED + "action: DENY\n", "d")
    audit = policy(TARGETED + "action: AUDIT\n", "au")
    out = filters_json(allow, deny, audit)
    assert [f["typed_config"]["rules"].get("action", "ALLOW") for f in out] == [
        "LOG",
        "DENY",
        "ALLOW",
    ]
    assert all(f["name"] == "envoy.filters.http.rbac" for f in out)
    assert all(f["typed_config"]["@type"].endswith("filters.http.rbac.v3.RBAC") for f in out)


def test_allow_without_rules_allows_nothing() -> None:
    (f,) = filters_json(policy("targetRefs: [{kind: Gateway, name: waypoint}]"))
    # rules present with no policy: Envoy's ALLOW then denies every request.
    assert f["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {},
    }


def test_empty_rule_allows_everything() -> None:
    rule = one_rule("targetRefs: [{kind: Gateway, name: waypoint}]\nrules: [{}]")
    assert rule == {"permissions": [{"any": True}], "principals": [{"any": True}]}


def test_policy_names_per_rule() -> None:
    (f,) = filters_json(
        policy("targetRefs: [{kind: Gateway, name: waypoint}]\nrules: [{}, {}]", "two", "demo")
    )
    assert sorted(f["typed_config"]["rules"]["policies"]) == [
        "ns[demo]-policy[two]-rule[0]",
        "ns[demo]-policy[two]-rule[1]",
    ]


def test_dry_run_goes_to_shadow_rules() -> None:
    p = policy(TARGETED, annotations={"istio.io/dry-run": "true"})
    assert p.dry_run
    (f,) = filters_json(p)
    config = f["typed_config"]
    assert "rules" not in config
    assert config["shadow_rules_stat_prefix"] == "istio_dry_run_allow_"
    assert list(config["shadow_rules"]["policies"]) == ["ns[demo]-policy[p]-rule[0]"]


# --- to.operation -----------------------------------------------------------------------------

HEAD = "targetRefs: [{kind: Gateway, name: waypoint}]\n"


def _perm(operation: str, **kw: Any) -> dict[str, Any]:
    rule = one_rule(HEAD + f"rules: [{{to: [{{operation: {operation}}}]}}]", **kw)
    (perm,) = rule["permissions"]
    return dict(perm)


def _or(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"or_rules": {"rules": list(rules)}}


def _method(m: str) -> dict[str, Any]:
    return {"header": {"name": ":method", "string_match": {"exact": m}}}


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("{methods: [GET, HEAD]}", _or(_method("GET"), _method("HEAD"))),
        ("{notMethods: [POST]}", {"not_rule": _or(_method("POST"))}),
        (
            "{paths: [/exact, /api/*, '*.html', '*']}",
            _or(
                {"url_path": {"path": {"exact": "/exact"}}},
                {"url_path": {"path": {"prefix": "/api/"}}},
                {"url_path": {"path": {"suffix": ".html"}}},
                {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}},
            ),
        ),
        ("{notPaths: [/admin*]}", {"not_rule": _or({"url_path": {"path": {"prefix": "/admin"}}})}),
        (
            "{hosts: [backend.demo, '*.example.com']}",
            _or(
                {
                    "header": {
                        "name": ":authority",
                        "string_match": {"safe_regex": {"regex": "(?i)backend\\.demo(:[0-9]+)?"}},
                    }
                },
                {
                    "header": {
                        "name": ":authority",
                        "string_match": {
                            "safe_regex": {"regex": "(?i).*\\.example\\.com(:[0-9]+)?"}
                        },
                    }
                },
            ),
        ),
        ("{ports: ['80', '8080']}", _or({"destination_port": 80}, {"destination_port": 8080})),
        ("{notPorts: ['9090']}", {"not_rule": _or({"destination_port": 9090})}),
    ],
)
def test_operation_fields(operation: str, expected: dict[str, Any]) -> None:
    assert _perm(operation) == expected


def test_operation_fields_are_anded() -> None:
    perm = _perm("{methods: [GET], paths: [/a]}")
    assert perm == {
        "and_rules": {"rules": [_or(_method("GET")), _or({"url_path": {"path": {"exact": "/a"}}})]}
    }


def test_to_entries_are_ored() -> None:
    rule = one_rule(HEAD + "rules: [{to: [{operation: {methods: [GET]}}, {operation: {}}]}]")
    assert rule["permissions"] == [_or(_method("GET")), {"any": True}]


@pytest.mark.parametrize(
    ("operation", "port", "expected"),
    [
        ("{ports: ['80']}", 80, {"any": True}),
        ("{ports: ['81']}", 80, {"not_rule": {"any": True}}),
        ("{notPorts: ['80']}", 80, {"not_rule": {"any": True}}),
        ("{notPorts: ['81']}", 80, {"any": True}),
    ],
)
def test_ports_decided_for_a_known_port(operation: str, port: int, expected: Any) -> None:
    assert _perm(operation, port=port) == expected


# --- from.source ------------------------------------------------------------------------------


def _principal(source: str, **kw: Any) -> dict[str, Any]:
    rule = one_rule(HEAD + f"rules: [{{from: [{{source: {source}}}]}}]", **kw)
    (principal,) = rule["principals"]
    return dict(principal)


def _ids(*ids: dict[str, Any]) -> dict[str, Any]:
    return {"or_ids": {"ids": list(ids)}}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{principals: [cluster.local/ns/demo/sa/frontend, '*/sa/admin', 'cluster.local/*']}",
            _ids(
                fs({"exact": "spiffe://cluster.local/ns/demo/sa/frontend"}),
                fs({"safe_regex": {"regex": "spiffe://.*/sa/admin"}}),
                fs({"prefix": "spiffe://cluster.local/"}),
            ),
        ),
        ("{principals: ['*']}", _ids(fs({"safe_regex": {"regex": "spiffe://.+"}}))),
        (
            "{notPrincipals: [cluster.local/ns/demo/sa/bad]}",
            {"not_id": _ids(fs({"exact": "spiffe://cluster.local/ns/demo/sa/bad"}))},
        ),
        (
            "{namespaces: [demo, 'team-*']}",
            _ids(
                fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/demo/sa/[^/]+"}}),
                fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/team\\-[^/]*/sa/[^/]+"}}),
            ),
        ),
        (
            "{notNamespaces: [kube-system]}",
            {
                "not_id": _ids(
                    fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/kube\\-system/sa/[^/]+"}})
                )
            },
        ),
        (
            "{serviceAccounts: [frontend, other/client]}",
            _ids(
                fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/demo/sa/frontend"}}),
                fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/other/sa/client"}}),
            ),
        ),
        (
            "{ipBlocks: [10.0.0.0/8, 10.1.2.3], notIpBlocks: ['fd00::/64']}",
            {
                "and_ids": {
                    "ids": [
                        _ids(
                            {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
                            {"direct_remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}},
                        ),
                        {
                            "not_id": _ids(
                                {"direct_remote_ip": {"address_prefix": "fd00::", "prefix_len": 64}}
                            )
                        },
                    ]
                }
            },
        ),
        (
            "{remoteIpBlocks: [192.168.0.0/16]}",
            _ids({"remote_ip": {"address_prefix": "192.168.0.0", "prefix_len": 16}}),
        ),
        (
            "{trustDomains: [cluster.local]}",
            _ids(fs({"safe_regex": {"regex": "spiffe://cluster\\.local/.*"}})),
        ),
        ("{requestPrincipals: ['*']}", {"not_id": {"any": True}}),
        ("{notRequestPrincipals: ['*']}", {"any": True}),
    ],
)
def test_source_fields(source: str, expected: dict[str, Any]) -> None:
    assert _principal(source) == expected


def test_gateway_principals_from_tls_peer() -> None:
    assert _principal("{principals: [a/ns/b/sa/c]}", peer=PeerIdentity.TLS) == _ids(
        {"authenticated": {"principal_name": {"exact": "spiffe://a/ns/b/sa/c"}}}
    )


def test_from_entries_are_ored() -> None:
    rule = one_rule(
        HEAD + "rules: [{from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}]}]"
    )
    assert len(rule["principals"]) == 2


# --- when -------------------------------------------------------------------------------------


def _when(key: str, values: str = "", not_values: str = "") -> dict[str, Any]:
    cond = f"{{key: '{key}'"
    if values:
        cond += f", values: {values}"
    if not_values:
        cond += f", notValues: {not_values}"
    return one_rule(HEAD + f"rules: [{{when: [{cond}}}]}}]")


def test_when_request_header() -> None:
    rule = _when("request.headers[X-Token]", "[abc, 'pre*']", "[bad]")
    assert rule["permissions"] == [{"any": True}]
    assert rule["principals"] == [
        {
            "and_ids": {
                "ids": [
                    _ids(
                        {"header": {"name": "x-token", "string_match": {"exact": "abc"}}},
                        {"header": {"name": "x-token", "string_match": {"prefix": "pre"}}},
                    ),
                    {
                        "not_id": _ids(
                            {"header": {"name": "x-token", "string_match": {"exact": "bad"}}}
                        )
                    },
                ]
            }
        }
    ]


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        (
            "source.ip",
            "[10.0.0.1]",
            _ids({"direct_remote_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}}),
        ),
        (
            "remote.ip",
            "[10.0.0.0/24]",
            _ids({"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 24}}),
        ),
        (
            "source.namespace",
            "[demo]",
            _ids(fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/demo/sa/[^/]+"}})),
        ),
        (
            "source.principal",
            "[cluster.local/ns/demo/sa/x]",
            _ids(fs({"exact": "spiffe://cluster.local/ns/demo/sa/x"})),
        ),
        (
            "source.serviceAccount",
            "[demo/x]",
            _ids(fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/demo/sa/x"}})),
        ),
        ("request.auth.principal", "[issuer/subject]", {"not_id": {"any": True}}),
        ("request.auth.claims[groups]", "[admins]", {"not_id": {"any": True}}),
    ],
)
def test_when_principal_keys(key: str, values: str, expected: dict[str, Any]) -> None:
    rule = _when(key, values)
    assert rule["principals"] == [expected]
    assert rule["permissions"] == [{"any": True}]


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        ("destination.port", "['80']", _or({"destination_port": 80})),
        (
            "destination.ip",
            "[10.96.0.10]",
            _or({"destination_ip": {"address_prefix": "10.96.0.10", "prefix_len": 32}}),
        ),
        ("connection.sni", "['*.example']", _or({"requested_server_name": {"suffix": ".example"}})),
    ],
)
def test_when_permission_keys(key: str, values: str, expected: dict[str, Any]) -> None:
    rule = _when(key, values)
    assert rule["permissions"] == [expected]
    assert rule["principals"] == [{"any": True}]


def test_when_conditions_and_with_every_to_entry() -> None:
    rule = one_rule(
        HEAD + "rules: [{to: [{operation: {methods: [GET]}}, {operation: {methods: [PUT]}}], "
        "when: [{key: destination.port, values: ['80']}]}]"
    )
    port = _or({"destination_port": 80})
    assert rule["permissions"] == [
        {"and_rules": {"rules": [_or(_method("GET")), port]}},
        {"and_rules": {"rules": [_or(_method("PUT")), port]}},
    ]


def test_string_matcher_wildcards() -> None:
    assert as_json(string_matcher("*")) == {"safe_regex": {"regex": ".+"}}
    assert as_json(string_matcher("a*")) == {"prefix": "a"}
    assert as_json(string_matcher("*a")) == {"suffix": "a"}
    assert as_json(string_matcher("a")) == {"exact": "a"}
    assert as_json(string_matcher("*.x", "p:")) == {"safe_regex": {"regex": "p:.*\\.x"}}


# --- validate ---------------------------------------------------------------------------------


def test_custom_is_an_error_for_validate() -> None:
    p = policy(HEAD + "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]")
    (problem,) = policy_problems(p)
    assert problem.severity is Severity.ERROR
    assert "CUSTOM" in problem.message and "not supported" in problem.message


def test_jwt_attributes_are_warned_about() -> None:
    p = policy(
        HEAD + "rules: [{from: [{source: {requestPrincipals: ['*']}}], "
        "when: [{key: 'request.auth.claims[iss]', values: [x]}]}]"
    )
    (problem,) = policy_problems(p)
    assert problem.severity is Severity.WARNING
    assert problem.field == "spec.rules[0]"
    assert "requestPrincipals, request.auth.claims[iss]" in problem.message


def test_plain_policy_has_no_problem() -> None:
    assert policy_problems(policy(TARGETED)) == []


# --- TCP chains: network RBAC ---------------------------------------------------------------


def network_json(*policies: AuthorizationPolicy, **kw: Any) -> list[dict[str, Any]]:
    from controlplane.envoy.rbac import build_rbac_network_filters

    return [as_json(f) for f in build_rbac_network_filters(policies, **kw)]


def test_network_filters_name_and_stat_prefix() -> None:
    allow = policy(HEAD + "rules: [{from: [{source: {namespaces: [demo]}}]}]", "a")
    deny = policy(HEAD + "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]")
    out = network_json(allow, deny)
    assert [f["name"] for f in out] == ["envoy.filters.network.rbac"] * 2
    assert [f["typed_config"]["stat_prefix"] for f in out] == ["tcp.deny.", "tcp.allow."]
    assert out[0]["typed_config"]["@type"].endswith("filters.network.rbac.v3.RBAC")
    (rule,) = out[1]["typed_config"]["rules"]["policies"].values()
    assert rule["principals"] == [
        _ids(fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/demo/sa/[^/]+"}}))
    ]


def test_allow_rule_with_http_attributes_matches_nothing_over_tcp() -> None:
    p = policy(
        HEAD + "rules:\n- to: [{operation: {methods: [GET]}}]\n"
        "- from: [{source: {namespaces: [demo]}}]\n"
        "- when: [{key: 'request.headers[x]', values: [y]}]"
    )
    (f,) = network_json(p)
    assert list(f["typed_config"]["rules"]["policies"]) == ["ns[demo]-policy[p]-rule[1]"]


def test_deny_rule_drops_http_attributes_over_tcp() -> None:
    p = policy(
        HEAD + "action: DENY\nrules:\n"
        "- to: [{operation: {methods: [POST], ports: ['80']}}]\n"
        "  from: [{source: {requestPrincipals: ['*'], namespaces: [bad]}}]"
    )
    (f,) = network_json(p)
    (rule,) = f["typed_config"]["rules"]["policies"].values()
    assert rule["permissions"] == [_or({"destination_port": 80})]
    assert rule["principals"] == [
        _ids(fs({"safe_regex": {"regex": "spiffe://[^/]+/ns/bad/sa/[^/]+"}}))
    ]


def test_rbac_network_filters_from_state() -> None:
    from controlplane.envoy.rbac import rbac_network_filters

    p = policy(TARGETED)
    state = ClusterState(authorization_policies={p.key: p})
    (f,) = rbac_network_filters(state, WAYPOINT, BACKEND, port=80)
    assert f.name == "envoy.filters.network.rbac"
