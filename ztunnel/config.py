"""ztunnel's process configuration: one frozen object, built at the edge from flags."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ztunnel.errors import ConfigError
from ztunnel.proxy.hbone import HboneSettings
from ztunnel.state.proxy_state import Strategy

WORKER_BALANCES = ("least-loaded", "kernel")
"""Values of ``worker_balance``."""

_PORT_FIELDS = (
    "outbound_port",
    "inbound_plaintext_port",
    "hbone_port",
    "metrics_port",
    "readiness_port",
    "admin_port",
)


@dataclass(frozen=True)
class ZtunnelConfig:
    """Everything one ztunnel process needs to know, documented field by field."""

    node_name: str = ""
    """The node this ztunnel serves; only workloads on it get certificates and inbound."""
    cluster_id: str = "Kubernetes"
    """The cluster id, for telemetry and xDS node metadata."""
    trust_domain: str = "cluster.local"
    """The mesh trust domain; peers from another trust domain are refused."""
    network: str = ""
    """The network of this node's workloads (empty: the default network)."""
    root_namespace: str = "istio-system"
    """Where mesh-wide (GLOBAL) policies live."""

    outbound_port: int = 15001
    """Captured outbound connections (transparent listener)."""
    inbound_plaintext_port: int = 15006
    """Captured plaintext inbound connections (transparent listener)."""
    hbone_port: int = 15008
    """HBONE (mTLS HTTP/2 CONNECT) inbound listener."""
    metrics_port: int = 15020
    """Prometheus ``/metrics`` and ``/stats/prometheus``."""
    readiness_port: int = 15021
    """``/healthz/ready``."""
    admin_port: int = 15000
    """Admin: ``/config_dump``, ``/logging``, ``/quitquitquit``."""
    admin_address: str = "127.0.0.1"
    """Admin listens on localhost only."""
    proxy_address: str = "0.0.0.0"
    """Address the proxy, metrics and readiness listeners bind (all, in the node namespace)."""
    transparent: bool = True
    """Transparent listeners and source-preserving upstream sockets (needs CAP_NET_ADMIN)."""
    preserve_source_ip: bool = True
    """Connect to local pods from the caller's pod IP (with ``transparent``). Off, ztunnel
    connects from the node's own address, as a SNAT proxy would: for networks whose
    anti-spoofing drops packets carrying a pod's address from the node. The application
    then sees the node's address instead of its caller's."""

    state_file: Path | None = None
    """Local mode: workloads, services and policies from this YAML file instead of xDS."""
    cluster_folder: Path | None = None
    """Local mode: Kubernetes/Istio YAML (pods, services, policies) translated as istiod would."""
    ca_dir: Path | None = None
    """Local mode: the local CA's root key and certificate (created if missing)."""
    certificate_ttl: dt.timedelta = dt.timedelta(hours=24)
    """Requested workload certificate lifetime."""
    xds_address: str = ""
    """Control-plane mode: delta xDS from this ``host:port`` (gRPC over TLS, e.g.
    ``istiod.istio-system.svc:15012``) instead of a local state."""
    ca_address: str = ""
    """The CA's ``host:port`` (empty: ``xds_address``; both empty: the local CA)."""
    xds_root_cert: Path | None = None
    """The mesh root the control plane's serving certificate chains to (its ``root-cert.pem``);
    also the root workload certificates are checked against."""
    auth_token_file: Path | None = None
    """Bearer token for xDS and the CA: a node credential (``ambient controlplane
    node-credential``) or a projected service-account token; re-read on every connection."""
    xds_server_name: str = ""
    """The name to verify in the control plane's certificate if not the address's host."""

    hbone: HboneSettings = field(default_factory=HboneSettings)
    """HTTP/2 windows, frame size, stream and header limits of HBONE connections."""
    pool_max_streams: int = 100
    """Tunnels per pooled outbound HBONE connection before another is opened."""
    pool_idle_timeout: float = 300.0
    """Seconds an unused pooled connection stays open."""
    connect_timeout: float = 10.0
    """Seconds to wait for an upstream TCP connect (then 503 / CONNECT flag)."""
    load_balancing: Strategy = Strategy.ROUND_ROBIN
    """How service endpoints are chosen."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes sharing the listeners (SO_REUSEPORT)."""
    worker_balance: str = "least-loaded"
    """How workers share new connections: ``least-loaded`` (the eBPF program of
    :mod:`ztunnel.steering`) or ``kernel`` (the kernel's hash of the 4-tuple)."""
    drain_timeout: float = 5.0
    """Seconds ``/quitquitquit`` lets open connections finish."""
    log_level: str = "info"
    """Initial log level (error, warn, info, debug, trace, off)."""
    access_log_format: str = "text"
    """Access records as ``text`` or ``json``."""

    def __post_init__(self) -> None:
        ports = {name: getattr(self, name) for name in _PORT_FIELDS}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ConfigError(f"{name}={port} is not a TCP port", hint="use 1-65535")
        if len(set(ports.values())) != len(ports):
            raise ConfigError(
                "two ztunnel listeners share a port",
                hint=", ".join(f"{k}={v}" for k, v in ports.items()),
            )
        if self.pool_max_streams < 1 or self.workers < 1:
            raise ConfigError("pool_max_streams and workers must be at least 1")
        if self.worker_balance not in WORKER_BALANCES:
            raise ConfigError(
                f"worker_balance={self.worker_balance!r} is not known",
                hint=f"use one of {', '.join(WORKER_BALANCES)}",
            )
        if self.pool_idle_timeout <= 0 or self.connect_timeout <= 0 or self.drain_timeout < 0:
            raise ConfigError("timeouts must be positive")
        if self.state_file is not None and self.cluster_folder is not None:
            raise ConfigError(
                "state_file and cluster_folder are exclusive", hint="give one source of state"
            )
        if self.xds_address and (self.state_file is not None or self.cluster_folder is not None):
            raise ConfigError(
                "xds_address and a local state are exclusive", hint="give one source of state"
            )
        if (self.xds_address or self.ca_address) and self.xds_root_cert is None:
            raise ConfigError(
                "a control plane address needs xds_root_cert",
                hint="pass the control plane's root-cert.pem (--xds-root-cert)",
            )
        if self.access_log_format not in ("text", "json"):
            raise ConfigError(
                f"access_log_format={self.access_log_format!r}", hint="use text or json"
            )
        if self.log_level not in ("error", "warn", "info", "debug", "trace", "off"):
            raise ConfigError(
                f"log_level={self.log_level!r}", hint="error, warn, info, debug, trace or off"
            )

    def describe(self) -> dict[str, object]:
        """The configuration as plain values (for ``/config_dump``'s ``config``)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, HboneSettings):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            elif isinstance(value, dt.timedelta):
                value = value.total_seconds()
            elif isinstance(value, Strategy):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out
