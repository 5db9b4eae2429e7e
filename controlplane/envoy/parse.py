"""The stored ``spec`` of a VirtualService or DestinationRule, read into :mod:`.spec` values.

Every problem is collected with its dotted field path (``spec.http[0].retries.attempts``)
and raised together as one :class:`~controlplane.envoy.errors.L7ConfigError` naming the
object, so a user fixes an object in one round.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from controlplane.envoy.errors import L7ConfigError
from controlplane.envoy.spec import (
    WRITTEN_MATCH_KINDS,
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    Cors,
    Destination,
    DestinationRuleSpec,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderOps,
    Headers,
    HttpMatch,
    HttpRoute,
    LoadBalancer,
    MatchKind,
    Mirror,
    OutlierDetection,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    SimpleLb,
    StringMatch,
    Subset,
    TcpRoute,
    TlsMode,
    TrafficPolicy,
    VirtualServiceSpec,
)
from controlplane.model import DestinationRule, Severity, VirtualService, deep_thaw
from controlplane.sources.fields import Fields, Problem, type_name

MESH = "mesh"
"""The ``gateways`` entry meaning in-mesh traffic (waypoints)."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_REDIRECT_CODES = (301, 302, 303, 307, 308)
GRPC_STATUS_CODES = {
    name: code
    for code, name in enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
}
"""gRPC status names (as ``fault.abort.grpcStatus`` takes them) to their codes."""
_NOT_RE2 = re.compile(r"\(\?<?[=!]|(?:^|[^\\])(?:\\\\)*\\[1-9]")
"""Lookaround and backreferences: Python accepts them, Envoy's RE2 does not."""


def parse_duration(text: str) -> float | None:
    """Seconds of a duration as Istio's API writes them (``1s``, ``250ms``, ``1h30m``)."""
    if not text or _DURATION_PART.sub("", text):
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _duration(f: Fields, key: str) -> float | None:
    value = f.data.get(key)
    if value is None:
        return None
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        f.error(key, f"must be a duration such as '1s' or '250ms', not {value!r}")
    return seconds


