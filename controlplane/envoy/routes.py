"""A VirtualService's HTTP rules as Envoy routes, the way istiod builds them.

Each ``match`` of a rule becomes one Envoy route (a rule without matches becomes a
catch-all ``prefix: /``), in the order the rules are written; the first route that
matches wins. Destinations become clusters named by :mod:`.names`, through a
:class:`Destinations` the caller supplies (it knows the services and subsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2 as http_fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from controlplane.envoy.clusters import duration, packed
from controlplane.envoy.spec import (
    ConsistentHash,
    Cors,
    Destination,
    Fault,
    HeaderOps,
    HttpMatch,
    HttpRoute,
    MatchKind,
    Redirect,
    Retries,
    RouteDestination,
    StringMatch,
)

CORS_FILTER = "envoy.filters.http.cors"
"""The HTTP filter (and ``typed_per_filter_config`` key) of CORS policies."""
FAULT_FILTER = "envoy.filters.http.fault"
"""The HTTP filter (and ``typed_per_filter_config`` key) of injected faults."""
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
"""Istio's retry conditions when ``retryOn`` is not given."""
MESH_GATEWAY = "mesh"
"""Where a waypoint's routes apply (VirtualService ``gateways``)."""
DEFAULT_RETRY_ATTEMPTS = 2
"""Istio's retries when a route sets none."""

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def _uint32(value: int) -> Any:
    return wrappers_pb2.UInt32Value(value=value)


def weighted(route: Sequence[RouteDestination]) -> list[RouteDestination]:
    """The destinations taking traffic (weight 0 ones dropped, as istiod does)."""
    return [d for d in route if d.weight > 0] or list(route[:1])


class Destinations(Protocol):
    """What the route builder asks about destinations."""

    def cluster(self, destination: Destination) -> str:
        """The cluster name serving ``destination`` (for the port being built)."""
        ...

    def consistent_hash(self, cluster: str) -> ConsistentHash | None:
        """The consistent-hash key of the cluster's load balancer, if any."""
        ...


