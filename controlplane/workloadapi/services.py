"""Kubernetes Services to ``istio.workload.Service`` messages, and their endpoints.

A service's endpoints are not listed on the service: each selected workload carries
the service in its ``services`` map with the target ports resolved for that pod
(named target ports differ per pod), as istiod does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from api.messages import workload as wl
from controlplane.model import Pod, Service, ServicePort, selector_matches
from controlplane.workloadapi.mesh import MeshConfig


def is_served(service: Service) -> bool:
    """Whether the service is sent at all (ExternalName services are not)."""
    return service.type != "ExternalName"


class ServiceIndex:
    """Finds the services selecting a pod without testing every service of the cluster.

    Services are filed under their namespace and one of their selector pairs; a pod
    only tests the services filed under one of its own labels.
    """

    def __init__(self, services: Iterable[Service]) -> None:
        self._by_pair: dict[tuple[str, str, str], list[Service]] = {}
        for service in services:
            if is_served(service) and service.selector:
                key, value = min(service.selector.items())
                self._by_pair.setdefault((service.namespace, key, value), []).append(service)

    def selecting(self, pod: Pod) -> list[Service]:
        """The services whose selector picks ``pod``, in name order."""
        found = [
            service
            for key, value in pod.labels.items()
            for service in self._by_pair.get((pod.namespace, key, value), ())
            if selector_matches(service.selector or {}, pod.labels)
        ]
        return sorted(found, key=lambda s: s.name)


def app_protocol(port: ServicePort) -> int:
    """The ``AppProtocol`` from ``appProtocol`` or the port name's prefix (Istio's rule)."""
    if port.protocol != "TCP":
        return int(wl.UNKNOWN)
    text = (port.app_protocol or port.name.split("-", 1)[0]).lower()
    if text in ("kubernetes.io/h2c", "http2", "h2c"):
        return int(wl.HTTP2)
    if text in ("http", "http1.1", "kubernetes.io/ws", "kubernetes.io/wss"):
        return int(wl.HTTP11)
    if text == "grpc":
        return int(wl.GRPC)
    return int(wl.UNKNOWN)


def service_message(
    service: Service,
    mesh: MeshConfig,
    waypoint: Any | None = None,
    *,
    ingress_use_waypoint: bool = False,
) -> Any:
    """The ``istio.workload.Service`` for a Kubernetes Service.

    A numeric target port is sent; a named one is sent as 0, meaning "look it up in
    the workload's services map". ``waypoint`` is its ``GatewayAddress``, if any;
    ``ingress_use_waypoint`` tells ingress gateways to send to that waypoint too.
    """
    families = set(service.ip_families)
    ip_families = {
        frozenset({"IPv4"}): wl.IPV4_ONLY,
        frozenset({"IPv6"}): wl.IPV6_ONLY,
        frozenset({"IPv4", "IPv6"}): wl.DUAL,
    }.get(frozenset(families), wl.AUTOMATIC)
    return wl.Service(
        load_balancing=load_balancing(service),
        ip_families=ip_families,
        name=service.name,
        namespace=service.namespace,
        hostname=mesh.service_hostname(service.namespace, service.name),
        addresses=[
            wl.NetworkAddress(network=mesh.network, address=ipaddress.ip_address(ip).packed)
            for ip in service.cluster_ips
        ],
        ports=[
            wl.Port(
                service_port=p.port,
                target_port=p.target_port if isinstance(p.target_port, int) else 0,
                app_protocol=app_protocol(p),
            )
            for p in service.ports
        ],
        waypoint=waypoint,
        ingress_use_waypoint=ingress_use_waypoint,
    )


def load_balancing(service: Service) -> Any | None:
    """Locality preferences from traffic distribution and the internal traffic policy."""
    lb = None
    if service.traffic_distribution.lower() == "preferclose":
        lb = wl.LoadBalancing(
            routing_preference=[
                wl.LoadBalancing.NETWORK,
                wl.LoadBalancing.REGION,
                wl.LoadBalancing.ZONE,
                wl.LoadBalancing.SUBZONE,
            ],
            mode=wl.LoadBalancing.FAILOVER,
        )
    if service.internal_traffic_policy == "Local":
        lb = wl.LoadBalancing(
            routing_preference=[wl.LoadBalancing.NODE], mode=wl.LoadBalancing.STRICT
        )
    if service.publish_not_ready_addresses:
        lb = lb or wl.LoadBalancing()
        lb.health_policy = wl.LoadBalancing.ALLOW_ALL
    return lb


def workload_ports(service: Service, pod: Pod) -> Any:
    """The ``PortList`` a pod serves for a service; unresolvable named ports are left out.

    As in istiod, the protocol is on the service's ports only.
    """
    ports = []
    for p in service.ports:
        target = p.target_port if isinstance(p.target_port, int) else pod.named_port(p.target_port)
        if target is None:
            continue
        ports.append(wl.Port(service_port=p.port, target_port=target))
    return wl.PortList(ports=ports)
