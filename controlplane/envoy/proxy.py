"""Everything one Envoy (a waypoint or a gateway) is served, from the cluster's state.

:func:`proxy_resources` is the one entry point of the control plane's Envoy xDS
server: given who the proxy is (:class:`EnvoyProxy`, from its node metadata), it
returns every listener, route configuration, cluster and endpoint assignment
(:class:`EnvoyResources`, ``xds-protos`` messages by resource name). Secrets (SDS)
are the server's. Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from api.messages import workload as wl
from controlplane.envoy import hbone, telemetry
from controlplane.envoy.clusters import through_hbone_with_tls
from controlplane.envoy.ingress import translate_ingress
from controlplane.envoy.listeners import (
    ServedPort,
    ServedWorkload,
    connect_terminate_listener,
    internal_cluster,
    main_internal_cluster,
    main_internal_listener,
    served_authorities,
    workload_authorities,
    workload_internal_listener,
)
from controlplane.envoy.names import route_name, tcp_proxy_name
from controlplane.envoy.rbac import rbac_filters, rbac_network_filters
from controlplane.envoy.waypoint import ClusterEndpoints, WaypointResources, translate_waypoint
from controlplane.model import (
    GATEWAY_NAME_LABEL,
    ClusterState,
    Pod,
    Service,
    ServicePort,
    SourceIssue,
    is_enrolled,
    selector_matches,
)
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.workloadapi.services import app_protocol
from controlplane.workloadapi.waypoints import Waypoint, WaypointIndex, ingress_uses_waypoint
from controlplane.workloadapi.workloads import (
    canonical_name,
    canonical_revision,
    is_sent,
    workload_name,
)

ProxyKind = Literal["waypoint", "gateway"]


@dataclass(frozen=True)
class EnvoyProxy:
    """One Envoy connected to the control plane, as its node metadata says."""

    node_id: str
    """The xDS node id."""
    namespace: str
    """The proxy pod's namespace (node metadata ``NAMESPACE``)."""
    service_account: str
    """The proxy pod's service account (``SERVICE_ACCOUNT``); its identity."""
    gateway_name: str
    """The Gateway the proxy implements (``GATEWAY_NAME``)."""
    kind: ProxyKind
    """``waypoint`` or ``gateway`` (``PROXY_KIND``)."""
    ip: str
    """The proxy pod's IP (first of ``INSTANCE_IPS``)."""
    tracing: bool = False
    """Whether its bootstrap has the tracing collector's cluster (node metadata
    ``TRACING``): only then do its connection managers trace."""


@dataclass(frozen=True)
class EnvoyResources:
    """What one proxy is served, by resource name."""

    listeners: Mapping[str, Any] = field(default_factory=dict)
    """``envoy.config.listener.v3.Listener`` by name (LDS)."""
    routes: Mapping[str, Any] = field(default_factory=dict)
    """``envoy.config.route.v3.RouteConfiguration`` by name (RDS)."""
    clusters: Mapping[str, Any] = field(default_factory=dict)
    """``envoy.config.cluster.v3.Cluster`` by name (CDS)."""
    endpoints: Mapping[str, Any] = field(default_factory=dict)
    """``envoy.config.endpoint.v3.ClusterLoadAssignment`` by cluster name (EDS)."""
    issues: tuple[SourceIssue, ...] = ()
    """Objects skipped (errors) or fields ignored (warnings) while translating."""


def served_services(state: ClusterState, proxy: EnvoyProxy) -> list[Service]:
    """The services bound to the waypoint ``proxy``, exactly as the workload API binds
    them for the ztunnels (:class:`~controlplane.workloadapi.waypoints.WaypointIndex`:
    ``istio.io/use-waypoint`` on the Service or its namespace, ``waypoint-for``)."""
    index = WaypointIndex(state)
    served = []
    for service in state.services.values():
        waypoint = index.for_service(service).waypoint
        if waypoint is not None and waypoint.key == (proxy.namespace, proxy.gateway_name):
            served.append(service)
    return sorted(served, key=lambda s: s.key)


