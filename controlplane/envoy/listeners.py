"""A waypoint's listeners: HBONE in on 15008, one internal filter chain per service port.

- :func:`connect_terminate_listener` (:data:`~.hbone.CONNECT_TERMINATE`, 15008):
  mTLS (TLS 1.3, client certificate required, SDS ``default``/``ROOTCA``), HTTP/2 with
  ``CONNECT``; every tunnel is routed to the :data:`~.hbone.MAIN_INTERNAL` listener.
  Before that, a filter-state step records what the inner listener must know: the
  CONNECT ``:authority`` as its local address, the tunnel's source as its remote
  address, and the peer's and our own SPIFFE URIs, all shared with the upstream.
- :func:`main_internal_listener`: an internal listener whose original-destination
  filter restores the ``:authority`` as the local address, so a filter chain per
  ``VIP:port`` picks the service: an HTTP connection manager with the port's routes
  (RDS) for HTTP ports, a TCP proxy otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

from controlplane.envoy import hbone
from controlplane.envoy.routes import CORS_FILTER, FAULT_FILTER
from controlplane.envoy.tcp import TCP_PROXY_FILTER

HCM_FILTER = "envoy.filters.network.http_connection_manager"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SET_FILTER_STATE = "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


@dataclass(frozen=True)
class ServedPort:
    """One service port a waypoint serves: one filter chain of the inner listener."""

    addresses: tuple[str, ...]
    """The service's VIPs."""
    port: int
    """The service port (the CONNECT ``:authority`` port)."""
    http: bool | None
    """HTTP (routes by :attr:`route`), opaque TCP (:attr:`tcp_proxy`), or None: the
    protocol is detected per connection (HTTP/1.1 and h2c by their first bytes)."""
    route: str
    """The ``RouteConfiguration`` name (RDS)."""
    tcp_proxy: Any
    """The ``TcpProxy`` message of the port, used when not :attr:`http`."""
    http_filters: tuple[Any, ...] = ()
    """``HttpFilter`` messages placed before the fault, CORS and router filters
    (authorization)."""
    network_filters: tuple[Any, ...] = ()
    """Network ``Filter`` messages placed before the TCP proxy (authorization)."""
    access_log: tuple[Any, ...] = ()
    """``AccessLog`` messages of the connection manager."""
    tracing: Any = None
    """The connection manager's ``Tracing``, if any."""


@dataclass(frozen=True)
class ServedWorkload:
    """A pod whose own address the waypoint serves (``waypoint-for`` workload or all):
    every port is passed through to it, over HBONE."""

    address: str
    """The pod's IP."""
    principal: str
    """The SPIFFE URI its HBONE server must present."""
    network_filters: tuple[Any, ...] = ()
    """Network ``Filter`` messages placed before the TCP proxy (authorization)."""

    @property
    def name(self) -> str:
        """The chain's name and stat prefix."""
        return f"inbound-pod|{self.address}"


def _parse(message: Any, config: dict[str, Any]) -> Any:
    return json_format.ParseDict(config, message)


def _format(text: str) -> dict[str, Any]:
    return {"text_format_source": {"inline_string": text}}


def _shared(key: str, text: str, factory: str = "") -> dict[str, Any]:
    value: dict[str, Any] = {
        "object_key": key,
        "format_string": _format(text),
        "shared_with_upstream": "ONCE",
    }
    if factory:
        value["factory_key"] = factory
    return value


def _rds(name: str, *, ads: bool) -> dict[str, Any]:
    source: dict[str, Any] = {"ads": {}, "resource_api_version": "V3"} if ads else {}
    return {"route_config_name": name, "config_source": source}


