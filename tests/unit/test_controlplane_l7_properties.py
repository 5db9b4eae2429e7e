"""Properties of the HTTPRoute, ingress and RBAC translations over generated input.

An HTTPRoute spec, however wrong, either translates or becomes issues; an
AuthorizationPolicy the sources accept always becomes RBAC filters; nothing else
escapes (a crash here would stop every push of the control plane).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.envoy.httproute import gamma_virtual_services, parsed_routes
from controlplane.envoy.ingress import translate_ingress
from controlplane.envoy.rbac import build_rbac_filters, build_rbac_network_filters
from controlplane.envoy.routes import build_routes
from controlplane.model import (
    AuthorizationPolicy,
    ClusterState,
    HTTPRoute,
    ParentRef,
    deep_freeze,
)
from controlplane.sources.decode import decode
from tests.unit import test_controlplane_l7_ingress as ingress
from tests.unit.test_controlplane_l7_httproute import Names
from tests.unit.test_controlplane_l7_validate import HTTP_ROUTE, POLICIES

FIELDS = [
    "parentRefs", "rules", "matches", "path", "type", "value", "headers", "name",
    "queryParams", "method", "filters", "requestHeaderModifier", "responseHeaderModifier",
    "set", "add", "remove", "urlRewrite", "hostname", "replacePrefixMatch",
    "replaceFullPath", "requestMirror", "backendRef", "percent", "fraction", "numerator",
    "denominator", "requestRedirect", "scheme", "port", "statusCode", "backendRefs",
    "weight", "namespace", "kind", "group", "timeouts", "request", "backendRequest",
    "retry", "attempts", "codes", "backoff",
]  # fmt: skip
POLICY_FIELDS = [
    "targetRefs", "kind", "name", "action", "rules", "from", "to", "when", "source",
    "operation", "principals", "notPrincipals", "namespaces", "ipBlocks", "remoteIpBlocks",
    "hosts", "methods", "paths", "notPaths", "ports", "notPorts", "key", "values",
    "notValues", "serviceAccounts", "trustDomains", "requestPrincipals",
]  # fmt: skip
WORDS = [
    "", "/", "/a", "Exact", "PathPrefix", "RegularExpression", "(", "backend", "GET",
    "ReplaceFullPath", "ReplacePrefixMatch", "RequestRedirect", "URLRewrite",
    "RequestMirror", "RequestHeaderModifier", "1s", "x", "*", "a*", "*a", "10.0.0.0/8",
    "request.headers[x]", "source.ip", "destination.port", "80", "DENY", "AUDIT",
]  # fmt: skip


def _json(fields: list[str]) -> Any:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 70_000),
        st.floats(-1, 200, allow_nan=False),
        st.sampled_from(WORDS),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.sampled_from(fields), inner, max_size=4),
        ),
        max_leaves=25,
    )


ROUTE_JSON = _json(FIELDS)
_INGRESS_STATE = ingress.state(ingress.CLUSTER, ingress.API)
POLICY_JSON = _json(POLICY_FIELDS)


def _mutate(draw: st.DrawFn, value: Any, anything: Any) -> Any:
    """``value`` with about one node in ten (anywhere) replaced by anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(anything)
    if isinstance(value, dict):
        return {key: _mutate(draw, item, anything) for key, item in value.items()}
    if isinstance(value, list):
        return [_mutate(draw, item, anything) for item in value]
    return value


@st.composite
def _route_specs(draw: st.DrawFn) -> dict[str, Any]:
    mutated = _mutate(draw, yaml.safe_load(HTTP_ROUTE), ROUTE_JSON)
    return mutated if isinstance(mutated, dict) else {}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_route_specs())
def test_any_httproute_translates_or_is_reported(spec: dict[str, Any]) -> None:
    parents = (
        ParentRef("backend", kind="Service", group=""),
        ParentRef("web", namespace="web"),
    )
    route = HTTPRoute("tutorial", "r", parents, ("shop.example.com",), spec=deep_freeze(spec))
    state = ClusterState(http_routes={route.key: route})
    routes, issues = parsed_routes(state)
    for issue in issues:
        assert issue.field.startswith("spec"), issue
    for parsed in routes:
        build_routes(parsed.rules, 80, Names(), "p")
    gamma_virtual_services(state)
    translate_ingress(replace(_INGRESS_STATE, http_routes={route.key: route}), ingress.WEB)


@st.composite
def _policies(draw: st.DrawFn) -> AuthorizationPolicy | None:
    spec = draw(st.sampled_from(yaml.safe_load(POLICIES)))
    spec.pop("metadata", None)
    mutated = _mutate(draw, spec, POLICY_JSON)
    decoded = decode(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": mutated if isinstance(mutated, dict) else {},
        }
    )
    return decoded.obj if isinstance(decoded.obj, AuthorizationPolicy) else None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=_policies(), port=st.one_of(st.none(), st.integers(1, 65535)))
def test_any_accepted_policy_becomes_filters(
    policy: AuthorizationPolicy | None, port: int | None
) -> None:
    if policy is None:
        return
    http = build_rbac_filters([policy], port=port)
    tcp = build_rbac_network_filters([policy], port=port)
    assert len(http) == len(tcp) <= 1
