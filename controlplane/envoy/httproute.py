"""Gateway API ``HTTPRoute`` as the L7 routing model of :mod:`.spec`, the way istiod reads it.

istiod turns an HTTPRoute into an internal VirtualService; we do the same at the
typed level: each rule and match becomes an :class:`~controlplane.envoy.spec.HttpRoute`
(one match each), so :mod:`.routes` builds the Envoy routes. Gateway API orders
matches by precedence, not by writing order (exact path, then regular expressions,
then the longest prefix; a method; more headers; more query parameters; then the
route's (namespace, name) and the rule's position), and Envoy takes the first
route that matches, so the rules come out sorted.

Attachment:

- ``parentRefs`` to a ``Service`` (GAMMA): the route serves that service's traffic
  at its waypoint (:func:`gamma_virtual_services`), on every port or on the
  reference's ``port``; only routes in the service's own namespace ("producer"
  routes) apply there;
- ``parentRefs`` to a ``Gateway``: ingress (:mod:`.ingress`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane.envoy.errors import L7ConfigError
from controlplane.envoy.names import resolve_host
from controlplane.envoy.parse import check_regex
from controlplane.envoy.parse import duration_field as duration
from controlplane.envoy.parse import integer_field as integer
from controlplane.envoy.spec import (
    Destination,
    DirectResponse,
    HeaderOps,
    Headers,
    HttpMatch,
    HttpRoute,
    MatchKind,
    Mirror,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    VirtualServiceSpec,
)
from controlplane.model import (
    ClusterState,
    HTTPRoute,
    ParentRef,
    Severity,
    SourceIssue,
    deep_thaw,
)
from controlplane.sources.fields import Fields, Problem
from controlplane.workloadapi.mesh import MeshConfig

KIND = "HTTPRoute"
GAMMA_VS_NAME = "httproute"
"""Name of the VirtualService standing for a service's HTTPRoutes (route names
``<ns>.httproute.<route>.<rule>.<match>``)."""
NO_BACKEND_STATUS = 500
"""What Gateway API answers when a rule has no usable backend."""
_PATH_KINDS = {
    "Exact": MatchKind.EXACT,
    "PathPrefix": MatchKind.PATH_PREFIX,
    "RegularExpression": MatchKind.REGEX,
}
_VALUE_KINDS = {"Exact": MatchKind.EXACT, "RegularExpression": MatchKind.REGEX}
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_UNSUPPORTED_FILTERS = ("ExtensionRef", "CORS", "ExternalAuth")


@dataclass(frozen=True)
class ParsedRoute:
    """One HTTPRoute, typed: its rules, one :class:`HttpRoute` per match."""

    namespace: str
    name: str
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[HttpRoute, ...]
    """In writing order; named ``<route>.<rule>.<match>``."""


def _is_service(ref: ParentRef | Any) -> bool:
    return ref.kind == "Service" and ref.group in ("", "core")


# --- parsing ----------------------------------------------------------------------------------


def _value_match(f: Fields, *, path: bool) -> StringMatch | None:
    """A ``{type, value}`` match: of a path (default ``PathPrefix /``) or a header or
    query parameter (default type ``Exact``)."""
    kinds = _PATH_KINDS if path else _VALUE_KINDS
    kind_name = f.string("type", default="PathPrefix" if path else "Exact")
    kind = kinds.get(kind_name)
    if kind is None:
        f.error("type", f"must be one of {', '.join(kinds)}, not {kind_name!r}")
        return None
    value = f.string("value", required=not path, default="/")
    if kind is MatchKind.REGEX and not check_regex(f, "value", value):
        return None
    if path and kind is not MatchKind.REGEX and not value.startswith("/"):
        f.error("value", f"a path must start with '/', not {value!r}")
        return None
    return StringMatch(kind, value)


def _named_matches(f: Fields, key: str) -> tuple[tuple[str, StringMatch], ...]:
    out = []
    for entry in f.mappings(key):
        entry.reject_unknown({"type", "name", "value"})
        name = entry.string("name", required=True)
        match = _value_match(entry, path=False)
        if name and match is not None:
            out.append((name, match))
    return tuple(out)


def _match(f: Fields) -> HttpMatch:
    f.reject_unknown({"path", "headers", "queryParams", "method"})
    path_f = f.mapping("path")
    uri = (
        _value_match(path_f, path=True)
        if path_f is not None
        else StringMatch(MatchKind.PATH_PREFIX, "/")
    )
    method = f.string("method")
    return HttpMatch(
        uri=uri,
        method=StringMatch(MatchKind.EXACT, method) if method else None,
        headers=tuple((k.lower(), m) for k, m in _named_matches(f, "headers")),
        query_params=_named_matches(f, "queryParams"),
    )


def _header_modifier(f: Fields | None) -> HeaderOps:
    if f is None:
        return HeaderOps()
    f.reject_unknown({"set", "add", "remove"})

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for entry in f.mappings(key):
            entry.reject_unknown({"name", "value"})
            out.append((entry.string("name", required=True).lower(), entry.string("value")))
        return tuple(out)

    return HeaderOps(set=pairs("set"), add=pairs("add"), remove=f.str_list("remove"))


def _backend_destination(f: Fields, namespace: str, mesh: MeshConfig) -> Destination | None:
    kind = f.string("kind", default="Service")
    group = f.string("group", default="")
    if kind != "Service" or group not in ("", "core"):
        f.warn("kind", f"{group or 'core'}/{kind} backends are not supported; only Services")
        return None
    name = f.string("name", required=True)
    backend_ns = f.string("namespace", default=namespace)
    port = f.port("port", required=True)
    if backend_ns != namespace:
        # Gateway API: a reference into another namespace is allowed only by a
        # ReferenceGrant there; we do not read those, so we refuse (never widen access).
        f.warn(
            "namespace",
            f"backend {backend_ns}/{name} is in another namespace: refused, since it needs a "
            "ReferenceGrant there, which this control plane does not read yet",
        )
        return None
    if not name:
        return None
    return Destination(mesh.service_hostname(backend_ns, name), port=port)


@dataclass
class _Filters:
    request: HeaderOps = field(default_factory=HeaderOps)
    response: HeaderOps = field(default_factory=HeaderOps)
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()


def _path_modifier(f: Fields) -> tuple[str | None, str | None]:
    """(full path, prefix replacement) of a ``path`` modifier."""
    f.reject_unknown({"type", "replaceFullPath", "replacePrefixMatch"})
    kind = f.string("type", required=True)
    if kind == "ReplaceFullPath":
        return f.string("replaceFullPath", required=True), None
    if kind == "ReplacePrefixMatch":
        return None, f.string("replacePrefixMatch", required=True)
    f.error("type", f"must be ReplaceFullPath or ReplacePrefixMatch, not {kind!r}")
    return None, None


def _filters(f: Fields, key: str, namespace: str, mesh: MeshConfig) -> _Filters:
    out = _Filters()
    for entry in f.mappings(key):
        kind = entry.string("type", required=True)
        if kind == "RequestHeaderModifier":
            out.request = _header_modifier(entry.mapping("requestHeaderModifier", required=True))
        elif kind == "ResponseHeaderModifier":
            out.response = _header_modifier(entry.mapping("responseHeaderModifier", required=True))
        elif kind == "RequestRedirect":
            out.redirect = _redirect(entry.mapping("requestRedirect", required=True))
        elif kind == "URLRewrite":
            out.rewrite = _rewrite(entry.mapping("urlRewrite", required=True))
        elif kind == "RequestMirror":
            mirror = _mirror(entry.mapping("requestMirror", required=True), namespace, mesh)
            out.mirrors += (mirror,) if mirror is not None else ()
        elif kind in _UNSUPPORTED_FILTERS:
            entry.warn("type", f"{kind} filters are not supported; the filter is ignored")
        elif kind:
            entry.error("type", f"unknown filter type {kind!r}")
    return out


def _redirect(f: Fields | None) -> Redirect | None:
    if f is None:
        return None
    f.reject_unknown({"scheme", "hostname", "path", "port", "statusCode"})
    code = integer(f, "statusCode") or 302
    if code not in _REDIRECT_CODES:
        f.error("statusCode", f"must be one of {', '.join(map(str, _REDIRECT_CODES))}")
        code = 302
    full = prefix = None
    if (path := f.mapping("path")) is not None:
        full, prefix = _path_modifier(path)
    return Redirect(
        uri=full,
        prefix=prefix,
        authority=f.string("hostname") or None,
        port=f.port("port"),
        scheme=f.string("scheme") or None,
        redirect_code=code,
    )


def _rewrite(f: Fields | None) -> Rewrite | None:
    if f is None:
        return None
    f.reject_unknown({"hostname", "path"})
    full = prefix = None
    if (path := f.mapping("path")) is not None:
        full, prefix = _path_modifier(path)
    return Rewrite(
        uri=prefix,
        authority=f.string("hostname") or None,
        # istiod's way of replacing the whole path.
        uri_regex=("^/.*$", full) if full is not None else None,
    )


def _mirror(f: Fields | None, namespace: str, mesh: MeshConfig) -> Mirror | None:
    if f is None:
        return None
    f.reject_unknown({"backendRef", "percent", "fraction"})
    backend = f.mapping("backendRef", required=True)
    destination = _backend_destination(backend, namespace, mesh) if backend else None
    percent = 100.0
    if f.has("percent"):
        percent = float(integer(f, "percent", maximum=100) or 0)
    elif (fraction := f.mapping("fraction")) is not None:
        numerator = integer(fraction, "numerator") or 0
        denominator = integer(fraction, "denominator", minimum=1) or 100
        if numerator > denominator:
            fraction.error("numerator", "must not exceed the denominator")
        percent = 100.0 * min(numerator, denominator) / denominator
    return Mirror(destination, percent) if destination is not None else None


def _rule(
    f: Fields, index: int, route_name: str, namespace: str, mesh: MeshConfig
) -> list[HttpRoute]:
    f.reject_unknown(
        {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
    )
    if f.has("sessionPersistence"):
        f.warn("sessionPersistence", "not supported; use a DestinationRule consistentHash")
    filters = _filters(f, "filters", namespace, mesh)
    backends: list[RouteDestination] = []
    for entry in f.mappings("backendRefs"):
        entry.reject_unknown({"group", "kind", "name", "namespace", "port", "weight", "filters"})
        destination = _backend_destination(entry, namespace, mesh)
        weight = integer(entry, "weight")
        own = _filters(entry, "filters", namespace, mesh)
        if destination is not None:
            headers = Headers(request=own.request, response=own.response)
            backends.append(RouteDestination(destination, 1 if weight is None else weight, headers))
    timeout = per_try = None
    if (timeouts := f.mapping("timeouts")) is not None:
        timeouts.reject_unknown({"request", "backendRequest"})
        timeout = duration(timeouts, "request")
        per_try = duration(timeouts, "backendRequest")
    retries = _retries(f.mapping("retry"), per_try)
    direct = None
    route: tuple[RouteDestination, ...] = tuple(backends)
    if filters.redirect is not None:
        route = ()
    elif not any(b.weight > 0 for b in backends):
        # Gateway API: a rule with no backend able to take traffic answers 500.
        route, direct = (), DirectResponse(NO_BACKEND_STATUS)
    base = HttpRoute(
        route=route,
        redirect=filters.redirect,
        direct_response=direct,
        rewrite=filters.rewrite,
        timeout=timeout or 0.0,
        retries=retries,
        mirrors=filters.mirrors,
        headers=Headers(request=filters.request, response=filters.response),
    )
    matches = [_match(m) for m in f.mappings("matches")] or [
        HttpMatch(uri=StringMatch(MatchKind.PATH_PREFIX, "/"))
    ]
    return [
        replace(base, name=f"{route_name}.{index}.{j}", matches=(m,)) for j, m in enumerate(matches)
    ]


def _retries(f: Fields | None, per_try: float | None) -> Retries | None:
    if f is None:
        return None if per_try is None else Retries(attempts=2, per_try_timeout=per_try)
    f.reject_unknown({"codes", "attempts", "backoff"})
    if f.has("backoff"):
        f.warn("backoff", "not translated; Envoy's default back-off (25 ms base) applies")
    codes = []
    written = f.data.get("codes") or []
    if not isinstance(written, list):
        f.error("codes", f"must be a list of HTTP statuses, not {written!r}")
        written = []
    for i, code in enumerate(written):
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            codes.append(str(code))
        else:
            f.error(f"codes[{i}]", f"must be an HTTP status 400-599, not {code!r}")
    attempts = integer(f, "attempts")
    return Retries(
        attempts=2 if attempts is None else attempts,
        per_try_timeout=per_try,
        retry_on=("connect-failure", "refused-stream", *codes) if codes else (),
    )


def parse_http_route(
    route: HTTPRoute, mesh: MeshConfig | None = None
) -> tuple[ParsedRoute, tuple[Problem, ...]]:
    """The typed rules of ``route`` and the warnings about what is ignored.

    Raises :class:`L7ConfigError` listing every wrong field.
    """
    mesh = mesh or MeshConfig()
    problems: list[Problem] = []
    thawed = deep_thaw(route.spec)
    spec = Fields(thawed if isinstance(thawed, dict) else {}, "spec", problems)
    rules: list[HttpRoute] = []
    for index, rule in enumerate(spec.mappings("rules")):
        rules += _rule(rule, index, route.name, route.namespace, mesh)
    if not spec.has("rules"):
        # Gateway API's default: one rule with no backend.
        rules = [
            HttpRoute(
                name=f"{route.name}.0.0",
                matches=(HttpMatch(uri=StringMatch(MatchKind.PATH_PREFIX, "/")),),
                direct_response=DirectResponse(NO_BACKEND_STATUS),
            )
        ]
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if errors:
        raise L7ConfigError(KIND, route.namespace, route.name, errors)
    parsed = ParsedRoute(
        route.namespace, route.name, route.parent_refs, route.hostnames, tuple(rules)
    )
    return parsed, tuple(p for p in problems if p.severity is Severity.WARNING)


# --- precedence -------------------------------------------------------------------------------


def _precedence(rule: HttpRoute) -> tuple[int, int, int, int, int]:
    match = rule.matches[0] if rule.matches else HttpMatch()
    uri = match.uri or StringMatch(MatchKind.PATH_PREFIX, "/")
    rank = {MatchKind.EXACT: 0, MatchKind.REGEX: 1}.get(uri.kind, 2)
    return (
        rank,
        -len(uri.value),
        0 if match.method is not None else 1,
        -len(match.headers),
        -len(match.query_params),
    )


def ordered_rules(routes: Iterable[ParsedRoute]) -> list[HttpRoute]:
    """Every rule of ``routes`` in Gateway API precedence (ties: route key, then order)."""
    keyed = [
        (_precedence(rule), (r.namespace, r.name), i, rule)
        for r in routes
        for i, rule in enumerate(r.rules)
    ]
    return [rule for *_, rule in sorted(keyed, key=lambda k: k[:3])]


# --- GAMMA: routes for a service at its waypoint ------------------------------------------------


def _issues(route: HTTPRoute, problems: Iterable[Problem]) -> list[SourceIssue]:
    return [
        SourceIssue("", 0, KIND, route.namespace, route.name, p.field, p.message, p.severity)
        for p in problems
    ]


def parsed_routes(
    state: ClusterState, mesh: MeshConfig | None = None
) -> tuple[list[ParsedRoute], list[SourceIssue]]:
    """Every HTTPRoute parsed, in key order; the bad ones reported and left out."""
    out: list[ParsedRoute] = []
    issues: list[SourceIssue] = []
    for _, route in sorted(state.http_routes.items()):
        try:
            parsed, warnings = parse_http_route(route, mesh)
        except L7ConfigError as err:
            issues += _issues(route, err.problems)
            continue
        issues += _issues(route, warnings)
        out.append(parsed)
    return out, issues


def gamma_virtual_services(
    state: ClusterState, mesh: MeshConfig | None = None
) -> tuple[list[VirtualServiceSpec], list[SourceIssue]]:
    """One VirtualService per Service that HTTPRoutes attach to (GAMMA), as istiod
    makes them for waypoints: hosts the service's FQDN, the rules of all its producer
    routes in precedence order, bound to the ``parentRefs`` port when one is given.

    A waypoint serving the service uses these in place of its VirtualServices
    (Istio: mixing both for one service is undefined).
    """
    mesh = mesh or MeshConfig()
    routes, issues = parsed_routes(state, mesh)
    by_service: dict[tuple[str, str], list[ParsedRoute]] = {}
    for route in routes:
        for i, parent in enumerate(route.parents):
            if not _is_service(parent):
                continue
            namespace = parent.namespace or route.namespace
            if namespace != route.namespace:
                issues.append(
                    SourceIssue(
                        "",
                        0,
                        KIND,
                        route.namespace,
                        route.name,
                        f"spec.parentRefs[{i}]",
                        "a consumer route (for a Service of another namespace) is not "
                        "applied at waypoints, as in Istio",
                        Severity.WARNING,
                    )
                )
                continue
            bound = route
            if parent.port is not None:
                bound = replace(route, rules=tuple(_on_port(r, parent.port) for r in route.rules))
            by_service.setdefault((namespace, parent.name), []).append(bound)
    out = []
    for (namespace, name), attached in sorted(by_service.items()):
        fqdn = mesh.service_hostname(namespace, name)
        rules = tuple(ordered_rules(attached))
        out.append(VirtualServiceSpec(namespace, GAMMA_VS_NAME, (fqdn,), (), rules))
    return out, issues


def _on_port(rule: HttpRoute, port: int) -> HttpRoute:
    return replace(rule, matches=tuple(replace(m, port=port) for m in rule.matches))


def routed_services(routes: Sequence[VirtualServiceSpec]) -> set[str]:
    """The FQDNs that :func:`gamma_virtual_services` routes."""
    return {host for vs in routes for host in vs.hosts}


def with_gamma_routes(
    virtual_services: Sequence[VirtualServiceSpec],
    state: ClusterState,
    mesh: MeshConfig | None = None,
) -> tuple[list[VirtualServiceSpec], list[SourceIssue]]:
    """The mesh's VirtualServices with the services that HTTPRoutes attach to taken
    over by their :func:`gamma_virtual_services` (a VirtualService naming such a
    service is left out, as Istio leaves mixing both undefined).

    For a waypoint's translation: in place of its list of mesh VirtualServices.
    """
    mesh = mesh or MeshConfig()
    gamma, issues = gamma_virtual_services(state, mesh)
    routed = routed_services(gamma)
    kept = [
        vs
        for vs in virtual_services
        if not any(resolve_host(h, vs.namespace, mesh) in routed for h in vs.hosts)
    ]
    return [*kept, *gamma], issues
