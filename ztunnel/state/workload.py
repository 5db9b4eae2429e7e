"""Workloads and services as ztunnel sees them (Istio's ``istio.workload`` API).

These frozen dataclasses are the domain form of the workload API: the local state
file and, later, the xDS edge translate into them; nothing past that edge sees protos
or raw YAML.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ztunnel.identity.spiffe import SpiffeId

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HBONE_PORT = 15008


class TunnelProtocol(enum.Enum):
    """How a workload receives mesh traffic."""

    NONE = 0
    """Plain TCP: the workload is not in the mesh (or not captured)."""
    HBONE = 1
    """HTTP/2 CONNECT over mTLS to port 15008."""


class WorkloadStatus(enum.Enum):
    """Whether a workload may receive load-balanced traffic."""

    HEALTHY = 0
    UNHEALTHY = 1


class WorkloadType(enum.Enum):
    """The kind of owner the workload's name refers to (used in baggage)."""

    DEPLOYMENT = 0
    CRONJOB = 1
    POD = 2
    JOB = 3


class AppProtocol(enum.Enum):
    """The application protocol declared on a service port."""

    UNKNOWN = 0
    HTTP11 = 1
    HTTP2 = 2
    GRPC = 3
    TCP = 4
    TLS = 5


class LoadBalancingMode(enum.Enum):
    """How strictly routing preferences apply (``LoadBalancing.Mode``)."""

    UNSPECIFIED_MODE = 0
    STRICT = 1
    FAILOVER = 2
    PASSTHROUGH = 3


class HealthPolicy(enum.Enum):
    """Whether unhealthy endpoints may be chosen (``LoadBalancing.HealthPolicy``)."""

    ONLY_HEALTHY = 0
    ALLOW_ALL = 1


@dataclass(frozen=True)
class Port:
    """A service port and the port it maps to on the endpoints."""

    service_port: int
    """The port clients connect to on the service VIP."""
    target_port: int = 0
    """The port on the endpoint; 0 means "take it from the workload's services map"."""
    app_protocol: AppProtocol = AppProtocol.UNKNOWN
    """The declared application protocol, informational at L4."""


@dataclass(frozen=True)
class NamespacedHostname:
    """A service named by namespace and hostname (``NamespacedHostname``)."""

    namespace: str
    hostname: str


@dataclass(frozen=True)
class NetworkAddress:
    """An IP address on a network; ``network`` is empty for the default network."""

    address: IPAddress
    network: str = ""

    def __str__(self) -> str:
        return f"{self.network}/{self.address}"


@dataclass(frozen=True)
class GatewayAddress:
    """Where a waypoint or network gateway is reached (``GatewayAddress``)."""

    destination: NamespacedHostname | NetworkAddress
    """The gateway's service (by hostname) or its address."""
    hbone_mtls_port: int = HBONE_PORT
    """The gateway's HBONE port; istiod always sends 15008 for waypoints."""


@dataclass(frozen=True)
class Locality:
    """Where a workload runs (region, zone, subzone)."""

    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True)
class LoadBalancing:
    """A service's load-balancing settings (``LoadBalancing``)."""

    mode: LoadBalancingMode = LoadBalancingMode.UNSPECIFIED_MODE
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


@dataclass(frozen=True)
class Workload:
    """One workload (a pod), keyed by ``uid`` like Istio's ``Workload`` resource."""

    uid: str
    """The xDS primary key, e.g. ``Kubernetes//Pod/<ns>/<name>``."""
    name: str
    """The pod name."""
    namespace: str
    """The pod's namespace."""
    addresses: tuple[IPAddress, ...] = ()
    """The pod IPs."""
    hostname: str = ""
    """A DNS name used instead of addresses (ServiceEntry workloads)."""
    network: str = ""
    """The network the addresses belong to; empty is the default network."""
    tunnel_protocol: TunnelProtocol = TunnelProtocol.NONE
    """HBONE when the workload is captured by a ztunnel."""
    trust_domain: str = ""
    """The workload's trust domain; empty means ``cluster.local``."""
    service_account: str = ""
    """The workload's service account; empty means ``default``."""
    waypoint: GatewayAddress | None = None
    """The waypoint serving this workload, if any."""
    network_gateway: GatewayAddress | None = None
    """The east-west gateway in front of this workload, if any."""
    node: str = ""
    """The node the workload runs on."""
    canonical_name: str = ""
    """``service.istio.io/canonical-name`` (telemetry ``*_canonical_service``, ``*_app``)."""
    canonical_revision: str = ""
    """``service.istio.io/canonical-revision`` (telemetry ``*_version``)."""
    workload_type: WorkloadType = WorkloadType.POD
    """The kind of ``workload_name``."""
    workload_name: str = ""
    """The owning deployment/job name (telemetry ``*_workload``)."""
    native_tunnel: bool = False
    """The workload speaks HBONE itself (no ztunnel on its side)."""
    services: Mapping[str, tuple[Port, ...]] = field(default_factory=dict, hash=False)
    """Services this workload backs, ``"<ns>/<hostname>"`` -> its per-workload ports."""
    authorization_policies: tuple[str, ...] = ()
    """Selector-bound policies (``"<ns>/<name>"``) that apply to this workload."""
    status: WorkloadStatus = WorkloadStatus.HEALTHY
    """Whether the workload is ready for load-balanced traffic."""
    cluster_id: str = ""
    """The cluster the workload lives in."""
    locality: Locality = field(default_factory=Locality)
    """Region/zone/subzone, for telemetry and locality routing."""
    capacity: int = 1
    """Relative weight in load balancing."""

    @functools.cached_property
    def identity(self) -> SpiffeId:
        """The workload's SPIFFE identity, with Istio's defaults applied.

        Made once per workload object (every new connection asks for it, often twice),
        not validated again each time.
        """
        return SpiffeId.for_workload(self.namespace, self.service_account, self.trust_domain)

    def target_port(self, service_key: str, service_port: int) -> int | None:
        """The target port this workload lists for ``service_port`` of a service, if any."""
        for port in self.services.get(service_key, ()):
            if port.service_port == service_port and port.target_port:
                return port.target_port
        return None


@dataclass(frozen=True)
class Service:
    """A service, keyed by ``"<namespace>/<hostname>"`` like Istio's ``Service``."""

    name: str
    """The service's name."""
    namespace: str
    """The service's namespace."""
    hostname: str
    """Its FQDN, e.g. ``backend.demo.svc.cluster.local``."""
    addresses: tuple[NetworkAddress, ...] = ()
    """The VIPs; empty for a headless service."""
    ports: tuple[Port, ...] = ()
    """Service ports and their target ports."""
    subject_alt_names: tuple[str, ...] = ()
    """Extra identities the endpoints may present (besides their own)."""
    waypoint: GatewayAddress | None = None
    """The waypoint serving this service, if any."""
    load_balancing: LoadBalancing | None = None
    """Load-balancing settings; ``None`` is Istio's default."""

    @property
    def key(self) -> str:
        """The service's primary key, ``"<namespace>/<hostname>"``."""
        return f"{self.namespace}/{self.hostname}"

    def port(self, service_port: int) -> Port | None:
        """The declared port ``service_port``, or ``None``."""
        for port in self.ports:
            if port.service_port == service_port:
                return port
        return None
