"""Envoy's own xDS resource types, as the control plane serves them to waypoints and gateways.

The order is the one Envoy's ADS needs (and istiod pushes in): clusters before their
endpoints, listeners before their routes, so a new listener never points at a cluster
Envoy has not seen; secrets last (Envoy asks for them by name once a cluster or
listener refers to them).
"""

from __future__ import annotations

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105

PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
"""The order pushes of several types leave in (istiod's ``PushOrder``)."""
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
"""Types Envoy subscribes to as a whole; the others it asks for by name."""
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
"""Type URL -> the discovery service's short name (metrics labels, logs)."""

DEFAULT_SECRET = "default"  # noqa: S105 - a resource name
"""The SDS name of a proxy's own certificate and key (Istio's name)."""
ROOT_SECRET = "ROOTCA"  # noqa: S105 - a resource name
"""The SDS name of the mesh's trust roots (Istio's name)."""


def is_envoy_type(type_url: str) -> bool:
    """Whether ``type_url`` is one of Envoy's own types (not the workload API)."""
    return type_url in SHORT_NAMES


def short_name(type_url: str) -> str:
    """``CDS``, ``EDS``...; the last part of the URL for any other type."""
    return SHORT_NAMES.get(type_url) or type_url.rsplit(".", 1)[-1]


def push_rank(type_url: str) -> int:
    """Sort key putting Envoy types in :data:`PUSH_ORDER` (other types after, stably)."""
    try:
        return PUSH_ORDER.index(type_url)
    except ValueError:
        return len(PUSH_ORDER)