def _integer(f: Fields, key: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    value = f.data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        f.error(key, f"must be an integer, not {type_name(value)} ({value!r})")
        return None
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        f.error(key, f"must be at least {minimum}{upper}, not {value}")
        return None
    return value


def _percent(f: Fields, key: str) -> float | None:
    """Istio's ``Percent``: ``{value: 0-100}``."""
    sub = f.mapping(key)
    if sub is None:
        return None
    value = sub.data.get("value", 0)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 100:
        sub.error("value", f"must be a number 0-100, not {value!r}")
        return None
    return float(value)


def _string_match(f: Fields, key: str, *, presence: bool = False) -> StringMatch | None:
    """A ``StringMatch``; with ``presence``, ``{}`` means "present" (headers, parameters)."""
    sub = f.mapping(key)
    return None if sub is None else _string_match_in(sub, presence=presence)


def _string_match_in(sub: Fields, *, presence: bool = False) -> StringMatch | None:
    """The ``StringMatch`` that ``sub`` is."""
    if presence and not sub.data:
        return StringMatch(MatchKind.PRESENT, "")
    found = [kind for kind in WRITTEN_MATCH_KINDS if kind.value in sub.data]
    if len(found) != 1:
        sub.error(None, "must have exactly one of exact, prefix, regex")
        return None
    value = sub.string(found[0].value)
    if found[0] is MatchKind.REGEX and not _check_regex(sub, "regex", value):
        return None
    return StringMatch(found[0], value)


def _check_regex(f: Fields, key: str, pattern: str) -> bool:
    """Whether ``pattern`` is a regular expression Envoy (RE2) accepts, else an error."""
    try:
        re.compile(pattern)
    except re.error as err:
        f.error(key, f"is not a valid regular expression: {err}")
        return False
    if _NOT_RE2.search(pattern):
        f.error(key, "uses lookaround or a backreference, which RE2 (Envoy's engine) lacks")
        return False
    return True


def _string_matches(f: Fields, key: str) -> tuple[tuple[str, StringMatch], ...]:
    sub = f.mapping(key)
    if sub is None:
        return ()
    out: list[tuple[str, StringMatch]] = []
    for name in sub.data:
        match = _string_match(sub, str(name), presence=True)
        if match is not None:
            out.append((str(name), match))
    return tuple(out)


def _gateway_names(f: Fields, namespace: str) -> tuple[str, ...]:
    """``gateways`` as ``ns/name`` (short names in the VirtualService's namespace) or
    ``mesh``."""
    out = []
    for name in f.str_list("gateways"):
        if name == MESH or "/" in name:
            out.append(name)
        else:
            out.append(f"{namespace}/{name}")
    return tuple(out)


def _match(f: Fields, namespace: str) -> HttpMatch:
    f.reject_unknown(
        {
            "name",
            "uri",
            "method",
            "authority",
            "headers",
            "queryParams",
            "port",
            "ignoreUriCase",
            "scheme",
            "sourceLabels",
            "gateways",
            "sourceNamespace",
            "withoutHeaders",
            "statPrefix",
        }
    )
    for unsupported in ("sourceLabels", "sourceNamespace"):
        if f.has(unsupported):
            f.warn(
                unsupported,
                "not translated: it names the client proxy's workload, which waypoints and "
                "gateways are not; the condition is ignored",
            )
    return HttpMatch(
        name=f.string("name"),
        gateways=_gateway_names(f, namespace),
        scheme=_string_match(f, "scheme"),
        uri=_string_match(f, "uri"),
        method=_string_match(f, "method"),
        authority=_string_match(f, "authority"),
        headers=tuple((k.lower(), m) for k, m in _string_matches(f, "headers")),
        without_headers=tuple((k.lower(), m) for k, m in _string_matches(f, "withoutHeaders")),
        query_params=_string_matches(f, "queryParams"),
        port=f.port("port"),
        ignore_uri_case=f.boolean("ignoreUriCase"),
    )


def _pairs(f: Fields, key: str) -> tuple[tuple[str, str], ...]:
    found = f.str_map(key)
    return tuple(found.items()) if found else ()


def _header_ops(f: Fields | None) -> HeaderOps:
    if f is None:
        return HeaderOps()
    f.reject_unknown({"set", "add", "remove"})
    return HeaderOps(set=_pairs(f, "set"), add=_pairs(f, "add"), remove=f.str_list("remove"))


def _headers(f: Fields) -> Headers:
    sub = f.mapping("headers")
    if sub is None:
        return Headers()
    sub.reject_unknown({"request", "response"})
    return Headers(
        request=_header_ops(sub.mapping("request")), response=_header_ops(sub.mapping("response"))
    )


def _destination(f: Fields, key: str) -> Destination | None:
    sub = f.mapping(key, required=True)
    if sub is None:
        return None
    sub.reject_unknown({"host", "subset", "port"})
    port_f = sub.mapping("port")
    return Destination(
        host=sub.string("host", required=True),
        subset=sub.string("subset"),
        port=port_f.port("number", required=True) if port_f is not None else None,
    )


def _route_destinations(f: Fields) -> tuple[RouteDestination, ...]:
    entries = f.mappings("route")
    out: list[RouteDestination] = []
    for entry in entries:
        entry.reject_unknown({"destination", "weight", "headers"})
        destination = _destination(entry, "destination")
        weight = _integer(entry, "weight")
        if destination is not None:
            default = 100 if len(entries) == 1 else 0
            out.append(
                RouteDestination(
                    destination, default if weight is None else weight, _headers(entry)
                )
            )
    if len(out) > 1 and sum(d.weight for d in out) == 0:
        f.error("route", "the weights of several destinations must not all be 0")
    return tuple(out)


def _retries(f: Fields) -> Retries | None:
    sub = f.mapping("retries")
    if sub is None:
        return None
    sub.reject_unknown({"attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities"})
    retry_on = tuple(part.strip() for part in sub.string("retryOn").split(",") if part.strip())
    return Retries(
        attempts=_integer(sub, "attempts") or 0,
        per_try_timeout=_duration(sub, "perTryTimeout"),
        retry_on=retry_on,
    )


def _fault(f: Fields) -> Fault | None:
    sub = f.mapping("fault")
    if sub is None:
        return None
    sub.reject_unknown({"delay", "abort"})
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    if (d := sub.mapping("delay")) is not None:
        d.reject_unknown({"fixedDelay", "percentage", "percent"})
        fixed = _duration(d, "fixedDelay")
        if fixed is None and not d.has("fixedDelay"):
            d.error("fixedDelay", "required field is missing")
        percent = _percent(d, "percentage")
        if percent is None and d.has("percent"):
            # The deprecated integer form, still accepted by Istio.
            percent = float(_integer(d, "percent", maximum=100) or 0)
        if fixed is not None:
            delay = FaultDelay(fixed, 100.0 if percent is None else percent)
    if (a := sub.mapping("abort")) is not None:
        a.reject_unknown({"httpStatus", "percentage", "grpcStatus"})
        status = grpc = None
        if a.has("grpcStatus"):
            grpc = _grpc_status(a)
            if a.has("httpStatus"):
                a.error(None, "must have httpStatus or grpcStatus, not both")
        else:
            status = _integer(a, "httpStatus", minimum=200, maximum=599)
            if status is None and not a.has("httpStatus"):
                a.error("httpStatus", "required field is missing (or grpcStatus)")
        percent = _percent(a, "percentage")
        if status is not None or grpc is not None:
            abort = FaultAbort(status or 0, 100.0 if percent is None else percent, grpc)
    return Fault(delay=delay, abort=abort)


def _grpc_status(f: Fields) -> int | None:
    """``grpcStatus``: a gRPC status name (``UNAVAILABLE``) as its code."""
    name = f.string("grpcStatus")
    if name not in GRPC_STATUS_CODES:
        f.error(
            "grpcStatus", f"unknown gRPC status {name!r} (known: {', '.join(GRPC_STATUS_CODES)})"
        )
        return None
    return GRPC_STATUS_CODES[name]


def _rewrite(f: Fields) -> Rewrite | None:
    sub = f.mapping("rewrite")
    regex = f.mapping("uriRegexRewrite")
    if sub is None and regex is None:
        return None
    uri_regex: tuple[str, str] | None = None
    if regex is not None:
        regex.reject_unknown({"match", "rewrite"})
        pattern = regex.string("match", required=True)
        _check_regex(regex, "match", pattern)
        uri_regex = (pattern, regex.string("rewrite"))
    uri = authority = None
    if sub is not None:
        sub.reject_unknown({"uri", "authority"})
        uri = sub.string("uri") if sub.has("uri") else None
        authority = sub.string("authority") if sub.has("authority") else None
    return Rewrite(uri=uri, authority=authority, uri_regex=uri_regex)


def _redirect(f: Fields) -> Redirect | None:
    sub = f.mapping("redirect")
    if sub is None:
        return None
    sub.reject_unknown({"uri", "authority", "port", "scheme", "redirectCode", "derivePort"})
    code = _integer(sub, "redirectCode")
    if code is not None and code not in _REDIRECT_CODES:
        sub.error("redirectCode", f"must be one of {', '.join(map(str, _REDIRECT_CODES))}")
        code = None
    return Redirect(
        uri=sub.string("uri") if sub.has("uri") else None,
        authority=sub.string("authority") if sub.has("authority") else None,
        port=sub.port("port"),
        scheme=sub.string("scheme") if sub.has("scheme") else None,
        redirect_code=code or 301,
    )


def _direct_response(f: Fields) -> DirectResponse | None:
    sub = f.mapping("directResponse")
    if sub is None:
        return None
    sub.reject_unknown({"status", "body"})
    status = _integer(sub, "status", minimum=200, maximum=599)
    if status is None and not sub.has("status"):
        sub.error("status", "required field is missing")
    body_f = sub.mapping("body")
    body = b""
    if body_f is not None:
        body_f.reject_unknown({"string", "bytes"})
        if body_f.has("string") and body_f.has("bytes"):
            body_f.error(None, "must have string or bytes, not both")
        body = body_f.string("string").encode()
        if body_f.has("bytes"):
            try:
                body = base64.b64decode(body_f.string("bytes"), validate=True)
            except binascii.Error as err:
                body_f.error("bytes", f"is not base64: {err}")
    return DirectResponse(status, body) if status is not None else None


def _mirrors(f: Fields) -> tuple[Mirror, ...]:
    out: list[Mirror] = []
    if f.has("mirror"):
        destination = _destination(f, "mirror")
        percent = _percent(f, "mirrorPercentage")
        if destination is not None:
            out.append(Mirror(destination, 100.0 if percent is None else percent))
    for entry in f.mappings("mirrors"):
        entry.reject_unknown({"destination", "percentage"})
        destination = _destination(entry, "destination")
        percent = _percent(entry, "percentage")
        if destination is not None:
            out.append(Mirror(destination, 100.0 if percent is None else percent))
    return tuple(out)


def _http_route(f: Fields, namespace: str) -> HttpRoute:
    f.reject_unknown(
        {
            "name",
            "match",
            "route",
            "redirect",
            "directResponse",
            "delegate",
            "rewrite",
            "uriRegexRewrite",
            "timeout",
            "retries",
            "fault",
            "mirror",
            "mirrors",
            "mirrorPercentage",
            "mirrorPercent",
            "corsPolicy",
            "headers",
        }
    )
    for unsupported in ("delegate", "mirrorPercent"):
        if f.has(unsupported):
            f.warn(unsupported, "not translated for waypoints yet; the field is ignored")
    route = _route_destinations(f)
    redirect = _redirect(f)
    direct = _direct_response(f)
    given = [
        k for k, v in (("route", route), ("redirect", redirect), ("directResponse", direct)) if v
    ]
    if len(given) > 1:
        f.error(
            given[1],
            f"a rule has one of route, redirect, directResponse, not {' and '.join(given)}",
        )
    elif not given:
        f.error(
            "route",
            "a rule needs a route (at least one destination), a redirect or a directResponse",
        )
    return HttpRoute(
        direct_response=direct,
        name=f.string("name"),
        matches=tuple(_match(m, namespace) for m in f.mappings("match")),
        route=route,
        redirect=redirect,
        rewrite=_rewrite(f),
        timeout=_duration(f, "timeout"),
        retries=_retries(f),
        fault=_fault(f),
        mirrors=_mirrors(f),
        headers=_headers(f),
        cors=_cors(f),
    )


def _cors(f: Fields) -> Cors | None:
    sub = f.mapping("corsPolicy")
    if sub is None:
        return None
    sub.reject_unknown(
        {
            "allowOrigins",
            "allowMethods",
            "allowHeaders",
            "exposeHeaders",
            "maxAge",
            "allowCredentials",
            "unmatchedPreflights",
        }
    )
    origins = [m for o in sub.mappings("allowOrigins") if (m := _string_match_in(o)) is not None]
    preflights = sub.string("unmatchedPreflights", default="FORWARD")
    if preflights not in ("FORWARD", "IGNORE"):
        sub.error("unmatchedPreflights", f"must be FORWARD or IGNORE, not {preflights!r}")
    return Cors(
        allow_origins=tuple(origins),
        allow_methods=sub.str_list("allowMethods"),
        allow_headers=sub.str_list("allowHeaders"),
        expose_headers=sub.str_list("exposeHeaders"),
        max_age=_duration(sub, "maxAge"),
        allow_credentials=sub.boolean("allowCredentials") if sub.has("allowCredentials") else None,
        forward_unmatched_preflights=preflights != "IGNORE",
    )


def _raise_errors(kind: str, namespace: str, name: str, problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if errors:
        raise L7ConfigError(kind, namespace, name, errors)


def parse_virtual_service(vs: VirtualService) -> tuple[VirtualServiceSpec, tuple[Problem, ...]]:
    """The typed routing of ``vs`` and the warnings about fields left untranslated.

    Raises :class:`L7ConfigError` listing every wrong field.
    """
    problems: list[Problem] = []
    spec = Fields(_thawed(vs.spec), "spec", problems)
    if spec.has("tls"):
        spec.warn("tls", "not translated for waypoints yet; these rules are ignored")
    in_mesh = not vs.gateways or "mesh" in vs.gateways
    for i, host in enumerate(vs.hosts):
        # A gateway serves wildcard hosts (controlplane.envoy.ingress); waypoints do not.
        if "*" in host and in_mesh:
            spec.warn(f"hosts[{i}]", "wildcard hosts are not translated for waypoints yet")
    http = tuple(_http_route(r, vs.namespace) for r in spec.mappings("http"))
    tcp = tuple(_tcp_route(r) for r in spec.mappings("tcp"))
    _raise_errors("VirtualService", vs.namespace, vs.name, problems)
    warnings = tuple(p for p in problems if p.severity is Severity.WARNING)
    parsed = VirtualServiceSpec(vs.namespace, vs.name, vs.hosts, vs.gateways, http, tcp)
    return parsed, warnings


def _tcp_route(f: Fields) -> TcpRoute:
    f.reject_unknown({"match", "route"})
    ports: list[int] = []
    any_port = False
    for match in f.mappings("match"):
        match.reject_unknown(
            {"port", "destinationSubnets", "sourceLabels", "gateways", "sourceNamespace"}
        )
        for unsupported in ("destinationSubnets", "sourceLabels", "gateways", "sourceNamespace"):
            if match.has(unsupported):
                match.warn(unsupported, "not translated for waypoints yet; ignored")
        port = match.port("port")
        if port is None:
            any_port = True
        else:
            ports.append(port)
    route = _route_destinations(f)
    if not route:
        f.error("route", "a tcp rule needs at least one destination")
    return TcpRoute(ports=() if any_port else tuple(ports), route=route)


def _load_balancer(f: Fields) -> LoadBalancer | None:
    sub = f.mapping("loadBalancer")
    if sub is None:
        return None
    simple: SimpleLb | None = None
    if sub.has("simple"):
        text = sub.string("simple")
        try:
            simple = SimpleLb(text)
        except ValueError:
            known = ", ".join(k.value for k in SimpleLb)
            sub.error("simple", f"unknown load balancer {text!r} (known: {known})")
    hashing: ConsistentHash | None = None
    if (ch := sub.mapping("consistentHash")) is not None:
        keys = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
        if sum(ch.has(k) for k in keys) != 1:
            ch.error(None, f"must have exactly one of {', '.join(keys)}")
        cookie = ch.mapping("httpCookie")
        hashing = ConsistentHash(
            http_header_name=ch.string("httpHeaderName"),
            http_cookie=cookie.string("name", required=True) if cookie else "",
            http_cookie_path=cookie.string("path") if cookie else "",
            http_cookie_ttl=_duration(cookie, "ttl") if cookie else None,
            use_source_ip=ch.boolean("useSourceIp"),
            http_query_parameter_name=ch.string("httpQueryParameterName"),
            minimum_ring_size=_integer(ch, "minimumRingSize", minimum=1),
        )
    if simple is not None and hashing is not None:
        sub.error(None, "must have simple or consistentHash, not both")
    return LoadBalancer(simple=simple, consistent_hash=hashing)


def _connection_pool(f: Fields) -> ConnectionPool | None:
    sub = f.mapping("connectionPool")
    if sub is None:
        return None
    sub.reject_unknown({"tcp", "http"})
    tcp = sub.mapping("tcp") or Fields({}, sub.at("tcp"), sub.problems)
    http = sub.mapping("http") or Fields({}, sub.at("http"), sub.problems)
    return ConnectionPool(
        max_connections=_integer(tcp, "maxConnections", minimum=1),
        connect_timeout=_duration(tcp, "connectTimeout"),
        http1_max_pending_requests=_integer(http, "http1MaxPendingRequests", minimum=1),
        http2_max_requests=_integer(http, "http2MaxRequests", minimum=1),
        max_requests_per_connection=_integer(http, "maxRequestsPerConnection", minimum=1),
        max_retries=_integer(http, "maxRetries"),
        idle_timeout=_duration(http, "idleTimeout"),
    )


def _outlier_detection(f: Fields) -> OutlierDetection | None:
    sub = f.mapping("outlierDetection")
    if sub is None:
        return None
    return OutlierDetection(
        consecutive_5xx_errors=_integer(sub, "consecutive5xxErrors"),
        consecutive_gateway_errors=_integer(sub, "consecutiveGatewayErrors"),
        interval=_duration(sub, "interval"),
        base_ejection_time=_duration(sub, "baseEjectionTime"),
        max_ejection_percent=_integer(sub, "maxEjectionPercent", maximum=100),
    )


def _traffic_policy(f: Fields) -> TrafficPolicy | None:
    sub = f.mapping("trafficPolicy")
    if sub is None:
        return None
    _warn_untranslated_policy(sub)
    port_level: list[tuple[int, TrafficPolicy]] = []
    for entry in sub.mappings("portLevelSettings"):
        port_f = entry.mapping("port", required=True)
        number = port_f.port("number", required=True) if port_f is not None else None
        if number is not None and number in (p for p, _ in port_level):
            entry.error("port", f"port {number} has settings already")
        elif number is not None:
            port_level.append((number, _policy_parts(entry)))
    return TrafficPolicy(
        load_balancer=_load_balancer(sub),
        connection_pool=_connection_pool(sub),
        outlier_detection=_outlier_detection(sub),
        tls=_client_tls(sub),
        port_level=tuple(port_level),
    )


def _policy_parts(f: Fields) -> TrafficPolicy:
    """The parts a port-level setting may have (no nested port settings)."""
    _warn_untranslated_policy(f)
    return TrafficPolicy(
        load_balancer=_load_balancer(f),
        connection_pool=_connection_pool(f),
        outlier_detection=_outlier_detection(f),
        tls=_client_tls(f),
    )


_TLS_FIELDS = {
    "mode",
    "sni",
    "caCertificates",
    "subjectAltNames",
    "insecureSkipVerify",
    "credentialName",
    "clientCertificate",
    "privateKey",
    "caCrl",
}


def _client_tls(f: Fields) -> ClientTls | None:
    """``tls``: what applies in ambient mode (see :class:`ClientTls`), the rest warned."""
    sub = f.mapping("tls")
    if sub is None:
        return None
    sub.reject_unknown(_TLS_FIELDS)
    text = sub.string("mode", default="DISABLE")
    try:
        mode = TlsMode(text)
    except ValueError:
        sub.error("mode", f"unknown mode {text!r} (known: {', '.join(m.value for m in TlsMode)})")
        return None
    if mode is TlsMode.MUTUAL:
        sub.warn(
            "mode",
            "MUTUAL (client certificates from files or a Secret) is not supported at "
            "waypoints; nothing is originated inside the HBONE tunnel",
        )
        return None
    if mode is not TlsMode.SIMPLE:
        for key in sorted(_TLS_FIELDS - {"mode"}):
            if sub.has(key):
                sub.warn(key, f"ignored with mode {mode.value}")
        # HBONE is the mesh's mTLS: ISTIO_MUTUAL is what it does, DISABLE turns off
        # only TLS inside the tunnel, which there is none of.
        return ClientTls(mode)
    for unsupported in ("credentialName", "clientCertificate", "privateKey", "caCrl"):
        if sub.has(unsupported):
            sub.warn(unsupported, "not supported at waypoints (no Secrets or files); ignored")
    return ClientTls(
        mode,
        sni=sub.string("sni"),
        ca_certificates=sub.string("caCertificates"),
        subject_alt_names=sub.str_list("subjectAltNames"),
        insecure_skip_verify=sub.boolean("insecureSkipVerify"),
    )


def _warn_untranslated_policy(f: Fields) -> None:
    for unsupported in ("tunnel", "proxyProtocol"):
        if f.has(unsupported):
            f.warn(unsupported, "not translated for waypoints yet; the field is ignored")


def parse_destination_rule(dr: DestinationRule) -> tuple[DestinationRuleSpec, tuple[Problem, ...]]:
    """The typed policy of ``dr`` and the warnings about fields left untranslated.

    Raises :class:`L7ConfigError` listing every wrong field.
    """
    problems: list[Problem] = []
    spec = Fields(_thawed(dr.spec), "spec", problems)
    subsets = tuple(
        Subset(
            name=s.string("name", required=True),
            labels=_pairs(s, "labels"),
            traffic_policy=_traffic_policy(s),
        )
        for s in spec.mappings("subsets")
    )
    parsed = DestinationRuleSpec(dr.namespace, dr.name, dr.host, _traffic_policy(spec), subsets)
    _raise_errors("DestinationRule", dr.namespace, dr.name, problems)
    return parsed, tuple(p for p in problems if p.severity is Severity.WARNING)


def _thawed(spec: Any) -> dict[str, Any]:
    thawed = deep_thaw(spec)
    return thawed if isinstance(thawed, dict) else {}


check_regex = _check_regex
"""Whether a pattern is one RE2 accepts; records an error otherwise (for other parsers)."""
duration_field = _duration
"""A duration field in seconds, or None; records an error when malformed."""
integer_field = _integer
"""A bounded integer field, or None; records an error when wrong."""
