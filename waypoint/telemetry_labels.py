"""From one HTTP access-log record to Istio's request metric labels (sans-IO).

A waypoint or gateway reports each request it proxied with Istio's standard label set
(``reporter="waypoint"``), as Istio's own waypoints do, so Istio's dashboards and
Kiali read them. The labels come, in order of trust, from:

1. what Envoy logged itself: the peer principal (filter state, from the verified
   HBONE client certificate), the upstream cluster ``outbound|port|subset|fqdn``, the
   custom tags holding the cluster's and endpoint's metadata
   (``controlplane.envoy.telemetry``), the response code and flags;
2. a :class:`WorkloadDirectory` (pods by IP and by identity), built from the cluster
   state the exporter reads at start and refreshes;
3. the principal itself (``spiffe://td/ns/NS/sa/SA`` gives the namespace).

Whatever stays unknown is written ``unknown``, as Istio does. Pure: no sockets, no
clock, no protobuf (the record is :class:`RequestRecord`, built at the gRPC edge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from api.baggage import parse_baggage

UNKNOWN = "unknown"
REPORTER = "waypoint"
"""``reporter`` of a waypoint's metrics."""
SOURCE_REPORTER = "source"
"""``reporter`` of an ingress gateway's metrics: Istio's gateways report as the source."""
DEFAULT_CLUSTER_ID = "Kubernetes"
"""Istio's default ``source_cluster``/``destination_cluster`` for a single cluster."""

LABEL_NAMES = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
"""Istio's label set of the HTTP request metrics, in Istio's order."""

LABEL_TAGS = (
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_subset",
    "destination_workload",
    "destination_workload_namespace",
    "destination_app",
    "destination_version",
    "destination_principal",
    "tunnel_destination",
)
"""Every custom tag :func:`destination_labels` reads (the exporter's label cache keys on
these alone: keep the two in step)."""


@dataclass(frozen=True)
class RequestRecord:
    """One proxied HTTP request as Envoy logged it (proto-free)."""

    upstream_cluster: str = ""
    """The cluster the request went to (``outbound|80|v1|backend.demo.svc.cluster.local``)."""
    upstream_host: str = ""
    """The upstream host ``ip:port`` (or an internal address's endpoint id)."""
    downstream_ip: str = ""
    """The client's address as the HCM saw it (the tunnel's source, when restored)."""
    peer_principal: str = ""
    """The SPIFFE URI of the verified HBONE client (filter state), or empty."""
    peer_baggage: str = ""
    """The CONNECT's W3C ``baggage`` (the source ztunnel's word on the calling workload)."""
    response_code: int = 0
    """HTTP status sent downstream; 0 when none was (a reset)."""
    response_flags: tuple[str, ...] = ()
    """Envoy's short response flags (``UO``, ``URX``, ``UF``, ``DC``, ``NR``, ...)."""
    grpc_status: str = ""
    """The ``grpc-status`` trailer (or header), when there was one."""
    content_type: str = ""
    """The request's ``content-type`` (``application/grpc...`` means gRPC)."""
    request_bytes: int = 0
    """Request headers plus body bytes received."""
    response_bytes: int = 0
    """Response headers plus body bytes sent."""
    duration_ms: float = 0.0
    """From the first request byte to the last response byte sent."""
    attempts: int = 1
    """Upstream attempts Envoy made (retries + 1); 0 when none was made."""
    upstream_attempt: bool = False
    """The entry logs one upstream attempt (the router's ``upstream_log``), not a request."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """The custom tags (cluster and endpoint metadata) Envoy logged; empty ones dropped."""


@dataclass(frozen=True)
class WorkloadInfo:
    """What the metrics say about one workload (a pod)."""

    name: str
    """The workload's name (its Deployment's, else the pod's)."""
    namespace: str
    app: str = UNKNOWN
    """Canonical service (``app`` label or the workload name)."""
    version: str = UNKNOWN
    """Canonical revision (``version`` label or ``latest``)."""
    service_account: str = "default"
    ip: str = ""


