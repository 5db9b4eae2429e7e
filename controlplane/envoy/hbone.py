"""HBONE in a waypoint's Envoy: the names its listeners, clusters and filter state share.

A waypoint terminates HBONE (CONNECT over mTLS on 15008) in :data:`CONNECT_TERMINATE`,
hands each tunnel's stream to an internal listener per served service port, and
originates HBONE to the chosen endpoint through the :data:`CONNECT_ORIGINATE` internal
listener and cluster. What the outer connection knows (the peer's principal, the
tunnel's target) crosses into the inner ones as filter state shared with upstream
under the keys below (Istio's names, so its filters and access logs read them too).
"""

from __future__ import annotations

import functools
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.network.set_filter_state.v3 import (  # noqa: F401
    set_filter_state_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.internal_upstream.v3 import (  # noqa: F401
    internal_upstream_pb2,
)
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

HBONE_PORT = 15008
"""Where ztunnels and waypoints accept HBONE."""

CONNECT_TERMINATE = "connect_terminate"
"""The listener on 15008 that terminates HBONE."""
CONNECT_ORIGINATE = "connect_originate"
"""The internal listener and the cluster that originate HBONE to an endpoint."""
MAIN_INTERNAL = "main_internal"
"""The internal listener serving every tunnel, one filter chain per service port."""
WORKLOAD_INTERNAL = "workload_internal"
"""The internal listener serving tunnels addressed to a pod (``waypoint-for`` workload
or all): one filter chain per pod address, any port."""
ENCAP = "encap"
"""The cluster that hands a connection to :data:`CONNECT_ORIGINATE` as it is: its target
is the connection's own local address (workload-addressed traffic)."""

PEER_PRINCIPAL_KEY = "io.istio.peer_principal"
"""Filter state: the SPIFFE URI of the HBONE client (the outer TLS peer)."""
PEER_BAGGAGE_KEY = "io.istio.peer_baggage"
"""Filter state: the CONNECT's W3C ``baggage`` (the source ztunnel's description of the
calling workload), for telemetry labels only; never for policy."""
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
TUNNEL_PRINCIPAL = "principal"
"""In :data:`TUNNEL_METADATA`: the SPIFFE URI the endpoint's HBONE server must present."""
UPSTREAM_SAN_KEY = "envoy.network.upstream_subject_alt_names"
"""Filter state Envoy checks the upstream certificate's SANs against (per connection)."""

SDS_CERTIFICATE = "default"
"""SDS secret: the proxy's own certificate chain and key."""
SDS_ROOT = "ROOTCA"
"""SDS secret: the mesh's trust anchors (validation context)."""

INTERNAL_UPSTREAM = (
    "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3."
    "InternalUpstreamTransport"
)
RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
NETWORK_SET_FILTER_STATE = (
    "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
)
ORIGINAL_DST_FILTER = (
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
)
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ORIGINAL_DST_METADATA = "envoy.filters.listener.original_dst"
"""Metadata namespace the original-destination listener filter reads on an internal
listener (field ``local``: the ``ip:port`` the connection is for)."""

# Istio's HBONE window sizes: large, so one tunnel is never starved by the others.
_STREAM_WINDOW = 4 * 1024 * 1024
_CONNECTION_WINDOW = 16 * 1024 * 1024


def _parse(message: Any, config: dict[str, Any]) -> Any:
    return json_format.ParseDict(config, message)


def sds_secret(name: str, *, ads: bool = True) -> dict[str, Any]:
    """An SDS secret reference: fetched over ADS, or a static secret of the bootstrap."""
    if not ads:
        return {"name": name}
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def mesh_tls_context(*, ads: bool = True) -> dict[str, Any]:
    """The ``CommonTlsContext`` of HBONE: TLS 1.3, ALPN h2, the proxy's certificate
    (:data:`SDS_CERTIFICATE`) and the mesh roots (:data:`SDS_ROOT`).

    Peers are verified against the mesh roots only: which identity is acceptable is
    decided by policy, after the handshake (as ztunnel does).
    """
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [sds_secret(SDS_CERTIFICATE, ads=ads)],
        "validation_context_sds_secret_config": sds_secret(SDS_ROOT, ads=ads),
    }


