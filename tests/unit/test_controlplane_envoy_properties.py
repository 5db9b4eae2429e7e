"""Properties of the L7 translation over generated input.

Any spec, however wrong, either translates or is reported as issues; nothing else
escapes. Valid weighted routes keep their weights and order.
"""

from __future__ import annotations

from typing import Any

import yaml
from envoy.config.route.v3 import route_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.envoy import translate_waypoint
from controlplane.envoy.bootstrap import as_json
from controlplane.model import (
    ClusterState,
    DestinationRule,
    FrozenMap,
    Service,
    ServicePort,
    VirtualService,
    deep_freeze,
)
from tests.unit.test_controlplane_envoy_validate import DESTINATION_RULE, VIRTUAL_SERVICE

FIELDS = [
    "hosts", "http", "match", "route", "destination", "host", "subset", "port", "number",
    "weight", "uri", "exact", "prefix", "regex", "headers", "request", "response", "set",
    "add", "remove", "method", "queryParams", "withoutHeaders", "ignoreUriCase", "retries",
    "attempts", "perTryTimeout", "retryOn", "timeout", "fault", "delay", "abort",
    "fixedDelay", "percentage", "percent", "value", "httpStatus", "rewrite", "authority",
    "uriRegexRewrite", "redirect", "redirectCode", "scheme", "mirror", "mirrors",
    "mirrorPercentage", "name", "trafficPolicy", "loadBalancer", "simple",
    "consistentHash", "httpHeaderName", "httpCookie", "ttl", "path", "useSourceIp",
    "minimumRingSize", "connectionPool", "tcp", "maxConnections", "connectTimeout",
    "http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection",
    "maxRetries", "idleTimeout", "outlierDetection", "consecutive5xxErrors",
    "interval", "baseEjectionTime", "maxEjectionPercent", "subsets", "labels",
    "portLevelSettings", "tls", "mode",
]  # fmt: skip

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70_000),
    st.floats(-1, 200, allow_nan=False),
    st.sampled_from(["", "backend", "v1", "1s", "250ms", "x", "(", "/a", "ROUND_ROBIN", "5xx,503"]),
)
JSON: Any = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4),
    ),
    max_leaves=25,
)

SERVICE = Service(
    "demo",
    "backend",
    selector=FrozenMap({"app": "backend"}),
    cluster_ips=("10.96.0.10",),
    ports=(ServicePort(80, 8080, "http"),),
)


VALID_VS = yaml.safe_load(VIRTUAL_SERVICE)
VALID_DR = yaml.safe_load(DESTINATION_RULE)


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with about one node in twelve (anywhere) replaced by anything."""
    if draw(st.integers(0, 11)) == 0:
        return draw(JSON)
    if isinstance(value, dict):
        return {key: _mutate(draw, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mutate(draw, item) for item in value]
    return value


@st.composite
def _mutated(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """A valid spec with some of its values, at any depth, replaced by anything."""
    mutated = _mutate(draw, valid)
    return mutated if isinstance(mutated, dict) else {}


def _state(vs: dict[str, Any], dr: dict[str, Any]) -> ClusterState:
    return ClusterState(
        services={SERVICE.key: SERVICE},
        virtual_services={
            ("demo", "a"): VirtualService("demo", "a", ("backend",), (), deep_freeze(vs))
        },
        destination_rules={
            ("demo", "a"): DestinationRule("demo", "a", "backend", (), deep_freeze(dr))
        },
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vs=_mutated(VALID_VS), dr=_mutated(VALID_DR))
def test_any_spec_translates_or_is_reported(vs: dict[str, Any], dr: dict[str, Any]) -> None:
    resources = translate_waypoint(_state(vs, dr), [SERVICE])
    route = resources.routes["inbound-vip|80|http|backend.demo.svc.cluster.local"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    assert "outbound|80||backend.demo.svc.cluster.local" in resources.clusters
    for issue in resources.issues:
        assert issue.field.startswith("spec"), issue


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.integers(0, 1000), min_size=2, max_size=6).filter(lambda w: sum(w) > 0))
def test_weights_and_order_are_kept(weights: list[int]) -> None:
    subsets = [f"v{i}" for i in range(len(weights))]
    spec = {
        "hosts": ["backend"],
        "http": [
            {
                "route": [
                    {"destination": {"host": "backend", "subset": s}, "weight": w}
                    for s, w in zip(subsets, weights, strict=True)
                ]
            }
        ],
    }
    dr = {"host": "backend", "subsets": [{"name": s, "labels": {"v": s}} for s in subsets]}
    state = ClusterState(
        services={SERVICE.key: SERVICE},
        virtual_services={
            ("demo", "a"): VirtualService("demo", "a", ("backend",), (), deep_freeze(spec))
        },
        destination_rules={
            ("demo", "a"): DestinationRule("demo", "a", "backend", tuple(subsets), deep_freeze(dr))
        },
    )
    resources = translate_waypoint(state, [SERVICE])
    action = as_json(resources.routes["inbound-vip|80|http|backend.demo.svc.cluster.local"])[
        "virtual_hosts"
    ][0]["routes"][0]["route"]
    kept = [(s, w) for s, w in zip(subsets, weights, strict=True) if w > 0]
    if len(kept) == 1:
        assert action["cluster"] == f"outbound|80|{kept[0][0]}|backend.demo.svc.cluster.local"
    else:
        got = [
            (c["name"].split("|")[2], c["weight"]) for c in action["weighted_clusters"]["clusters"]
        ]
        assert got == kept
    assert not resources.issues