@dataclass(frozen=True)
class WorkloadDirectory:
    """Workloads by IP and by (namespace, service account), and the trust domain."""

    by_ip: Mapping[str, WorkloadInfo] = field(default_factory=dict)
    by_identity: Mapping[tuple[str, str], tuple[WorkloadInfo, ...]] = field(default_factory=dict)
    trust_domain: str = "cluster.local"
    cluster_id: str = DEFAULT_CLUSTER_ID

    @classmethod
    def of(
        cls,
        workloads: Iterable[WorkloadInfo],
        *,
        trust_domain: str = "cluster.local",
        cluster_id: str = DEFAULT_CLUSTER_ID,
    ) -> WorkloadDirectory:
        """A directory indexing ``workloads``."""
        by_ip: dict[str, WorkloadInfo] = {}
        by_identity: dict[tuple[str, str], list[WorkloadInfo]] = {}
        for info in workloads:
            if info.ip:
                by_ip[info.ip] = info
            by_identity.setdefault((info.namespace, info.service_account), []).append(info)
        return cls(
            by_ip,
            {key: tuple(value) for key, value in by_identity.items()},
            trust_domain,
            cluster_id,
        )

    def by_principal(self, principal: str) -> WorkloadInfo | None:
        """The workload of an identity, when exactly one workload (by name) has it."""
        identity = parse_principal(principal)
        if identity is None:
            return None
        _, namespace, account = identity
        found = self.by_identity.get((namespace, account), ())
        names = {(w.name, w.app, w.version) for w in found}
        return found[0] if len(names) == 1 else None

    def principal_of(self, info: WorkloadInfo) -> str:
        """A workload's SPIFFE URI."""
        return f"spiffe://{self.trust_domain}/ns/{info.namespace}/sa/{info.service_account}"


@dataclass(frozen=True)
class Reporter:
    """Who reports: a waypoint (``reporter="waypoint"``, the source is its HBONE peer) or
    an ingress gateway (``reporter="source"``, the source is the gateway itself, as
    Istio's gateways report)."""

    reporter: str = REPORTER
    workload: WorkloadInfo | None = None
    """The proxy's own workload (used as the source when ``reporter`` is ``source``)."""

    @classmethod
    def for_proxy(cls, kind: str, own: WorkloadInfo | None) -> Reporter:
        """The reporter of a proxy of ``kind`` (``waypoint`` or ``gateway``)."""
        return cls(SOURCE_REPORTER if kind == "gateway" else REPORTER, own)


WAYPOINT = Reporter()


@dataclass(frozen=True)
class ClusterName:
    """The parts of an ``outbound|<port>|<subset>|<fqdn>`` cluster name."""

    port: int
    subset: str
    fqdn: str

    @property
    def service_name(self) -> str:
        """The Service's name: the FQDN's first label."""
        return self.fqdn.split(".", 1)[0]

    @property
    def service_namespace(self) -> str:
        """The Service's namespace, for a ``name.ns.svc...`` FQDN; else empty."""
        parts = self.fqdn.split(".")
        return parts[1] if len(parts) >= 3 and parts[2] == "svc" else ""


