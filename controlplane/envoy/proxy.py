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

from controlplane.envoy.waypoint import translate_waypoint
from controlplane.model import ClusterState, Service, SourceIssue
from controlplane.workloadapi.mesh import MeshConfig

ProxyKind = Literal["waypoint", "gateway"]

USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
NO_WAYPOINT = "#none"


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


def _use_waypoint(labels: Mapping[str, str]) -> str | None:
    return labels.get(USE_WAYPOINT_LABEL)


def _binds(value: str, object_namespace: str, proxy: EnvoyProxy) -> bool:
    """Whether a ``istio.io/use-waypoint`` value names the proxy's Gateway."""
    if value == NO_WAYPOINT:
        return False
    namespace, _, name = value.rpartition("/")
    return (namespace or object_namespace) == proxy.namespace and name == proxy.gateway_name


def served_services(state: ClusterState, proxy: EnvoyProxy) -> list[Service]:
    """The services bound to the waypoint ``proxy``: a Service's own
    ``istio.io/use-waypoint`` label, else its namespace's."""
    served = []
    for service in state.services.values():
        value = _use_waypoint(service.labels)
        if value is None:
            namespace = state.namespace_of(service)
            value = _use_waypoint(namespace.labels) if namespace is not None else None
        if value is not None and _binds(value, service.namespace, proxy):
            served.append(service)
    return sorted(served, key=lambda s: s.key)


def proxy_resources(
    state: ClusterState, proxy: EnvoyProxy, mesh: MeshConfig | None = None
) -> EnvoyResources:
    """Every resource ``proxy`` is served, given the cluster's state."""
    mesh = mesh or MeshConfig()
    if proxy.kind != "waypoint":
        return EnvoyResources()
    translated = translate_waypoint(state, served_services(state, proxy), mesh)
    return EnvoyResources(
        routes=dict(translated.routes),
        clusters=dict(translated.clusters),
        issues=translated.issues,
    )
