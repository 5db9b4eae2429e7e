"""A waypoint's Envoy resources from the cluster's state, as istiod builds them.

:func:`translate_waypoint` is pure: the cluster's state and the services a waypoint
serves in, every ``RouteConfiguration`` and ``Cluster`` out, keyed by resource name,
with what each cluster's endpoints must be (served later over EDS). A VirtualService
or DestinationRule that cannot be translated is reported as an issue and skipped;
the rest still translates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane.envoy.clusters import build_cluster
from controlplane.envoy.errors import L7ConfigError
from controlplane.envoy.httproute import with_gamma_routes
from controlplane.envoy.names import (
    cluster_name,
    resolve_host,
    route_name,
    service_domains,
    tcp_proxy_name,
)
from controlplane.envoy.parse import parse_destination_rule, parse_virtual_service
from controlplane.envoy.routes import build_routes, route_configuration
from controlplane.envoy.spec import (
    ConsistentHash,
    Destination,
    DestinationRuleSpec,
    HttpRoute,
    RouteDestination,
    TcpRoute,
    TrafficPolicy,
    VirtualServiceSpec,
)
from controlplane.envoy.tcp import build_tcp_proxy, tcp_rule_for
from controlplane.model import (
    ClusterState,
    DestinationRule,
    Service,
    Severity,
    SourceIssue,
    VirtualService,
)
from controlplane.sources.fields import Problem
from controlplane.workloadapi.mesh import MeshConfig

_Obj = TypeVar("_Obj", VirtualService, DestinationRule)
_Spec = TypeVar("_Spec", VirtualServiceSpec, DestinationRuleSpec)

MESH_GATEWAY = "mesh"
"""The ``gateways`` entry meaning in-mesh traffic (implied when ``gateways`` is empty)."""


@dataclass(frozen=True)
class ClusterEndpoints:
    """Which endpoints a cluster holds: what EDS will send for it."""

    host: str
    """The service FQDN."""
    port: int
    """The service port (target ports resolve per pod)."""
    service: tuple[str, str] | None
    """(namespace, name) of the Kubernetes Service; None for a host the cluster lacks."""
    subset: str = ""
    """The DestinationRule subset; empty for the whole service."""
    subset_labels: tuple[tuple[str, str], ...] = ()
    """Labels an endpoint must carry besides the service's selector (the subset's)."""


@dataclass(frozen=True)
class WaypointResources:
    """Everything a waypoint's Envoy needs but listeners, endpoints and secrets."""

    routes: Mapping[str, Any] = field(default_factory=dict)
    """``RouteConfiguration`` by name (one per served service port)."""
    clusters: Mapping[str, Any] = field(default_factory=dict)
    """``Cluster`` by name (served services, their subsets, every routed destination)."""
    endpoints: Mapping[str, ClusterEndpoints] = field(default_factory=dict)
    """What each cluster's endpoints are, by cluster name."""
    issues: tuple[SourceIssue, ...] = ()
    """Objects skipped (errors) or fields ignored (warnings)."""
    tcp_proxies: Mapping[str, Any] = field(default_factory=dict)
    """``TcpProxy`` network-filter configuration by name (one per served service port)."""


def _issues(kind: str, ns: str, name: str, problems: Iterable[Problem]) -> list[SourceIssue]:
    return [SourceIssue("", 0, kind, ns, name, p.field, p.message, p.severity) for p in problems]


