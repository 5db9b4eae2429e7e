"""Istio's L7 routing API as typed, frozen values (the translation's input).

:mod:`controlplane.envoy.parse` builds these from the deep-frozen ``spec`` that
:class:`controlplane.model.VirtualService` and :class:`~controlplane.model.DestinationRule`
keep; :mod:`controlplane.envoy.routes` and :mod:`controlplane.envoy.clusters` turn them
into Envoy resources. Durations are in seconds; percentages are 0-100.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MatchKind(enum.Enum):
    """Istio's ``StringMatch`` variants."""

    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"
    """An empty match (``{}``) of a header or query parameter: it must be present."""
    PATH_PREFIX = "path-prefix"
    """Gateway API ``PathPrefix``: whole path segments (``/a`` takes ``/a/b``, not ``/ab``)."""


WRITTEN_MATCH_KINDS = (MatchKind.EXACT, MatchKind.PREFIX, MatchKind.REGEX)
"""The ``StringMatch`` keys a VirtualService may write."""


@dataclass(frozen=True)
class StringMatch:
    """One ``StringMatch`` (``{exact: ...}``, ``{prefix: ...}`` or ``{regex: ...}``)."""

    kind: MatchKind
    value: str


@dataclass(frozen=True)
class HttpMatch:
    """One ``http[].match[]`` entry; all its conditions must hold."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    """Request headers that must match, in the order written."""
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    """Request headers that must not match (``withoutHeaders``)."""
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None
    """Only for traffic to this service port (the route is left out of other ports)."""
    ignore_uri_case: bool = False
    gateways: tuple[str, ...] = ()
    """Only at these gateways (``ns/name``, ``mesh`` for waypoints); empty: wherever
    the VirtualService applies."""


@dataclass(frozen=True)
class HeaderOps:
    """``set`` (overwrite), ``add`` (append) and ``remove`` of one direction."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Headers:
    """``headers``: manipulation of the request (to upstream) and the response."""

    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


@dataclass(frozen=True)
class Destination:
    """A ``Destination``: a service host, optionally a subset and a port."""

    host: str
    """As written (short names resolve in the VirtualService's namespace)."""
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True)
class RouteDestination:
    """One weighted entry of ``http[].route[]``."""

    destination: Destination
    weight: int
    """Relative weight; a lone destination without a weight carries 100."""
    headers: Headers = Headers()


@dataclass(frozen=True)
class Retries:
    """``retries``: ``attempts`` 0 disables retries."""

    attempts: int
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ()
    """Envoy retry conditions and HTTP status codes, as written (comma-separated)."""


@dataclass(frozen=True)
class FaultDelay:
    """``fault.delay``: hold ``percentage`` of requests for ``fixed_delay`` seconds."""

    fixed_delay: float
    percentage: float = 100.0


@dataclass(frozen=True)
class FaultAbort:
    """``fault.abort``: answer ``percentage`` of requests with an HTTP or gRPC status."""

    http_status: int
    """0 when ``grpc_status`` is set."""
    percentage: float = 100.0
    grpc_status: int | None = None
    """A gRPC status code (``grpcStatus``), answered in place of ``http_status``."""


@dataclass(frozen=True)
class Fault:
    """``fault``: injected delays and aborts."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True)
class Rewrite:
    """``rewrite`` (``uri`` replaces the matched prefix) and ``uriRegexRewrite``."""

    uri: str | None = None
    authority: str | None = None
    uri_regex: tuple[str, str] | None = None
    """(pattern, substitution)."""


@dataclass(frozen=True)
class Redirect:
    """``redirect``: answer with a 3xx instead of forwarding."""

    uri: str | None = None
    authority: str | None = None
    port: int | None = None
    scheme: str | None = None
    redirect_code: int = 301
    prefix: str | None = None
    """Replaces the matched path prefix (Gateway API ``ReplacePrefixMatch``)."""


@dataclass(frozen=True)
class DirectResponse:
    """``directResponse``: answer with ``status`` and ``body`` without an upstream."""

    status: int
    body: bytes = b""


@dataclass(frozen=True)
class Cors:
    """``corsPolicy``: what browsers may do cross-origin."""

    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool | None = None
    forward_unmatched_preflights: bool = True
    """``unmatchedPreflights: FORWARD`` (Istio's default) rather than ``IGNORE``."""


@dataclass(frozen=True)
class Mirror:
    """``mirror`` with ``mirrorPercentage`` (or one entry of ``mirrors``)."""

    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True)