def served_workloads(
    state: ClusterState, proxy: EnvoyProxy, mesh: MeshConfig
) -> list[ServedWorkload]:
    """The pods whose own address is bound to the waypoint ``proxy`` (``waypoint-for:
    workload`` or ``all``, the workload API's binding), ready and in the mesh."""
    index = WaypointIndex(state)
    # Pod-addressed traffic is TCP: the policies attached to the waypoint itself.
    gateway = (proxy.namespace, proxy.gateway_name)
    policies = tuple(rbac_network_filters(state, gateway, None, mesh))
    found = []
    for _, pod in sorted(state.pods.items()):
        waypoint = index.for_pod(pod).waypoint
        if (
            waypoint is None
            or waypoint.key != (proxy.namespace, proxy.gateway_name)
            or not _healthy(pod)
            or not is_enrolled(pod, state.namespace_of(pod))
        ):
            continue
        principal = _principal(pod, mesh)
        found += [ServedWorkload(ip, principal, policies) for ip in (pod.ips or (pod.ip,)) if ip]
    return found


def _principal(pod: Pod, mesh: MeshConfig) -> str:
    return f"spiffe://{mesh.trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}"


OPAQUE_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis", "udp"})
"""Istio's protocols (``appProtocol`` or port-name prefix) a waypoint proxies as TCP."""


def port_protocol(port: ServicePort) -> bool | None:
    """How a service port is served: True for HTTP (``http``, ``http2``, ``grpc``, ...
    by ``appProtocol`` or the name's prefix: Istio's rule), False for Istio's other
    protocols (:data:`OPAQUE_PROTOCOLS`) and non-TCP ports, None for anything else:
    then the waypoint detects HTTP per connection, as Istio's protocol sniffing does."""
    if app_protocol(port) in (int(wl.HTTP11), int(wl.HTTP2), int(wl.GRPC)):
        return True
    declared = (port.app_protocol or port.name.split("-", 1)[0]).lower()
    if port.protocol != "TCP" or declared in OPAQUE_PROTOCOLS:
        return False
    return None


def _served_ports(
    state: ClusterState,
    services: list[Service],
    translated: WaypointResources,
    proxy: EnvoyProxy,
    mesh: MeshConfig,
) -> list[ServedPort]:
    access_log = tuple(telemetry.access_log_config(proxy))
    tracing = telemetry.tracing_config(proxy) if proxy.tracing else None
    gateway = (proxy.namespace, proxy.gateway_name)
    out = []
    for service in services:
        if not service.cluster_ips:
            continue
        host = mesh.service_hostname(service.namespace, service.name)
        for port in service.ports:
            route = route_name(host, port.port)
            out.append(
                ServedPort(
                    addresses=service.cluster_ips,
                    port=port.port,
                    http=port_protocol(port),
                    route=route,
                    tcp_proxy=translated.tcp_proxies[tcp_proxy_name(host, port.port)],
                    http_filters=tuple(rbac_filters(state, gateway, service, mesh, port=port.port)),
                    network_filters=tuple(
                        rbac_network_filters(state, gateway, service, mesh, port=port.port)
                    ),
                    access_log=access_log,
                    tracing=tracing,
                )
            )
    return out


def _healthy(pod: Pod) -> bool:
    return is_sent(pod) and pod.ready and not pod.deleting


def _endpoint(pod: Pod, port: int, mesh: MeshConfig, hbone_port: int) -> Any:
    """A tunnel endpoint carrying what the access log reports of the destination."""
    principal = _principal(pod, mesh)
    metadata = telemetry.endpoint_metadata(
        workload=workload_name(pod),
        workload_namespace=pod.namespace,
        app=canonical_name(pod),
        version=canonical_revision(pod),
        principal=principal,
    )
    assert pod.ip is not None  # PodIndex holds pods with an address only
    return hbone.tunnel_lb_endpoint(
        pod.ip, port, principal=principal, hbone_port=hbone_port, metadata=metadata
    )