class _Translation:
    """The state of one translation: parsed objects and the clusters routes refer to."""

    def __init__(self, state: ClusterState, mesh: MeshConfig) -> None:
        self.mesh = mesh
        self.issues: list[SourceIssue] = []
        self.services = {
            mesh.service_hostname(s.namespace, s.name): s for s in state.services.values()
        }
        self.virtual_services = [
            vs
            for vs in self._parsed(state.virtual_services, "VirtualService", parse_virtual_service)
            if not vs.gateways or MESH_GATEWAY in vs.gateways
        ]
        self.rules: dict[str, list[DestinationRuleSpec]] = {}
        for dr in self._parsed(state.destination_rules, "DestinationRule", parse_destination_rule):
            self.rules.setdefault(resolve_host(dr.host, dr.namespace, mesh), []).append(dr)
        self.needed: dict[str, ClusterEndpoints] = {}

    def _parsed(
        self,
        objects: Mapping[tuple[str, str], _Obj],
        kind: str,
        parse: Callable[[_Obj], tuple[_Spec, tuple[Problem, ...]]],
    ) -> list[_Spec]:
        """Each object parsed, in key order; the bad ones skipped, all problems kept."""
        out: list[_Spec] = []
        for (namespace, name), obj in sorted(objects.items()):
            try:
                parsed, warnings = parse(obj)
            except L7ConfigError as err:
                self.issues += _issues(kind, namespace, name, err.problems)
                continue
            self.issues += _issues(kind, namespace, name, warnings)
            out.append(parsed)
        return out

    def destination_rule(self, host: str) -> DestinationRuleSpec | None:
        """The rule for ``host``: the service's namespace first, then the root one (istiod)."""
        candidates = self.rules.get(host, [])
        service = self.services.get(host)
        order = (service.namespace if service else "", self.mesh.root_namespace)
        for namespace in order:
            for rule in candidates:
                if rule.namespace == namespace:
                    return rule
        return candidates[0] if candidates else None

    def policy(self, host: str, port: int, subset: str) -> TrafficPolicy | None:
        """The traffic policy of one cluster, as istiod merges it.

        The rule's top level, its settings for ``port`` over that, then the subset's
        top level and the subset's settings for ``port`` over those, part by part.
        """
        rule = self.destination_rule(host)
        if rule is None:
            return None
        base = rule.traffic_policy.for_port(port) if rule.traffic_policy else None
        found = rule.subset(subset) if subset else None
        if found is not None and found.traffic_policy is not None:
            return found.traffic_policy.for_port(port).over(base)
        return base

    def need(self, host: str, port: int, subset: str) -> str:
        """Records that a cluster is routed to; returns its name."""
        name = cluster_name(host, port, subset)
        if name not in self.needed:
            service = self.services.get(host)
            labels: tuple[tuple[str, str], ...] = ()
            if subset:
                rule = self.destination_rule(host)
                found = rule.subset(subset) if rule else None
                labels = found.labels if found else ()
            key = service.key if service else None
            self.needed[name] = ClusterEndpoints(host, port, key, subset, labels)
        return name


class _Destinations:
    """Resolves destinations of one VirtualService for one served service port."""

    def __init__(
        self, t: _Translation, vs: VirtualServiceSpec, host: str, port: int, field: str
    ) -> None:
        self.t, self.vs, self.host, self.port, self.field = t, vs, host, port, field

    def _warn(self, message: str) -> None:
        self.t.issues.append(
            SourceIssue(
                "",
                0,
                "VirtualService",
                self.vs.namespace,
                self.vs.name,
                self.field,
                message,
                Severity.WARNING,
            )
        )

    def cluster(self, destination: Destination) -> str:
        """See :class:`controlplane.envoy.routes.Destinations`."""
        host = resolve_host(destination.host, self.vs.namespace, self.t.mesh)
        service = self.t.services.get(host)
        port = destination.port
        if port is None:
            # Istio: the port may be left out when the destination has only one.
            other_single = service is not None and host != self.host and len(service.ports) == 1
            port = service.ports[0].port if service is not None and other_single else self.port
        if service is None:
            self._warn(f"destination host {host} is not a known service; Envoy answers 503")
        if destination.subset:
            rule = self.t.destination_rule(host)
            if rule is None or rule.subset(destination.subset) is None:
                self._warn(
                    f"subset {destination.subset!r} of {host} is defined by no "
                    "DestinationRule; its cluster has no endpoints"
                )
        return self.t.need(host, port, destination.subset)

    def consistent_hash(self, cluster: str) -> ConsistentHash | None:
        """See :class:`controlplane.envoy.routes.Destinations`."""
        ends = self.t.needed[cluster]
        policy = self.t.policy(ends.host, ends.port, ends.subset)
        lb = policy.load_balancer if policy else None
        return lb.consistent_hash if lb else None