class HttpRoute:
    """One ``http[]`` rule, in the order the VirtualService lists it."""

    name: str = ""
    matches: tuple[HttpMatch, ...] = ()
    """Any one must match; empty matches every request."""
    route: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None
    retries: Retries | None = None
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    headers: Headers = Headers()
    cors: Cors | None = None


@dataclass(frozen=True)
class TcpRoute:
    """One ``tcp[]`` rule: connections to ``ports`` (empty: any) go to ``route``."""

    ports: tuple[int, ...] = ()
    """The ``match[].port`` values; a rule with a match without a port takes any port."""
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True)
class VirtualServiceSpec:
    """A VirtualService's routing, typed."""

    namespace: str
    name: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HttpRoute, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()


class SimpleLb(enum.Enum):
    """``loadBalancer.simple``."""

    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"


@dataclass(frozen=True)
class ConsistentHash:
    """``loadBalancer.consistentHash``: exactly one of the keys is set."""

    http_header_name: str = ""
    http_cookie: str = ""
    http_cookie_path: str = ""
    http_cookie_ttl: float | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str = ""
    minimum_ring_size: int | None = None


@dataclass(frozen=True)
class LoadBalancer:
    """``loadBalancer``: ``simple`` or ``consistentHash``."""

    simple: SimpleLb | None = None
    consistent_hash: ConsistentHash | None = None


@dataclass(frozen=True)
class ConnectionPool:
    """``connectionPool.tcp`` and ``connectionPool.http``; None leaves Istio's default."""

    max_connections: int | None = None
    connect_timeout: float | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True)
class OutlierDetection:
    """``outlierDetection``; None leaves Envoy's default."""

    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None


class TlsMode(enum.Enum):
    """``trafficPolicy.tls.mode``."""

    DISABLE = "DISABLE"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"


@dataclass(frozen=True)
class ClientTls:
    """``trafficPolicy.tls``: TLS the proxy originates to the destination.

    In ambient mode the mesh's mTLS is HBONE, underneath: ``ISTIO_MUTUAL`` and
    ``DISABLE`` add nothing inside the tunnel; ``SIMPLE`` originates TLS to the
    application inside it (an application that itself serves TLS).
    """

    mode: TlsMode
    sni: str = ""
    ca_certificates: str = ""
    """A CA bundle file in the proxy's filesystem; empty: the system's roots."""
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class TrafficPolicy:
    """``trafficPolicy`` (top level or of a subset)."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None
    port_level: tuple[tuple[int, TrafficPolicy], ...] = ()
    """``portLevelSettings``: (service port, its policy), applied by :meth:`for_port`."""

    def over(self, base: TrafficPolicy | None) -> TrafficPolicy:
        """This policy with each part it leaves out taken from ``base`` (Istio's merge).

        A part is replaced whole, never merged field by field: Istio applies defaults,
        not the base's values, to what a more specific part leaves out.
        """
        if base is None:
            return self
        return TrafficPolicy(
            load_balancer=self.load_balancer or base.load_balancer,
            connection_pool=self.connection_pool or base.connection_pool,
            outlier_detection=self.outlier_detection or base.outlier_detection,
            tls=self.tls or base.tls,
        )

    def for_port(self, port: int) -> TrafficPolicy:
        """The policy for one service port: its port-level settings over the rest."""
        here = TrafficPolicy(
            self.load_balancer, self.connection_pool, self.outlier_detection, self.tls
        )
        for number, policy in self.port_level:
            if number == port:
                return policy.over(here)
        return here


@dataclass(frozen=True)
class Subset:
    """One ``subsets[]`` entry: the endpoints carrying ``labels``."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRuleSpec:
    """A DestinationRule's policy, typed."""

    namespace: str
    name: str
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()

    def subset(self, name: str) -> Subset | None:
        """The subset called ``name``, if any."""
        return next((s for s in self.subsets if s.name == name), None)