def parse_cluster_name(name: str) -> ClusterName | None:
    """``outbound|80|v1|backend.demo.svc.cluster.local`` (also ``inbound-vip|80|http/v1|...``)
    into its parts; None for any other cluster name."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] not in ("outbound", "inbound-vip"):
        return None
    direction, port, subset, fqdn = parts
    if not port.isdigit() or not fqdn:
        return None
    if direction == "inbound-vip":
        _, _, subset = subset.partition("/")
    return ClusterName(int(port), subset, fqdn)


def parse_principal(principal: str) -> tuple[str, str, str] | None:
    """``spiffe://td/ns/NS/sa/SA`` into (trust domain, namespace, service account)."""
    if not principal.startswith("spiffe://"):
        return None
    parts = principal[len("spiffe://") :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        return None
    return parts[0], parts[2], parts[4]


def host_ip(address: str) -> str:
    """The IP of ``ip:port`` / ``[v6]:port`` / a bare IP."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def request_protocol(record: RequestRecord) -> str:
    """``grpc`` for gRPC requests, else ``http``."""
    return "grpc" if record.content_type.startswith("application/grpc") else "http"


def response_flags_label(flags: Iterable[str]) -> str:
    """Envoy's flags joined by commas, ``-`` for none (as ``%RESPONSE_FLAGS%``)."""
    joined = ",".join(flags)
    return joined or "-"


def _value(*candidates: str) -> str:
    for candidate in candidates:
        if candidate:
            return candidate
    return UNKNOWN


def source_labels(record: RequestRecord, directory: WorkloadDirectory) -> dict[str, str]:
    """The ``source_*`` labels: the peer principal only from the verified identity; the
    workload by the client's IP, else by that identity."""
    principal = record.peer_principal
    identity = parse_principal(principal)
    info = directory.by_ip.get(host_ip(record.downstream_ip)) if record.downstream_ip else None
    if (
        info is not None
        and identity is not None
        and identity[1:]
        != (
            info.namespace,
            info.service_account,
        )
    ):
        info = None  # the address says one pod, the certificate another: trust the certificate
    if info is None and principal:
        info = directory.by_principal(principal)
    if info is None and identity is not None and record.peer_baggage:
        info = _baggage_workload(record.peer_baggage, identity, directory)
    namespace = info.namespace if info else (identity[1] if identity else "")
    return {
        "source_workload": _value(info.name if info else ""),
        "source_canonical_service": _value(info.app if info else ""),
        "source_canonical_revision": _value(info.version if info else ""),
        "source_workload_namespace": _value(namespace),
        "source_principal": _value(principal),
        "source_app": _value(info.app if info else ""),
        "source_version": _value(info.version if info else ""),
        "source_cluster": directory.cluster_id if (info or identity) else UNKNOWN,
    }


BAGGAGE_WORKLOAD_KEYS = tuple(
    f"k8s.{kind}.name"
    for kind in ("deployment", "statefulset", "daemonset", "replicaset", "cronjob", "job", "pod")
)
"""Baggage members naming the calling workload, in the order Istio's sources set them."""


def _baggage_workload(
    baggage: str, identity: tuple[str, str, str], directory: WorkloadDirectory
) -> WorkloadInfo | None:
    """The calling workload as the CONNECT's baggage names it (Istio's ``baggage`` peer
    metadata), believed only within the verified identity: the named workload must
    have that identity in the directory, or, unknown there, be in its namespace."""
    members = parse_baggage(baggage)
    name = next((members[k] for k in BAGGAGE_WORKLOAD_KEYS if members.get(k)), "")
    _, namespace, account = identity
    if not name or members.get("k8s.namespace.name", namespace) != namespace:
        return None
    for info in directory.by_identity.get((namespace, account), ()):
        if info.name == name:
            return info
    if any(w.name == name for w in directory.by_ip.values() if w.namespace == namespace):
        return None  # a known workload of another identity: the baggage is wrong
    return WorkloadInfo(
        name=name,
        namespace=namespace,
        app=members.get("service.name") or name,
        version=members.get("service.version") or "latest",
        service_account=account,
    )


def destination_labels(record: RequestRecord, directory: WorkloadDirectory) -> dict[str, str]:
    """The ``destination_*`` labels: the service from the cluster metadata or name; the
    workload from the endpoint metadata, else the endpoint's pod IP (the HBONE target or
    the upstream host) in the directory."""
    tags = record.tags
    cluster = parse_cluster_name(record.upstream_cluster)
    service = _value(tags.get("destination_service", ""), cluster.fqdn if cluster else "")
    service_name = _value(
        tags.get("destination_service_name", ""), cluster.service_name if cluster else ""
    )
    service_namespace = _value(
        tags.get("destination_service_namespace", ""),
        cluster.service_namespace if cluster else "",
    )
    target = tags.get("tunnel_destination", "") or record.upstream_host
    info = directory.by_ip.get(host_ip(target)) if target else None
    subset = tags.get("destination_subset", "") or (cluster.subset if cluster else "")
    workload = _value(tags.get("destination_workload", ""), info.name if info else "")
    app = _value(tags.get("destination_app", ""), info.app if info else "")
    version = _value(tags.get("destination_version", ""), info.version if info else "", subset)
    principal = _value(
        tags.get("destination_principal", ""), directory.principal_of(info) if info else ""
    )
    known = workload != UNKNOWN or service != UNKNOWN
    return {
        "destination_workload": workload,
        "destination_workload_namespace": _value(
            tags.get("destination_workload_namespace", ""),
            info.namespace if info else "",
            service_namespace if workload != UNKNOWN else "",
        ),
        "destination_principal": principal,
        "destination_app": app,
        "destination_version": version,
        "destination_service": service,
        "destination_canonical_service": app,
        "destination_canonical_revision": version,
        "destination_service_name": service_name,
        "destination_service_namespace": service_namespace,
        "destination_cluster": directory.cluster_id if known else UNKNOWN,
    }


def own_source_labels(reporter: Reporter, directory: WorkloadDirectory) -> dict[str, str]:
    """The ``source_*`` labels of a gateway: its own workload."""
    info = reporter.workload
    if info is None:
        return source_labels(RequestRecord(), directory)
    return {
        "source_workload": _value(info.name),
        "source_canonical_service": _value(info.app),
        "source_canonical_revision": _value(info.version),
        "source_workload_namespace": _value(info.namespace),
        "source_principal": directory.principal_of(info),
        "source_app": _value(info.app),
        "source_version": _value(info.version),
        "source_cluster": directory.cluster_id,
    }


def request_labels(
    record: RequestRecord, directory: WorkloadDirectory, reporter: Reporter = WAYPOINT
) -> dict[str, str]:
    """Every label of the request metrics, in :data:`LABEL_NAMES` order."""
    gateway = reporter.reporter == SOURCE_REPORTER
    labels = {
        "reporter": reporter.reporter,
        **(own_source_labels(reporter, directory) if gateway else source_labels(record, directory)),
        **destination_labels(record, directory),
        "request_protocol": request_protocol(record),
        "response_code": str(record.response_code),
        "grpc_response_status": record.grpc_status,
        "response_flags": response_flags_label(record.response_flags),
        "connection_security_policy": (
            "mutual_tls" if record.peer_principal and not gateway else UNKNOWN
        ),
    }
    return {name: labels[name] for name in LABEL_NAMES}