class PodIndex:
    """The pods that can be endpoints (ready, with an address, in the mesh), by
    namespace and label, in key order: built once per translation, so finding a
    selector's pods does not test every pod of the cluster."""

    def __init__(self, state: ClusterState) -> None:
        self._by_pair: dict[tuple[str, str, str], list[Pod]] = {}
        for _, pod in sorted(state.pods.items()):
            if pod.ip is None or not _healthy(pod):
                continue
            if not is_enrolled(pod, state.namespace_of(pod)):
                continue
            for key, value in pod.labels.items():
                self._by_pair.setdefault((pod.namespace, key, value), []).append(pod)

    def selecting(self, namespace: str, selector: Mapping[str, str]) -> list[Pod]:
        """The pods of ``namespace`` whose labels match ``selector`` (empty: none)."""
        if not selector:
            return []
        candidates = min(
            (self._by_pair.get((namespace, k, v), []) for k, v in selector.items()), key=len
        )
        return [pod for pod in candidates if selector_matches(selector, pod.labels)]


def _with_metadata(cluster: Any, ends: ClusterEndpoints) -> Any:
    """``cluster`` carrying the destination service the access log reports."""
    namespace, name = ends.service or ("", "")
    cluster.metadata.MergeFrom(
        telemetry.cluster_metadata(
            service=ends.host, service_name=name, service_namespace=namespace, subset=ends.subset
        )
    )
    return cluster


def endpoints_of(
    state: ClusterState,
    name: str,
    ends: ClusterEndpoints,
    mesh: MeshConfig | None = None,
    *,
    hbone_port: int = hbone.HBONE_PORT,
    pods: PodIndex | None = None,
) -> Any:
    """The ``ClusterLoadAssignment`` of one cluster: every ready pod the service selects
    (and the subset's labels), reached through an HBONE tunnel to the pod. ``pods``:
    the index to search (built from ``state`` when not given).

    Pods outside the mesh (not enrolled) cannot take HBONE and are left out.
    """
    service = state.services.get(ends.service) if ends.service else None
    found: list[Any] = []
    if service is not None and service.selector:
        service_port = next((p for p in service.ports if p.port == ends.port), None)
        selector = {**service.selector, **dict(ends.subset_labels)}
        index = pods if pods is not None else PodIndex(state)
        for pod in index.selecting(service.namespace, selector) if service_port else ():
            target = service_port.target_port if service_port else 0
            port = target if isinstance(target, int) else pod.named_port(target)
            if port is not None:
                found.append(_endpoint(pod, port, mesh or MeshConfig(), hbone_port))
    return hbone.load_assignment(name, found)


def proxy_resources(
    state: ClusterState, proxy: EnvoyProxy, mesh: MeshConfig | None = None
) -> EnvoyResources:
    """Every resource ``proxy`` is served, given the cluster's state.

    A waypoint: the HBONE listener, the inner listener with a filter chain per port of
    each service bound to it, the ``connect_originate`` listener and cluster, and per
    route destination an EDS cluster whose endpoints are HBONE tunnels to the pods.
    A gateway: :func:`~controlplane.envoy.ingress.translate_ingress` (its listeners,
    routes and clusters) with the same access log, tracing and endpoints.
    """
    mesh = mesh or MeshConfig()
    if proxy.kind == "gateway":
        return _gateway_resources(state, proxy, mesh)
    services = served_services(state, proxy)
    translated = translate_waypoint(state, services, mesh)
    served = _served_ports(state, services, translated, proxy, mesh)
    workloads = served_workloads(state, proxy, mesh)
    listeners = [
        connect_terminate_listener(served_authorities(served), workload_authorities(workloads)),
        hbone.connect_originate_listener(),
    ]
    if served:
        # Envoy refuses a listener without filter chains, and one refused listener
        # NACKs the whole LDS update: a waypoint nothing is bound to yet (the first
        # step of Istio's tutorials) has no inner listener; its tunnels get 404s.
        listeners.insert(1, main_internal_listener(served))
    if workloads:
        listeners.append(workload_internal_listener(workloads))
    clusters = {
        name: _with_metadata(through_hbone_with_tls(c), translated.endpoints[name])
        for name, c in translated.clusters.items()
    }
    clusters[hbone.MAIN_INTERNAL] = main_internal_cluster()
    if workloads:
        clusters[hbone.WORKLOAD_INTERNAL] = internal_cluster(hbone.WORKLOAD_INTERNAL)
        clusters[hbone.ENCAP] = hbone.encap_cluster()
    clusters[hbone.CONNECT_ORIGINATE] = hbone.connect_originate_cluster()
    pods = PodIndex(state)
    endpoints = {
        name: endpoints_of(state, name, ends, mesh, pods=pods)
        for name, ends in translated.endpoints.items()
    }
    return EnvoyResources(
        listeners={listener.name: listener for listener in listeners},
        routes={name: any_host(route) for name, route in translated.routes.items()},
        clusters=dict(sorted(clusters.items())),
        endpoints=endpoints,
        issues=translated.issues,
    )