def internal_upstream_socket() -> dict[str, Any]:
    """The transport socket of a cluster whose endpoints are internal listeners.

    Shared filter state crosses with the connection; the host's
    :data:`ORIGINAL_DST_METADATA` and :data:`TUNNEL_METADATA` become the internal
    connection's dynamic metadata, where :data:`CONNECT_ORIGINATE` reads its target.
    """
    return {
        "name": "envoy.transport_sockets.internal_upstream",
        "typed_config": {
            "@type": INTERNAL_UPSTREAM,
            "passthrough_metadata": [
                {"kind": {"host": {}}, "name": ORIGINAL_DST_METADATA},
                {"kind": {"host": {}}, "name": TUNNEL_METADATA},
            ],
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {"@type": RAW_BUFFER},
            },
        },
    }


def through_hbone(cluster: Any) -> Any:
    """``cluster`` (EDS, endpoints from :func:`tunnel_endpoint`) made to carry its
    connections into :data:`CONNECT_ORIGINATE`; returns a modified copy."""
    out = type(cluster)()
    out.CopyFrom(cluster)
    out.transport_socket.CopyFrom(_internal_upstream_message())
    return out


@functools.cache
def _internal_upstream_message() -> Any:
    """:func:`internal_upstream_socket` as a message (copied, never changed)."""
    return _parse(base_pb2.TransportSocket(), internal_upstream_socket())


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def tunnel_lb_endpoint(
    ip: str,
    port: int,
    *,
    principal: str = "",
    hbone_port: int = HBONE_PORT,
    metadata: Any = None,
    via: str = "",
) -> Any:
    """An ``LbEndpoint`` reached through an HBONE tunnel to ``ip:hbone_port`` with
    ``:authority ip:port``; with a ``principal``, the tunnel is opened only to a server
    presenting that SPIFFE identity. ``metadata`` (a ``Metadata``) is merged in.

    ``via``: the tunnel goes to ``via:hbone_port`` instead, still with ``:authority
    ip:port`` (a waypoint pod, for a service VIP it serves: ``ingress-use-waypoint``)."""
    target = _address(ip, port)
    lb = endpoint_components_pb2.LbEndpoint()
    internal = lb.endpoint.address.envoy_internal_address
    internal.server_listener_name = CONNECT_ORIGINATE
    internal.endpoint_id = f"{target}@{via}" if via else target
    filter_metadata = lb.metadata.filter_metadata
    filter_metadata[ORIGINAL_DST_METADATA].update({"local": target})
    tunnel = {TUNNEL_DESTINATION: target, TUNNEL_ADDRESS: _address(via or ip, hbone_port)}
    if principal:
        tunnel[TUNNEL_PRINCIPAL] = principal
    filter_metadata[TUNNEL_METADATA].update(tunnel)
    if metadata is not None:
        lb.metadata.MergeFrom(metadata)
    return lb


def tunnel_endpoint(
    ip: str, port: int, *, principal: str = "", hbone_port: int = HBONE_PORT
) -> dict[str, Any]:
    """:func:`tunnel_lb_endpoint` as Envoy's JSON."""
    out: dict[str, Any] = json_format.MessageToDict(
        tunnel_lb_endpoint(ip, port, principal=principal, hbone_port=hbone_port),
        preserving_proto_field_name=True,
    )
    return out