def _authority(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def served_authorities(served: Iterable[ServedPort]) -> list[str]:
    """Every CONNECT ``:authority`` of a served service (``VIP:port``)."""
    return sorted({_authority(a, p.port) for p in served for a in p.addresses})


def workload_authorities(workloads: Iterable[ServedWorkload]) -> list[str]:
    """Every CONNECT ``:authority`` of a served pod (``podIP:*``, any port)."""
    return sorted({_authority(w.address, 0)[:-1] + "*" for w in workloads})


def _virtual_host(name: str, domains: Sequence[str], cluster: str) -> dict[str, Any]:
    return {
        "name": name,
        "domains": list(domains),
        "routes": [
            {
                "match": {"connect_matcher": {}},
                "route": {
                    "cluster": cluster,
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                },
            }
        ],
    }


def connect_terminate_listener(
    authorities: Sequence[str] | None = None,
    workloads: Sequence[str] = (),
    *,
    address: str = "0.0.0.0",
    port: int = hbone.HBONE_PORT,
    ads: bool = True,
) -> Any:
    """The HBONE listener (see the module's docstring). Tunnels to ``authorities``
    (:func:`served_authorities`; all when None) go to :data:`~.hbone.MAIN_INTERNAL`,
    tunnels to ``workloads`` (:func:`workload_authorities`) to
    :data:`~.hbone.WORKLOAD_INTERNAL`; any other is answered 404 at once."""
    hosts = [
        _virtual_host(
            hbone.CONNECT_TERMINATE,
            ["*"] if authorities is None else list(authorities) or ["-"],
            hbone.MAIN_INTERNAL,
        )
    ]
    if workloads:
        hosts.append(_virtual_host("workloads", workloads, hbone.WORKLOAD_INTERNAL))
    set_state = {
        "on_request_headers": [
            _shared(hbone.ORIGINAL_DST_LOCAL_KEY, "%REQ(:AUTHORITY)%"),
            _shared(hbone.ORIGINAL_DST_REMOTE_KEY, "%DOWNSTREAM_REMOTE_ADDRESS%"),
            _shared(hbone.PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", "envoy.string"),
            _shared(hbone.PEER_BAGGAGE_KEY, "%REQ(baggage)%", "envoy.string"),
            _shared(hbone.LOCAL_PRINCIPAL_KEY, "%DOWNSTREAM_LOCAL_URI_SAN%", "envoy.string"),
        ]
    }
    manager = {
        "@type": HCM,
        "stat_prefix": hbone.CONNECT_TERMINATE,
        "route_config": {"name": hbone.CONNECT_TERMINATE, "virtual_hosts": hosts},
        "http_filters": [
            {
                "name": "envoy.filters.http.set_filter_state",
                "typed_config": {"@type": SET_FILTER_STATE, **set_state},
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
        "http2_protocol_options": {
            "allow_connect": True,
            "initial_stream_window_size": 4 * 1024 * 1024,
            "initial_connection_window_size": 16 * 1024 * 1024,
        },
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "codec_type": "HTTP2",
        "stream_idle_timeout": "0s",
    }
    return _parse(
        listener_pb2.Listener(),
        {
            "name": hbone.CONNECT_TERMINATE,
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [
                {
                    "name": hbone.CONNECT_TERMINATE,
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": hbone.DOWNSTREAM_TLS,
                            "require_client_certificate": True,
                            "common_tls_context": hbone.mesh_tls_context(ads=ads),
                        },
                    },
                    "filters": [{"name": HCM_FILTER, "typed_config": manager}],
                }
            ],
        },
    )


@functools.cache
def _manager_template(ads: bool) -> Any:
    """What every inner HTTP connection manager shares (copied, never changed)."""
    return _parse(
        hcm_pb2.HttpConnectionManager(),
        {
            "rds": _rds("", ads=ads),
            "use_remote_address": False,
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        },
    )


@functools.cache
def _last_filters() -> tuple[Any, ...]:
    """The HTTP filters after authorization: fault, CORS, router (copied, never changed)."""
    return tuple(
        _parse(hcm_pb2.HttpFilter(), {"name": name, "typed_config": {"@type": kind}})
        for name, kind in (
            (FAULT_FILTER, FAULT),
            (CORS_FILTER, CORS),
            ("envoy.filters.http.router", ROUTER),
        )
    )


def _http_manager(served: ServedPort, *, ads: bool) -> Any:
    manager = hcm_pb2.HttpConnectionManager()
    manager.CopyFrom(_manager_template(ads))
    manager.stat_prefix = served.route
    manager.rds.route_config_name = served.route
    manager.http_filters.extend(served.http_filters)
    manager.http_filters.extend(_last_filters())
    manager.access_log.extend(served.access_log)
    if served.tracing is not None:
        manager.tracing.CopyFrom(served.tracing)
    return manager


def _prefix(address: str) -> dict[str, Any]:
    return {"address_prefix": address, "prefix_len": 128 if ":" in address else 32}


DETECTION_TIMEOUT = "5s"
"""How long the inner listener waits for a client's first bytes to detect its protocol;
then (a server-first protocol) the connection is proxied as TCP."""
HTTP_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
)
DETECTED_HTTP = ("http/1.1", "h2c")
"""What the HTTP inspector reports for HTTP traffic (``application_protocols``)."""


def _add_chain(listener: Any, port: ServedPort, http: bool, *, detected: bool, ads: bool) -> None:
    chain = listener.filter_chains.add()
    chain.name = port.route if http else port.tcp_proxy.stat_prefix
    match = chain.filter_chain_match
    match.destination_port.value = port.port
    for address in port.addresses:
        match.prefix_ranges.add(address_prefix=address).prefix_len.value = (
            128 if ":" in address else 32
        )
    if detected and http:
        match.application_protocols.extend(DETECTED_HTTP)
    if http:
        chain.filters.add(name=HCM_FILTER).typed_config.Pack(_http_manager(port, ads=ads))
    else:
        chain.filters.extend(port.network_filters)
        chain.filters.add(name=TCP_PROXY_FILTER).typed_config.Pack(port.tcp_proxy)


def _workload_chain(listener: Any, workload: ServedWorkload) -> None:
    """Any port of the pod: the connection's own local address (``podIP:port``) and the
    pod's principal go with it to :data:`~.hbone.CONNECT_ORIGINATE` through
    :data:`~.hbone.ENCAP`."""
    chain = _parse(
        listener.filter_chains.add(),
        {
            "name": workload.name,
            "filter_chain_match": {"prefix_ranges": [_prefix(workload.address)]},
            "filters": [
                {
                    "name": "envoy.filters.network.set_filter_state",
                    "typed_config": {
                        "@type": hbone.NETWORK_SET_FILTER_STATE,
                        "on_new_connection": [
                            {
                                "object_key": hbone.ORIGINAL_DST_LOCAL_KEY,
                                "format_string": _format("%DOWNSTREAM_LOCAL_ADDRESS%"),
                                "shared_with_upstream": "ONCE",
                            },
                            {
                                "object_key": hbone.UPSTREAM_SAN_KEY,
                                "format_string": _format(workload.principal),
                                "shared_with_upstream": "TRANSITIVE",
                            },
                        ],
                    },
                },
            ],
        },
    )
    chain.filters.extend(workload.network_filters)
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=workload.name, cluster=hbone.ENCAP)
    chain.filters.add(name=TCP_PROXY_FILTER).typed_config.Pack(proxy)


