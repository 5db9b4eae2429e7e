"""HBONE in a waypoint's Envoy: the names its listeners, clusters and filter state share.

A waypoint terminates HBONE (CONNECT over mTLS on 15008) in :data:`CONNECT_TERMINATE`,
hands each tunnel's stream to an internal listener per served service port, and
originates HBONE to the chosen endpoint through the :data:`CONNECT_ORIGINATE` internal
listener and cluster. What the outer connection knows (the peer's principal, the
tunnel's target) crosses into the inner ones as filter state shared with upstream
under the keys below (Istio's names, so its filters and access logs read them too).
"""

from __future__ import annotations

HBONE_PORT = 15008
"""Where ztunnels and waypoints accept HBONE."""

CONNECT_TERMINATE = "connect_terminate"
"""The listener on 15008 that terminates HBONE."""
CONNECT_ORIGINATE = "connect_originate"
"""The internal listener and the cluster that originate HBONE to an endpoint."""
MAIN_INTERNAL = "main_internal"
"""The internal listener serving every tunnel, one filter chain per service port."""

PEER_PRINCIPAL_KEY = "io.istio.peer_principal"
"""Filter state: the SPIFFE URI of the HBONE client (the outer TLS peer)."""
LOCAL_PRINCIPAL_KEY = "io.istio.local_principal"
"""Filter state: the waypoint's own SPIFFE URI (the outer TLS local certificate)."""
ORIGINAL_DST_LOCAL_KEY = "envoy.filters.listener.original_dst.local_ip"
"""Filter state: the CONNECT target ``ip:port``, the inner listener's local address."""
ORIGINAL_DST_REMOTE_KEY = "envoy.filters.listener.original_dst.remote_ip"
"""Filter state: the tunnel's source ``ip:port``, the inner listener's remote address."""

TUNNEL_METADATA = "tunnel"
"""Endpoint metadata namespace carrying where an endpoint is tunnelled to."""
TUNNEL_DESTINATION = "destination"
"""In :data:`TUNNEL_METADATA`: the target ``podIP:targetPort`` (the CONNECT authority)."""
TUNNEL_ADDRESS = "address"
"""In :data:`TUNNEL_METADATA`: ``podIP:15008``, where the tunnel goes."""

SDS_CERTIFICATE = "default"
"""SDS secret: the proxy's own certificate chain and key."""
SDS_ROOT = "ROOTCA"
"""SDS secret: the mesh's trust anchors (validation context)."""
