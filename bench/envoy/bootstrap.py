"""Envoy bootstrap configurations (static resources only), as plain dicts for JSON.

Three roles, all with the admin interface on 127.0.0.1 inside their own namespace:

- ``origin``: the application server of the request/response probes, an HTTP/1.1
  listener answering every request with a fixed body (``direct_response``), so the
  server side is native code and not the figure being measured;
- ``client sidecar``: in the client pod, plaintext listeners on 127.0.0.1, each a TCP
  proxy to the server pod's sidecar over mTLS (TLS 1.3, presents the client identity,
  accepts only the server's SPIFFE id);
- ``server sidecar``: in the server pod, mTLS listeners on the pod IP (client
  certificate required, only the client's SPIFFE id accepted), each a TCP proxy to an
  application port on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN_PORT = 15000
"""Admin port of the sidecars (Istio's), on 127.0.0.1 inside their namespace."""
ORIGIN_ADMIN_PORT = 15100
"""Admin port of the origin, which shares the server pod with a sidecar."""
TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@dataclass(frozen=True)
class TlsFiles:
    """What one side of the tunnel presents and trusts."""

    cert_path: Path
    key_path: Path
    root_path: Path
    peer_spiffe_id: str
    """The only identity accepted from the other side."""


@dataclass(frozen=True)
class Tunnel:
    """One application port carried through the sidecar pair."""

    name: str
    """Short name for stats and clusters (``http``, ``iperf``)."""
    client_port: int
    """Plaintext listener of the client sidecar on 127.0.0.1 (what the client dials)."""
    tunnel_port: int
    """mTLS listener of the server sidecar on the server pod's IP."""
    app_port: int
    """The application's port on 127.0.0.1 in the server pod."""


def _address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _admin(port: int) -> dict[str, Any]:
    return {"address": _address("127.0.0.1", port)}


def _static_cluster(name: str, ip: str, port: int, tls: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(ip, port)}}]}],
        },
    }
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return cluster


def _tcp_proxy(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster},
    }


def _common_tls(tls: TlsFiles) -> dict[str, Any]:
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(tls.cert_path)},
                "private_key": {"filename": str(tls.key_path)},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(tls.root_path)},
            "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": tls.peer_spiffe_id}}
            ],
        },
    }


def origin(*, port: int, body: str, admin_port: int = ORIGIN_ADMIN_PORT) -> dict[str, Any]:
    """An HTTP/1.1 server on 0.0.0.0:``port`` answering ``200 body`` to every request."""
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [
                {
                    "name": "origin",
                    "address": _address("0.0.0.0", port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "origin",
                                        "codec_type": "HTTP1",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": body},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def client_sidecar(
    *,
    server_ip: str,
    tunnels: Sequence[Tunnel],
    tls: TlsFiles,
    sni: str,
    admin_port: int = ADMIN_PORT,
) -> dict[str, Any]:
    """The client pod's proxy: 127.0.0.1:client_port -> mTLS -> server_ip:tunnel_port."""
    upstream_tls = {
        "@type": TLS_CONTEXT + "UpstreamTlsContext",
        "sni": sni,
        "common_tls_context": _common_tls(tls),
    }
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [
                {
                    "name": f"outbound-{t.name}",
                    "address": _address("127.0.0.1", t.client_port),
                    "filter_chains": [
                        {"filters": [_tcp_proxy(f"outbound_{t.name}", f"outbound-{t.name}")]}
                    ],
                }
                for t in tunnels
            ],
            "clusters": [
                _static_cluster(f"outbound-{t.name}", server_ip, t.tunnel_port, upstream_tls)
                for t in tunnels
            ],
        },
    }


def server_sidecar(
    *, listen_ip: str, tunnels: Sequence[Tunnel], tls: TlsFiles, admin_port: int = ADMIN_PORT
) -> dict[str, Any]:
    """The server pod's proxy: listen_ip:tunnel_port (mTLS, client cert required) -> app."""
    downstream_tls = {
        "@type": TLS_CONTEXT + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(tls),
    }
    return {
        "admin": _admin(admin_port),
        "static_resources": {
            "listeners": [
                {
                    "name": f"inbound-{t.name}",
                    "address": _address(listen_ip, t.tunnel_port),
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": downstream_tls,
                            },
                            "filters": [_tcp_proxy(f"inbound_{t.name}", f"inbound-{t.name}")],
                        }
                    ],
                }
                for t in tunnels
            ],
            "clusters": [
                _static_cluster(f"inbound-{t.name}", "127.0.0.1", t.app_port, None) for t in tunnels
            ],
        },
    }


def listener_ports(config: dict[str, Any]) -> list[int]:
    """The ports of a bootstrap's listeners and admin (what readiness waits for)."""
    return [
        int(listener["address"]["socket_address"]["port_value"])
        for listener in config["static_resources"]["listeners"]
    ] + [int(config["admin"]["address"]["socket_address"]["port_value"])]
