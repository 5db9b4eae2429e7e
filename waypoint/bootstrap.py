"""The Envoy bootstrap of a waypoint or gateway pod: who it is and where its xDS comes from.

Everything else (listeners, routes, clusters, endpoints, certificates) arrives over ADS
from the control plane (``controlplane.envoy.proxy.proxy_resources`` and its SDS). The
bootstrap only holds:

- ``node``: an Istio-style id and the metadata the control plane identifies the proxy
  by (``NAMESPACE``, ``SERVICE_ACCOUNT``, ``GATEWAY_NAME``, ``PROXY_KIND``,
  ``INSTANCE_IPS``, ``TRACING``); ``node.cluster`` is ``<gateway>.<namespace>``, the
  name Envoy's spans carry;
- ADS (delta by default) over gRPC with TLS to the control plane's 15012, the server verified as
  ``istiod.istio-system.svc`` against the mesh root (as the ztunnels do), the bearer
  token of the node's ztunnel as ``authorization`` initial metadata;
- the admin interface on 127.0.0.1 only, the internal-listener bootstrap extension,
  and the static clusters of xDS and telemetry.

Pure: :func:`render_bootstrap` takes the configuration and the token, returns a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controlplane.envoy import telemetry
from controlplane.envoy.bootstrap import INTERNAL_LISTENER_EXTENSION, as_json
from waypoint.errors import WaypointError

XDS_CLUSTER = "xds-grpc"
"""The static cluster of the control plane's ADS."""
DEFAULT_SERVER_NAME = "istiod.istio-system.svc"
"""The name in the control plane's serving certificate."""
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
    "DownstreamConnectionsConfig"
)
MAX_DOWNSTREAM_CONNECTIONS = 100_000
"""Connections Envoy accepts at once (then it refuses new ones)."""

ProxyKind = Literal["waypoint", "gateway"]


@dataclass(frozen=True)
class WaypointConfig:
    """One waypoint or gateway process (built from ``ambient waypoint run``'s flags)."""

    namespace: str
    """The pod's namespace."""
    service_account: str
    """The pod's service account: the proxy's identity."""
    gateway_name: str
    """The Gateway this pod implements."""
    kind: ProxyKind
    """``waypoint`` or ``gateway``."""
    instance_ips: tuple[str, ...]
    """The pod's IPs (the first one is in the node id)."""
    xds_address: str
    """The control plane's ADS at ``host:port`` (15012)."""
    root_cert: Path
    """The mesh root (``root-cert.pem``): verifies the control plane's certificate."""
    token_file: Path | None = None
    """The node's bearer token (``ambient controlplane node-credential NODE``)."""
    xds_server_name: str = DEFAULT_SERVER_NAME
    """The name verified in the control plane's certificate."""
    admin_port: int = 15000
    """Envoy's admin interface, on 127.0.0.1 only."""
    telemetry_port: int = telemetry.TELEMETRY_PORT
    """Where the exporter beside Envoy takes access logs (127.0.0.1)."""
    collector: tuple[str, int] | None = None
    """The trace collector (host, port); None: no tracing."""
    domain_suffix: str = "cluster.local"
    """The cluster's DNS domain (in the node id)."""
    cluster_id: str = "Kubernetes"
    """Istio's ``CLUSTER_ID`` node metadata."""
    ads_api: Literal["DELTA_GRPC", "GRPC"] = "DELTA_GRPC"
    """Incremental (delta) ADS, or state of the world; the control plane serves both."""

    @property
    def node_id(self) -> str:
        """Istio's node id: ``<kind>~<ip>~<name>.<namespace>~<namespace>.svc.<domain>``
        (Istio says ``router`` for gateways)."""
        kind = "waypoint" if self.kind == "waypoint" else "router"
        ip = self.instance_ips[0] if self.instance_ips else ""
        return (
            f"{kind}~{ip}~{self.gateway_name}.{self.namespace}~"
            f"{self.namespace}.svc.{self.domain_suffix}"
        )


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise WaypointError(
            f"the control plane address {address!r} is not host:port",
            hint="pass --xds-address like 10.0.0.1:15012",
        )
    return host.strip("[]"), int(port)


def xds_cluster(config: WaypointConfig) -> dict[str, Any]:
    """The static cluster of the control plane: HTTP/2 over TLS, server name verified."""
    host, port = _split_address(config.xds_address)
    address = {"socket_address": {"address": host, "port_value": port}}
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC" if telemetry.is_ip(host) else "STRICT_DNS",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS,
                "sni": config.xds_server_name,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": {"filename": str(config.root_cert)},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": config.xds_server_name}}
                        ],
                    },
                },
            },
        },
    }


def node_metadata(config: WaypointConfig) -> dict[str, str]:
    """What the control plane reads to know the proxy (``controlplane.xds.envoy``)."""
    metadata = {
        "NAMESPACE": config.namespace,
        "SERVICE_ACCOUNT": config.service_account,
        "GATEWAY_NAME": config.gateway_name,
        "PROXY_KIND": config.kind,
        "INSTANCE_IPS": ",".join(config.instance_ips),
        "CLUSTER_ID": config.cluster_id,
    }
    if config.collector is not None:
        metadata["TRACING"] = "1"
    return metadata


def render_bootstrap(config: WaypointConfig, token: str | None) -> dict[str, Any]:
    """The bootstrap (see the module's docstring); ``token`` as read from the file."""
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    if token:
        grpc_service["initial_metadata"] = [
            {"key": "authorization", "value": f"Bearer {token}"},
            {"key": "clusterid", "value": config.cluster_id},
        ]
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    clusters = [xds_cluster(config)] + [
        as_json(c)
        for c in telemetry.static_clusters(
            telemetry_port=config.telemetry_port, collector=config.collector
        )
    ]
    return {
        "node": {
            "id": config.node_id,
            "cluster": f"{config.gateway_name}.{config.namespace}",
            "metadata": node_metadata(config),
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": config.admin_port}}
        },
        "bootstrap_extensions": [INTERNAL_LISTENER_EXTENSION],
        "dynamic_resources": {
            "ads_config": {
                "api_type": config.ads_api,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [grpc_service],
            },
            "lds_config": ads_source,
            "cds_config": ads_source,
        },
        "static_resources": {"clusters": clusters},
        "overload_manager": {
            "resource_monitors": [
                {
                    # Envoy's own advice for a proxy facing untrusted downstreams.
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
    }


def read_token(path: Path | None) -> str | None:
    """The bearer token in ``path`` (stripped), or None without a file."""
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as err:
        raise WaypointError(
            f"cannot read the token file {path}: {err.strerror}",
            hint="create it with 'ambient controlplane node-credential NODE'",
        ) from err