def any_host(route: Any) -> Any:
    """A waypoint's route configuration for one service port, answering any ``Host``
    (a copy; Istio's waypoints do the same): the filter chain is already chosen by the
    tunnel's ``:authority`` (the service's VIP and port), and a request that came
    through an ingress gateway (``istio.io/ingress-use-waypoint``) still carries the
    gateway's host, which is none of the service's own names."""
    out = type(route)()
    out.CopyFrom(route)
    for vhost in out.virtual_hosts:
        del vhost.domains[:]
        vhost.domains.append("*")
    return out


def _gateway_resources(state: ClusterState, proxy: EnvoyProxy, mesh: MeshConfig) -> EnvoyResources:
    translated = translate_ingress(
        state,
        proxy,
        mesh,
        access_log=telemetry.access_log_config(proxy),
        tracing=telemetry.tracing_config(proxy) if proxy.tracing else None,
    )
    clusters = {
        name: _with_metadata(cluster, translated.endpoints[name])
        if name in translated.endpoints
        else cluster
        for name, cluster in translated.clusters.items()
    }
    pods = PodIndex(state)
    index = WaypointIndex(state)
    endpoints = {
        name: ingress_waypoint_endpoints(state, name, ends, mesh, index)
        or endpoints_of(state, name, ends, mesh, pods=pods)
        for name, ends in translated.endpoints.items()
    }
    return EnvoyResources(
        listeners=dict(translated.listeners),
        routes=dict(translated.routes),
        clusters=clusters,
        endpoints=endpoints,
        issues=translated.issues,
    )


def ingress_waypoint(
    state: ClusterState, service: Service, index: WaypointIndex
) -> Waypoint | None:
    """The waypoint an ingress gateway sends ``service``'s traffic to: the Service's
    waypoint (the workload API's binding) when it or its namespace is labelled
    ``istio.io/ingress-use-waypoint: "true"``, as Istio does; else None (straight to
    the pods)."""
    if not ingress_uses_waypoint(state, service):
        return None
    return index.for_service(service).waypoint


def waypoint_pods(state: ClusterState, waypoint: Waypoint) -> list[Pod]:
    """The running, ready pods of a waypoint (labelled with its name, in its namespace)."""
    return [
        pod
        for _, pod in sorted(state.pods.items())
        if pod.namespace == waypoint.namespace
        and pod.labels.get(GATEWAY_NAME_LABEL) == waypoint.name
        and pod.ip
        and pod.ready
        and not pod.deleting
    ]


def ingress_waypoint_endpoints(
    state: ClusterState,
    name: str,
    ends: ClusterEndpoints,
    mesh: MeshConfig,
    index: WaypointIndex,
) -> Any | None:
    """The endpoints of a gateway cluster whose service sends ingress through its
    waypoint (:func:`ingress_waypoint`): one tunnel per waypoint pod, to its 15008 with
    ``:authority <service VIP>:<port>`` and the waypoint's identity expected, so the
    waypoint's routing and L7 policy apply to ingress traffic. None: not such a cluster
    (its endpoints are the pods, :func:`endpoints_of`).

    A subset cluster goes to the waypoint too: the waypoint routes by its own
    VirtualServices and DestinationRules, as in Istio.
    """
    service = state.services.get(ends.service) if ends.service else None
    if service is None or not service.cluster_ips:
        return None
    waypoint = ingress_waypoint(state, service, index)
    if waypoint is None:
        return None
    found = [
        hbone.tunnel_lb_endpoint(
            service.cluster_ips[0],
            ends.port,
            principal=_principal(pod, mesh),
            via=pod.ip or "",
        )
        for pod in waypoint_pods(state, waypoint)
    ]
    return hbone.load_assignment(name, found)