def main_internal_listener(served: Sequence[ServedPort], *, ads: bool = True) -> Any:
    """The inner listener: one filter chain per served ``VIP:port`` (see the module);
    two for a port whose protocol is detected (HTTP first, TCP for everything else)."""
    filters = [
        {
            "name": "envoy.filters.listener.original_dst",
            "typed_config": {"@type": hbone.ORIGINAL_DST_FILTER},
        }
    ]
    detecting = any(port.http is None for port in served)
    if detecting:
        filters.append(
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": {"@type": HTTP_INSPECTOR},
            }
        )
    config: dict[str, Any] = {
        "name": hbone.MAIN_INTERNAL,
        "internal_listener": {},
        "use_original_dst": False,
        "listener_filters": filters,
    }
    if detecting:
        config["listener_filters_timeout"] = DETECTION_TIMEOUT
        config["continue_on_listener_filters_timeout"] = True
    listener = _parse(listener_pb2.Listener(), config)
    for port in served:
        if port.http is None:
            _add_chain(listener, port, True, detected=True, ads=ads)
            _add_chain(listener, port, False, detected=True, ads=ads)
        else:
            _add_chain(listener, port, port.http, detected=False, ads=ads)
    return listener


def workload_internal_listener(workloads: Sequence[ServedWorkload]) -> Any:
    """The inner listener of pod-addressed tunnels: one chain per pod address."""
    listener = _parse(
        listener_pb2.Listener(),
        {
            "name": hbone.WORKLOAD_INTERNAL,
            "internal_listener": {},
            "use_original_dst": False,
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.original_dst",
                    "typed_config": {"@type": hbone.ORIGINAL_DST_FILTER},
                }
            ],
        },
    )
    for workload in workloads:
        _workload_chain(listener, workload)
    return listener


def internal_cluster(listener: str) -> Any:
    """A cluster whose one endpoint is the internal listener ``listener`` (same name)."""
    return _parse(
        cluster_pb2.Cluster(),
        {
            "name": listener,
            "type": "STATIC",
            "connect_timeout": "10s",
            "load_assignment": {
                "cluster_name": listener,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "envoy_internal_address": {"server_listener_name": listener}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
            "transport_socket": hbone.internal_upstream_socket(),
        },
    )


def main_internal_cluster() -> Any:
    """The cluster the HBONE listener hands service tunnels to: the inner listener."""
    return internal_cluster(hbone.MAIN_INTERNAL)