def load_assignment(cluster: str, endpoints: list[Any]) -> Any:
    """A ``ClusterLoadAssignment`` of ``endpoints`` (``LbEndpoint`` messages from
    :func:`tunnel_lb_endpoint`, or their JSON from :func:`tunnel_endpoint`)."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster)
    if endpoints:
        group = assignment.endpoints.add()
        for endpoint in endpoints:
            if isinstance(endpoint, dict):
                _parse(group.lb_endpoints.add(), endpoint)
            else:
                group.lb_endpoints.append(endpoint)
    return assignment


def connect_originate_listener() -> Any:
    """The internal listener that opens one HBONE tunnel per connection.

    Its original-destination filter takes the target ``podIP:port`` from the
    endpoint's metadata as the connection's local address; the TCP proxy sends
    ``CONNECT`` with that as ``:authority`` through :func:`connect_originate_cluster`.
    The endpoint's expected identity (:data:`TUNNEL_PRINCIPAL`) becomes the SAN the
    upstream certificate must carry (:data:`UPSTREAM_SAN_KEY`); without one, any
    certificate of the mesh's roots is accepted.
    """
    return _parse(
        listener_pb2.Listener(),
        {
            "name": CONNECT_ORIGINATE,
            "internal_listener": {},
            "use_original_dst": False,
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.original_dst",
                    "typed_config": {"@type": ORIGINAL_DST_FILTER},
                }
            ],
            "filter_chains": [
                {
                    "name": CONNECT_ORIGINATE,
                    "filters": [
                        {
                            "name": "envoy.filters.network.set_filter_state",
                            "typed_config": {
                                "@type": NETWORK_SET_FILTER_STATE,
                                "on_new_connection": [
                                    {
                                        "object_key": UPSTREAM_SAN_KEY,
                                        "format_string": {
                                            "text_format_source": {
                                                "inline_string": "%DYNAMIC_METADATA("
                                                f"{TUNNEL_METADATA}:{TUNNEL_PRINCIPAL})%"
                                            },
                                            # absent: empty (skipped), not "-"
                                            "omit_empty_values": True,
                                        },
                                        "shared_with_upstream": "ONCE",
                                        "skip_if_empty": True,
                                    }
                                ],
                            },
                        },
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {
                                "@type": TCP_PROXY,
                                "stat_prefix": CONNECT_ORIGINATE,
                                "cluster": CONNECT_ORIGINATE,
                                "tunneling_config": {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"},
                            },
                        },
                    ],
                }
            ],
        },
    )


def connect_originate_cluster(*, ads: bool = True, connect_timeout: float = 10.0) -> Any:
    """The cluster of every tunnel: the endpoint's :data:`TUNNEL_ADDRESS` (else the
    target's own address), port 15008, mTLS, HTTP/2."""
    return _parse(
        cluster_pb2.Cluster(),
        {
            "name": CONNECT_ORIGINATE,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": f"{connect_timeout}s",
            "cleanup_interval": "60s",
            # Where the tunnel goes: the endpoint's tunnel address (passed through as
            # the connection's metadata), else the target's own address; port 15008.
            "original_dst_lb_config": {
                "upstream_port_override": HBONE_PORT,
                "metadata_key": {
                    "key": TUNNEL_METADATA,
                    "path": [{"key": TUNNEL_ADDRESS}],
                },
            },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": UPSTREAM_TLS,
                    "common_tls_context": mesh_tls_context(ads=ads),
                },
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_PROTOCOL_OPTIONS,
                    "explicit_http_config": {
                        "http2_protocol_options": {
                            "allow_connect": True,
                            "initial_stream_window_size": _STREAM_WINDOW,
                            "initial_connection_window_size": _CONNECTION_WINDOW,
                        }
                    },
                }
            },
        },
    )


def encap_cluster() -> Any:
    """:data:`ENCAP`: one internal endpoint, :data:`CONNECT_ORIGINATE`; the target comes
    from filter state (:data:`ORIGINAL_DST_LOCAL_KEY`) the sending chain shares."""
    return _parse(
        cluster_pb2.Cluster(),
        {
            "name": ENCAP,
            "type": "STATIC",
            "connect_timeout": "10s",
            "load_assignment": {
                "cluster_name": ENCAP,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "envoy_internal_address": {
                                            "server_listener_name": CONNECT_ORIGINATE
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
            "transport_socket": internal_upstream_socket(),
        },
    )
