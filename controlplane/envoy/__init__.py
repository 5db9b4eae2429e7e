"""Istio's L7 API (VirtualService, DestinationRule) as Envoy xDS resources for waypoints.

Pure translation, no sockets: :func:`translate_waypoint` takes the cluster's state and
the services a waypoint serves and returns ``RouteConfiguration``, ``TcpProxy`` and
``Cluster`` messages (``xds-protos``) named as istiod names them, plus what each
cluster's endpoints are. Serving them over ADS comes later (docs/waypoints.md).
"""

from __future__ import annotations

from controlplane.envoy.errors import L7ConfigError
from controlplane.envoy.names import (
    cluster_name,
    resolve_host,
    route_name,
    service_domains,
    tcp_proxy_name,
)
from controlplane.envoy.parse import parse_destination_rule, parse_virtual_service
from controlplane.envoy.waypoint import ClusterEndpoints, WaypointResources, translate_waypoint

__all__ = [
    "ClusterEndpoints",
    "L7ConfigError",
    "WaypointResources",
    "cluster_name",
    "parse_destination_rule",
    "parse_virtual_service",
    "resolve_host",
    "route_name",
    "service_domains",
    "tcp_proxy_name",
    "translate_waypoint",
]