def fraction(percent: float) -> Any:
    """A percentage 0-100 as Envoy's ``FractionalPercent`` per million (as istiod)."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def string_matcher(match: StringMatch, *, ignore_case: bool = False) -> Any:
    """Istio's ``StringMatch`` as Envoy's ``StringMatcher`` (not for ``PRESENT``)."""
    if match.kind is MatchKind.EXACT:
        return string_pb2.StringMatcher(exact=match.value, ignore_case=ignore_case)
    if match.kind is MatchKind.PREFIX:
        return string_pb2.StringMatcher(prefix=match.value, ignore_case=ignore_case)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.value))


def _apply_uri(out: Any, uri: StringMatch | None) -> None:
    if uri is None:
        out.prefix = "/"
    elif uri.kind is MatchKind.EXACT:
        out.path = uri.value
    elif uri.kind is MatchKind.PREFIX:
        out.prefix = uri.value
    elif uri.kind is MatchKind.PATH_PREFIX:
        # Envoy refuses a trailing slash here; "/" itself takes every path.
        trimmed = uri.value.rstrip("/")
        if trimmed:
            out.path_separated_prefix = trimmed
        else:
            out.prefix = "/"
    else:
        out.safe_regex.regex = uri.value


def route_match(match: HttpMatch | None) -> Any:
    """The ``RouteMatch`` of one Istio match (None: every request)."""
    out = rc.RouteMatch()
    _apply_uri(out, match.uri if match is not None else None)
    if match is None:
        return out
    if match.ignore_uri_case:
        out.case_sensitive.value = False
    pseudo = [
        (":method", match.method),
        (":authority", match.authority),
        (":scheme", match.scheme),
    ]
    wanted = [(n, v, False) for n, v in [*pseudo, *match.headers] if v is not None]
    for name, value, invert in [*wanted, *((n, v, True) for n, v in match.without_headers)]:
        header = rc.HeaderMatcher(name=name, invert_match=invert)
        if value.kind is MatchKind.PRESENT:
            header.present_match = True
        else:
            header.string_match.CopyFrom(string_matcher(value))
        out.headers.append(header)
    for name, value in match.query_params:
        param = rc.QueryParameterMatcher(name=name)
        if value.kind is MatchKind.PRESENT:
            param.present_match = True
        else:
            param.string_match.CopyFrom(string_matcher(value))
        out.query_parameters.append(param)
    return out


def _header_options(ops: HeaderOps) -> list[Any]:
    def option(key: str, value: str, action: Any) -> Any:
        return base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value), append_action=action
        )

    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    return [option(k, v, overwrite) for k, v in ops.set] + [
        option(k, v, append) for k, v in ops.add
    ]


def _apply_headers(target: Any, request: HeaderOps, response: HeaderOps) -> None:
    """Header manipulation on a ``Route`` or a ``ClusterWeight`` (same field names)."""
    target.request_headers_to_add.extend(_header_options(request))
    target.request_headers_to_remove.extend(request.remove)
    target.response_headers_to_add.extend(_header_options(response))
    target.response_headers_to_remove.extend(response.remove)


def retry_policy(retries: Retries | None) -> Any | None:
    """The ``RetryPolicy`` of a rule (None: no retries); Istio retries twice by default."""
    if retries is None:
        retries = Retries(attempts=DEFAULT_RETRY_ATTEMPTS)
    if retries.attempts == 0:
        return None
    policy = rc.RetryPolicy(num_retries=_uint32(retries.attempts))
    conditions = [c for c in retries.retry_on if not c.isdigit()]
    codes = [int(c) for c in retries.retry_on if c.isdigit()]
    if not retries.retry_on:
        conditions, codes = DEFAULT_RETRY_ON.split(","), [503]
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    policy.retry_on = ",".join(conditions)
    policy.retriable_status_codes.extend(codes)
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    # Like istiod: a retry goes to another endpoint when there is one.
    policy.host_selection_retry_max_attempts = 5
    policy.retry_host_predicate.append(
        rc.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
        )
    )
    return policy


def fault_config(fault: Fault) -> Any:
    """The per-route ``HTTPFault`` of the fault filter."""
    out = http_fault_pb2.HTTPFault()
    if fault.delay is not None:
        out.delay.fixed_delay.CopyFrom(duration(fault.delay.fixed_delay))
        out.delay.percentage.CopyFrom(fraction(fault.delay.percentage))
    if fault.abort is not None:
        if fault.abort.grpc_status is not None:
            out.abort.grpc_status = fault.abort.grpc_status
        else:
            out.abort.http_status = fault.abort.http_status
        out.abort.percentage.CopyFrom(fraction(fault.abort.percentage))
    return out


def cors_policy(cors: Cors) -> Any:
    """The per-route ``CorsPolicy`` of the CORS filter."""
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[string_matcher(o) for o in cors.allow_origins],
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
    )
    if cors.max_age is not None:
        out.max_age = str(int(cors.max_age))
    if cors.allow_credentials is not None:
        out.allow_credentials.value = cors.allow_credentials
    out.forward_not_matching_preflights.value = cors.forward_unmatched_preflights
    return out


def redirect_action(redirect: Redirect) -> Any:
    """The ``RedirectAction`` of a redirect rule."""
    out = rc.RedirectAction(response_code=_REDIRECT_CODES[redirect.redirect_code])
    if redirect.uri is not None:
        out.path_redirect = redirect.uri
    if redirect.prefix is not None:
        out.prefix_rewrite = redirect.prefix
    if redirect.authority is not None:
        out.host_redirect = redirect.authority
    if redirect.port is not None:
        out.port_redirect = redirect.port
    if redirect.scheme is not None:
        out.scheme_redirect = redirect.scheme
    return out


def _hash_policy(key: ConsistentHash) -> Any:
    policy = rc.RouteAction.HashPolicy()
    if key.http_header_name:
        policy.header.header_name = key.http_header_name
    elif key.http_cookie:
        policy.cookie.name = key.http_cookie
        policy.cookie.path = key.http_cookie_path
        if key.http_cookie_ttl is not None:
            policy.cookie.ttl.CopyFrom(duration(key.http_cookie_ttl))
    elif key.use_source_ip:
        policy.connection_properties.source_ip = True
    else:
        policy.query_parameter.name = key.http_query_parameter_name
    return policy


def _route_action(rule: HttpRoute, destinations: Destinations) -> Any:
    action = rc.RouteAction()
    taking = weighted(rule.route)
    names = [destinations.cluster(d.destination) for d in taking]
    if len(taking) == 1:
        action.cluster = names[0]
    else:
        for name, entry in zip(names, taking, strict=True):
            cluster = rc.WeightedCluster.ClusterWeight(name=name, weight=_uint32(entry.weight))
            _apply_headers(cluster, entry.headers.request, entry.headers.response)
            action.weighted_clusters.clusters.append(cluster)
    # Istio's default is no timeout at all, not Envoy's 15 s.
    action.timeout.CopyFrom(duration(rule.timeout or 0.0))
    if (policy := retry_policy(rule.retries)) is not None:
        action.retry_policy.CopyFrom(policy)
    keys = {destinations.consistent_hash(name) for name in names}
    if len(keys) == 1 and (key := keys.pop()) is not None:
        action.hash_policy.append(_hash_policy(key))
    if rule.rewrite is not None:
        if rule.rewrite.uri is not None:
            action.prefix_rewrite = rule.rewrite.uri
        if rule.rewrite.authority is not None:
            action.host_rewrite_literal = rule.rewrite.authority
        if rule.rewrite.uri_regex is not None:
            pattern, substitution = rule.rewrite.uri_regex
            action.regex_rewrite.pattern.regex = pattern
            action.regex_rewrite.substitution = substitution
    for mirror in rule.mirrors:
        action.request_mirror_policies.append(
            rc.RouteAction.RequestMirrorPolicy(
                cluster=destinations.cluster(mirror.destination),
                runtime_fraction=base_pb2.RuntimeFractionalPercent(
                    default_value=fraction(mirror.percentage)
                ),
            )
        )
    return action


def _applies(match: HttpMatch, port: int, gateway: str) -> bool:
    return (match.port is None or match.port == port) and (
        not match.gateways or gateway in match.gateways
    )


def build_routes(
    rules: Sequence[HttpRoute],
    port: int,
    destinations: Destinations,
    prefix: str,
    *,
    gateway: str = MESH_GATEWAY,
) -> list[Any]:
    """The Envoy routes of ``rules`` for traffic to ``port`` at ``gateway`` (``ns/name``,
    or ``mesh`` for a waypoint), in order.

    Matches bound to another port or other gateways are left out; a rule whose every
    match is bound elsewhere contributes nothing. Routes are named
    ``<prefix>.<rule or index>``.
    """
    out: list[Any] = []
    for index, rule in enumerate(rules):
        matches: list[HttpMatch | None] = [m for m in rule.matches if _applies(m, port, gateway)]
        if rule.matches and not matches:
            continue
        for match in matches or [None]:
            route = rc.Route(name=f"{prefix}.{rule.name or index}", match=route_match(match))
            if rule.redirect is not None:
                route.redirect.CopyFrom(redirect_action(rule.redirect))
            elif rule.direct_response is not None:
                route.direct_response.status = rule.direct_response.status
                if rule.direct_response.body:
                    route.direct_response.body.inline_bytes = rule.direct_response.body
            else:
                route.route.CopyFrom(_route_action(rule, destinations))
            taking = weighted(rule.route)
            lone: Sequence[RouteDestination] = taking if len(taking) == 1 else ()
            request = [rule.headers.request, *(d.headers.request for d in lone)]
            response = [rule.headers.response, *(d.headers.response for d in lone)]
            for req, resp in zip(request, response, strict=True):
                _apply_headers(route, req, resp)
            if rule.cors is not None:
                route.typed_per_filter_config[CORS_FILTER].CopyFrom(packed(cors_policy(rule.cors)))
            if rule.fault is not None:
                route.typed_per_filter_config[FAULT_FILTER].CopyFrom(
                    packed(fault_config(rule.fault))
                )
            out.append(route)
    return out


def route_configuration(
    name: str, vhost_name: str, domains: Sequence[str], routes: Sequence[Any]
) -> Any:
    """One ``RouteConfiguration`` with one virtual host."""
    config = route_pb2.RouteConfiguration(
        name=name, validate_clusters=wrappers_pb2.BoolValue(value=False)
    )
    config.virtual_hosts.append(
        rc.VirtualHost(name=vhost_name, domains=list(domains), routes=list(routes))
    )
    return config