def _applies(vs: VirtualServiceSpec, host: str, mesh: MeshConfig) -> bool:
    return any(resolve_host(h, vs.namespace, mesh) == host for h in vs.hosts)


def translate_waypoint(
    state: ClusterState, served: Iterable[Service], mesh: MeshConfig | None = None
) -> WaypointResources:
    """The routes, TCP proxies and clusters of a waypoint serving ``served``.

    VirtualServices apply when their ``gateways`` are empty or list ``mesh``; several
    for one host are concatenated in (namespace, name) order (istiod orders by age,
    which the cluster's state does not carry). Every service port gets both an HTTP
    route configuration and a TCP proxy: the listener picks one by the port's protocol.
    """
    mesh = mesh or MeshConfig()
    t = _Translation(state, mesh)
    # HTTPRoutes whose parentRefs name a Service (GAMMA) route that service here,
    # in place of any VirtualService for it.
    t.virtual_services, gamma_issues = with_gamma_routes(t.virtual_services, state, mesh)
    t.issues += gamma_issues
    routes: dict[str, Any] = {}
    tcp_proxies: dict[str, Any] = {}
    for service in sorted(served, key=lambda s: s.key):
        host = mesh.service_hostname(service.namespace, service.name)
        applying = [vs for vs in t.virtual_services if _applies(vs, host, mesh)]
        for service_port in service.ports:
            port = service_port.port
            name = route_name(host, port)
            routes[name] = route_configuration(
                name,
                f"{host}:{port}",
                service_domains(service, port, mesh),
                _http_routes(t, applying, host, port),
            )
            tcp_proxies[tcp_proxy_name(host, port)] = _tcp_proxy(t, applying, host, port)
            t.need(host, port, "")
            rule = t.destination_rule(host)
            for subset in rule.subsets if rule else ():
                t.need(host, port, subset.name)
    clusters = {
        name: build_cluster(name, t.policy(ends.host, ends.port, ends.subset))
        for name, ends in sorted(t.needed.items())
    }
    needed = dict(sorted(t.needed.items()))
    # A destination met on several ports or matches is reported once.
    issues = tuple(dict.fromkeys(t.issues))
    return WaypointResources(routes, clusters, needed, issues, tcp_proxies)


def _http_routes(
    t: _Translation, applying: list[VirtualServiceSpec], host: str, port: int
) -> list[Any]:
    """The routes of every applying VirtualService's http rules, or the default route."""
    with_http = [vs for vs in applying if vs.http]
    built: list[Any] = []
    for vs in with_http:
        destinations = _Destinations(t, vs, host, port, "spec.http")
        built += build_routes(vs.http, port, destinations, f"{vs.namespace}.{vs.name}")
    if with_http:
        return built
    default = HttpRoute(route=(_lone(host, port),))
    return build_routes([default], port, _Destinations(t, _NO_VS, host, port, ""), "default")


def _tcp_proxy(t: _Translation, applying: list[VirtualServiceSpec], host: str, port: int) -> Any:
    """The TCP proxy of the first applying tcp rule for ``port``, or to the service."""
    name = tcp_proxy_name(host, port)
    for vs in applying:
        if (rule := tcp_rule_for(vs.tcp, port)) is not None:
            return build_tcp_proxy(name, rule, _Destinations(t, vs, host, port, "spec.tcp"))
    default = TcpRoute(route=(_lone(host, port),))
    return build_tcp_proxy(name, default, _Destinations(t, _NO_VS, host, port, ""))


def _lone(host: str, port: int) -> RouteDestination:
    return RouteDestination(Destination(host, port=port), 100)


_NO_VS = VirtualServiceSpec("", "", ())
