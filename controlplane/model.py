"""The cluster's objects as typed, frozen domain values.

Kubernetes and Istio objects enter the system through a source
(:mod:`controlplane.sources`) and are turned into these dataclasses there; nothing past
that edge sees raw dictionaries. The classes keep what ambient mode uses; objects translated
for waypoints and gateways (``VirtualService``, ``DestinationRule``, ``Gateway``,
``HTTPRoute``) keep their validated ``spec`` as a deep-frozen mapping too.
"""

from __future__ import annotations

import enum
from collections.abc import ItemsView, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
"""Enrollment label on namespaces (``ambient``) and pods (``ambient`` or ``none``)."""

SIDECAR_STATUS_ANNOTATION = "sidecar.istio.io/status"
"""Set by Istio's injector on pods that carry a sidecar; such pods are never captured."""

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""On a gateway's pods and Service: the name of the ``Gateway`` they implement."""

DEFAULT_ROOT_NAMESPACE = "istio-system"
"""Istio's default root namespace: policies placed there are mesh-wide."""


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping (labels, selectors, specs kept for later)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        """``dict.get``, without the generic Mapping machinery (hot in selector matching)."""
        return self._data.get(key, default)

    def items(self) -> ItemsView[K, V]:
        """``dict.items`` of the underlying data (a read-only view)."""
        return self._data.items()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def deep_freeze(value: Any) -> Any:
    """Turns parsed YAML/JSON into nested :class:`FrozenMap` and tuples."""
    if isinstance(value, Mapping):
        return FrozenMap({k: deep_freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(deep_freeze(v) for v in value)
    return value


def deep_thaw(value: Any) -> Any:
    """The inverse of :func:`deep_freeze`: plain dicts and lists (for JSON output)."""
    if isinstance(value, Mapping):
        return {k: deep_thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [deep_thaw(v) for v in value]
    return value


EMPTY: FrozenMap[str, str] = FrozenMap()


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes ``matchLabels`` semantics: every selector pair is present in labels."""
    get = labels.get
    return all(get(k) == v for k, v in selector.items())


# --- core Kubernetes objects -------------------------------------------------------------


@dataclass(frozen=True)
class Namespace:
    """A Kubernetes Namespace."""

    name: str
    labels: FrozenMap[str, str] = EMPTY
    """``metadata.labels``; ``istio.io/dataplane-mode=ambient`` enrolls its pods."""
    annotations: FrozenMap[str, str] = EMPTY


@dataclass(frozen=True)
class ContainerPort:
    """One ``spec.containers[].ports[]`` entry: what a named ``targetPort`` resolves to."""

    container_port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    """A Kubernetes Pod, reduced to what the mesh needs."""

    namespace: str
    name: str
    uid: str = ""
    """``metadata.uid`` (may be empty in a folder); the workload uid is built elsewhere."""
    labels: FrozenMap[str, str] = EMPTY
    annotations: FrozenMap[str, str] = EMPTY
    node_name: str = ""
    """``spec.nodeName``: the node whose ztunnel and agent serve this pod."""
    service_account: str = "default"
    """``spec.serviceAccountName`` (Kubernetes defaults it to ``default``)."""
    ip: str | None = None
    """``status.podIP``; None while the pod has no address yet."""
    ips: tuple[str, ...] = ()
    """``status.podIPs`` (the primary address first)."""
    phase: str = ""
    """``status.phase`` (Pending, Running, Succeeded, Failed, Unknown)."""
    ready: bool = False
    """The ``Ready`` condition; without conditions, whether the phase is Running."""
    host_network: bool = False
    """``spec.hostNetwork``: such pods share the node's address and are never captured."""
    ports: tuple[ContainerPort, ...] = ()
    """Every container port of every container, in order."""
    deleting: bool = False
    """``metadata.deletionTimestamp`` is set: the pod is terminating."""
    owner_kind: str = ""
    """Kind of the controlling ``ownerReference`` (ReplicaSet, StatefulSet, Job, ...)."""
    owner_name: str = ""
    """Name of the controlling ``ownerReference``."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    def named_port(self, name: str) -> int | None:
        """The container port called ``name``, as a named ``targetPort`` resolves."""
        for port in self.ports:
            if port.name == name:
                return port.container_port
        return None


def is_enrolled(pod: Pod, namespace: Namespace | None) -> bool:
    """Whether ztunnel captures this pod's traffic (Istio's ambient enrollment rules).

    Enrolled when the namespace is labelled ``istio.io/dataplane-mode=ambient`` or the
    pod itself is, unless the pod opts out with ``istio.io/dataplane-mode=none``. Pods
    without an IP, on the host network, carrying an Istio sidecar, or running a gateway
    (labelled ``gateway.networking.k8s.io/gateway-name``) are never enrolled.
    """
    if not pod.ip or pod.host_network or SIDECAR_STATUS_ANNOTATION in pod.annotations:
        return False
    if GATEWAY_NAME_LABEL in pod.labels:
        return False  # a waypoint's or gateway's pod: Envoy speaks HBONE itself
    pod_mode = pod.labels.get(DATAPLANE_MODE_LABEL)
    if pod_mode == "none":
        return False
    if pod_mode == "ambient":
        return True
    return namespace is not None and namespace.labels.get(DATAPLANE_MODE_LABEL) == "ambient"


@dataclass(frozen=True)
class ServicePort:
    """One ``spec.ports[]`` entry of a Service."""

    port: int
    target_port: int | str
    """A number, or the name of a container port resolved per pod."""
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service."""

    namespace: str
    name: str
    labels: FrozenMap[str, str] = EMPTY
    annotations: FrozenMap[str, str] = EMPTY
    selector: FrozenMap[str, str] | None = None
    """``spec.selector``; None for a service whose endpoints are managed elsewhere."""
    cluster_ips: tuple[str, ...] = ()
    """``spec.clusterIPs`` (or ``clusterIP``); empty for a headless service."""
    type: str = "ClusterIP"
    ports: tuple[ServicePort, ...] = ()
    ip_families: tuple[str, ...] = ()
    """``spec.ipFamilies`` (IPv4, IPv6)."""
    traffic_distribution: str = ""
    """``spec.trafficDistribution`` (or Istio's traffic-distribution annotation)."""
    internal_traffic_policy: str = ""
    """``spec.internalTrafficPolicy``: ``Local`` keeps traffic on the client's node."""
    publish_not_ready_addresses: bool = False
    """``spec.publishNotReadyAddresses``: unready endpoints take traffic too."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        """A service with ``clusterIP: None`` has no VIP."""
        return not self.cluster_ips


@dataclass(frozen=True)
class ServiceAccount:
    """A Kubernetes ServiceAccount."""

    namespace: str
    name: str
    labels: FrozenMap[str, str] = EMPTY
    annotations: FrozenMap[str, str] = EMPTY


# --- Istio security -------------------------------------------------------------------------


class MtlsMode(enum.Enum):
    """``PeerAuthentication.mtls.mode``; values are Istio's enum numbers."""

    UNSET = 0
    DISABLE = 1
    PERMISSIVE = 2
    STRICT = 3


class PolicyScope(enum.Enum):
    """Where a policy applies."""

    MESH = "mesh"
    """In the root namespace without a selector: every workload."""
    NAMESPACE = "namespace"
    """Without a selector: every workload of its namespace."""
    WORKLOAD = "workload"
    """With a selector (or target references): matching workloads of its namespace."""


@dataclass(frozen=True)
class TargetRef:
    """A Gateway API style policy target (``targetRef``/``targetRefs``)."""

    kind: str
    name: str
    group: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class PeerAuthentication:
    """An Istio ``PeerAuthentication`` (security.istio.io v1 or v1beta1)."""

    namespace: str
    name: str
    selector: FrozenMap[str, str] | None = None
    """``spec.selector.matchLabels``; None applies to the whole namespace (or mesh)."""
    mode: MtlsMode = MtlsMode.UNSET
    port_level_mtls: FrozenMap[int, MtlsMode] = field(default_factory=FrozenMap)
    """Per container port overrides; Istio honours them only with a selector."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    def scope(self, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> PolicyScope:
        """Mesh-wide, namespace-wide or for selected workloads."""
        if self.selector is not None:
            return PolicyScope.WORKLOAD
        if self.namespace == root_namespace:
            return PolicyScope.MESH
        return PolicyScope.NAMESPACE


class AuthorizationAction(enum.Enum):
    """``AuthorizationPolicy.action``."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@dataclass(frozen=True)
class Source:
    """``rules[].from[].source``: who is asking. Empty lists mean "not constrained"."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()

    def has_l4_fields(self) -> bool:
        """Whether any field ztunnel can evaluate is set."""
        return any(
            (
                self.principals,
                self.not_principals,
                self.namespaces,
                self.not_namespaces,
                self.service_accounts,
                self.not_service_accounts,
                self.ip_blocks,
                self.not_ip_blocks,
            )
        )


@dataclass(frozen=True)
class Operation:
    """``rules[].to[].operation``: what is asked for."""

    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    """``rules[].when[]``: a key and the values it must (not) have."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


L7_SOURCE_FIELDS = (
    "request_principals",
    "not_request_principals",
    "remote_ip_blocks",
    "not_remote_ip_blocks",
    "trust_domains",
    "not_trust_domains",
)
"""``from.source`` fields ztunnel cannot evaluate (istiod reports them as unsupported)."""

L4_CONDITION_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
)
"""``when`` keys ztunnel can evaluate; every other key needs a waypoint."""


@dataclass(frozen=True)
class Rule:
    """One ``rules[]`` entry: every present part must match."""

    sources: tuple[Source, ...] = ()
    """``from[]``: any of them (empty = any source)."""
    operations: tuple[Operation, ...] = ()
    """``to[]``: any of them (empty = any operation)."""
    conditions: tuple[Condition, ...] = ()
    """``when[]``: all of them."""

    def l7_attributes(self) -> list[str]:
        """Names of the attributes this rule uses that only a waypoint can see."""
        found: list[str] = []
        for op in self.operations:
            for name in ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths"):
                if getattr(op, name) and name not in found:
                    found.append(name)
        for src in self.sources:
            for name in L7_SOURCE_FIELDS:
                if getattr(src, name) and name not in found:
                    found.append(name)
        found += [c.key for c in self.conditions if c.key not in L4_CONDITION_KEYS]
        return found

    def matches_anything_at_l4(self) -> bool:
        """Whether the rule, with its L7 parts left out, can still match at ztunnel.

        Left out, an L7-only entry becomes an empty match, which ztunnel skips: a
        ``to`` or ``from`` list of only such entries, or any L7 condition, makes the
        whole rule match nothing.
        """
        if self.operations and not any(op.ports or op.not_ports for op in self.operations):
            return False
        if self.sources and not any(src.has_l4_fields() for src in self.sources):
            return False
        return all(c.key in L4_CONDITION_KEYS for c in self.conditions)


@dataclass(frozen=True)
class AuthorizationPolicy:
    """An Istio ``AuthorizationPolicy`` (security.istio.io v1 or v1beta1)."""

    namespace: str
    name: str
    action: AuthorizationAction = AuthorizationAction.ALLOW
    selector: FrozenMap[str, str] | None = None
    target_refs: tuple[TargetRef, ...] = ()
    rules: tuple[Rule, ...] = ()
    """No rules: an ALLOW policy allows nothing, a DENY policy denies nothing."""
    provider: str = ""
    """``provider.name`` of a CUSTOM policy."""
    dry_run: bool = False
    """The ``istio.io/dry-run`` annotation: evaluate and log only."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    def scope(self, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> PolicyScope:
        """Mesh-wide, namespace-wide or for selected workloads."""
        if self.selector is not None or self.target_refs:
            return PolicyScope.WORKLOAD
        if self.namespace == root_namespace:
            return PolicyScope.MESH
        return PolicyScope.NAMESPACE


# --- Istio networking, kept for the waypoint work ------------------------------------------


@dataclass(frozen=True)
class VirtualService:
    """An Istio ``VirtualService``; routing is for waypoints, not ztunnel."""

    namespace: str
    name: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    spec: FrozenMap[str, Any] = field(default_factory=FrozenMap)
    """The whole validated ``spec``, deep-frozen."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)


@dataclass(frozen=True)
class DestinationRule:
    """An Istio ``DestinationRule``; traffic policy is for waypoints, not ztunnel."""

    namespace: str
    name: str
    host: str
    subsets: tuple[str, ...] = ()
    """Names of ``spec.subsets[]``."""
    spec: FrozenMap[str, Any] = field(default_factory=FrozenMap)
    """The whole validated ``spec``, deep-frozen."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)


# --- gateways: waypoints and ingress ---------------------------------------------------------

WAYPOINT_CLASS = "istio-waypoint"
"""``gatewayClassName`` of a waypoint."""

INGRESS_CLASS = "istio"
"""``gatewayClassName`` of an Istio-deployed ingress gateway."""

ISTIO_GATEWAY_KIND = "Gateway.networking.istio.io"
"""The kind an Istio ``Gateway`` is known by where it must not be confused with the
Gateway API's ``Gateway`` (object keys, issue references)."""


@dataclass(frozen=True)
class GatewayListener:
    """One ``spec.listeners[]`` entry of a Gateway API ``Gateway``."""

    name: str
    port: int
    protocol: str
    """HTTP, HTTPS, TLS, TCP, UDP or HBONE (Istio's waypoint listener)."""
    hostname: str = ""
    tls: FrozenMap[str, Any] | None = None
    """``tls`` (mode, certificateRefs, options), deep-frozen; None when absent."""
    allowed_routes: FrozenMap[str, Any] | None = None
    """``allowedRoutes`` (namespaces.from, kinds), deep-frozen; None when absent."""


@dataclass(frozen=True)
class GatewayStaticAddress:
    """One ``spec.addresses[]`` entry of a Gateway API ``Gateway``."""

    value: str
    type: str = "IPAddress"


@dataclass(frozen=True)
class Gateway:
    """A Gateway API ``Gateway`` (gateway.networking.k8s.io v1 or v1beta1).

    Of class ``istio-waypoint`` it declares a waypoint; of class ``istio`` an ingress
    gateway. Translation to Envoy reads ``spec`` (kept whole, deep-frozen).
    """

    namespace: str
    name: str
    gateway_class: str
    labels: FrozenMap[str, str] = EMPTY
    annotations: FrozenMap[str, str] = EMPTY
    listeners: tuple[GatewayListener, ...] = ()
    addresses: tuple[GatewayStaticAddress, ...] = ()
    spec: FrozenMap[str, Any] = field(default_factory=FrozenMap)
    """The whole validated ``spec``, deep-frozen."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def is_waypoint(self) -> bool:
        """Whether this Gateway declares a waypoint."""
        return self.gateway_class == WAYPOINT_CLASS


@dataclass(frozen=True)
class IstioServer:
    """One ``spec.servers[]`` entry of an Istio ``Gateway``."""

    port: int
    protocol: str
    """HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS (upper case)."""
    hosts: tuple[str, ...]
    port_name: str = ""
    name: str = ""
    bind: str = ""
    tls: FrozenMap[str, Any] | None = None
    """``tls`` (mode, credentialName, ...), deep-frozen; None when absent."""


@dataclass(frozen=True)
class IstioGateway:
    """An Istio ``Gateway`` (networking.istio.io v1, v1beta1, v1alpha3): ingress."""

    namespace: str
    name: str
    selector: FrozenMap[str, str] = EMPTY
    """``spec.selector``: labels of the gateway pods (``istio: ingressgateway``)."""
    servers: tuple[IstioServer, ...] = ()
    labels: FrozenMap[str, str] = EMPTY
    annotations: FrozenMap[str, str] = EMPTY
    spec: FrozenMap[str, Any] = field(default_factory=FrozenMap)
    """The whole validated ``spec``, deep-frozen."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)


@dataclass(frozen=True)
class ParentRef:
    """One ``spec.parentRefs[]`` entry of a route (a Gateway, or a Service for GAMMA)."""

    name: str
    namespace: str = ""
    """Empty: the route's own namespace."""
    kind: str = "Gateway"
    group: str = "gateway.networking.k8s.io"
    section_name: str = ""
    port: int | None = None


@dataclass(frozen=True)
class HTTPRoute:
    """A Gateway API ``HTTPRoute`` (gateway.networking.k8s.io v1 or v1beta1)."""

    namespace: str
    name: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    labels: FrozenMap[str, str] = EMPTY
    annotations: FrozenMap[str, str] = EMPTY
    spec: FrozenMap[str, Any] = field(default_factory=FrozenMap)
    """The whole validated ``spec`` (rules, matches, filters, backendRefs), deep-frozen."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)


TLS_SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 - a Secret type, not a secret
"""The Secret type of a certificate and key (``tls.crt``, ``tls.key``, optional ``ca.crt``)."""


@dataclass(frozen=True, repr=False)
class Secret:
    """A Kubernetes ``Secret`` holding TLS credentials for a gateway (Istio's
    ``credentialName``): ``kubernetes.io/tls``, or ``Opaque`` with the same keys.

    Only validated PEM is kept (chain parsed, key matching the leaf, leaf not expired);
    other keys, annotations (``last-applied-configuration`` copies the data) and Secrets
    holding no TLS material never enter the model. The repr names the Secret and what
    it holds, never the key.
    """

    namespace: str
    name: str
    certificate_chain: bytes = b""
    """``tls.crt`` (or ``cert``): the leaf first, PEM; empty for a CA-only Secret."""
    private_key: bytes = b""
    """``tls.key`` (or ``key``), PEM; never printed."""
    ca_certificates: bytes = b""
    """``ca.crt`` (or ``cacert``), PEM: client roots for ``tls.mode: MUTUAL``."""
    type: str = TLS_SECRET_TYPE
    not_after: str = ""
    """Expiry of the leaf certificate (ISO 8601 UTC), for status and messages."""
    labels: FrozenMap[str, str] = EMPTY

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def has_certificate(self) -> bool:
        """Whether it holds a certificate and key (not only CA certificates)."""
        return bool(self.certificate_chain and self.private_key)

    def __repr__(self) -> str:
        held = [
            name
            for name, value in (
                ("tls.crt", self.certificate_chain),
                ("tls.key", self.private_key),
                ("ca.crt", self.ca_certificates),
            )
            if value
        ]
        return (
            f"Secret({self.namespace}/{self.name}, type={self.type}, "
            f"holds=[{', '.join(held)}], not_after={self.not_after or '-'})"
        )

    __str__ = __repr__


# --- what a source reports -------------------------------------------------------------------


class Severity(enum.Enum):
    """How bad a :class:`SourceIssue` is."""

    ERROR = "error"
    """The object (or file) was rejected."""
    WARNING = "warning"
    """The object was accepted but is ignored, fully or in part."""


@dataclass(frozen=True)
class SourceIssue:
    """One problem found while reading the cluster's configuration."""

    file: str
    """The file (folder source) or the API resource (Kubernetes source)."""
    line: int
    """Line of the YAML document's start (1-based); 0 when unknown."""
    kind: str
    namespace: str
    name: str
    field: str
    """Dotted path of the offending field (``spec.rules[0].to[0].operation.ports[1]``)."""
    message: str
    severity: Severity = Severity.ERROR

    @classmethod
    def about_file(
        cls, file: str, message: str, *, line: int = 0, severity: Severity = Severity.ERROR
    ) -> SourceIssue:
        """An issue with a whole file, folder or API collection rather than one object."""
        return cls(file, line, "", "", "", "", message, severity)

    @property
    def object_ref(self) -> str:
        """``kind/namespace/name`` (``?`` for a missing name); empty for a whole file."""
        if not self.kind and not self.name:
            return ""
        return "/".join(p for p in (self.kind, self.namespace, self.name or "?") if p)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.field}: {self.message}" if self.field else self.message
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        ref = f"{self.object_ref}: " if self.object_ref else ""
        return f"{where}: {prefix}{ref}{what}"


@dataclass(frozen=True)
class ClusterState:
    """Everything a source knows at one moment; keys are (namespace, name)."""

    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: Mapping[tuple[str, str], Pod] = field(default_factory=dict)
    services: Mapping[tuple[str, str], Service] = field(default_factory=dict)
    service_accounts: Mapping[tuple[str, str], ServiceAccount] = field(default_factory=dict)
    peer_authentications: Mapping[tuple[str, str], PeerAuthentication] = field(default_factory=dict)
    authorization_policies: Mapping[tuple[str, str], AuthorizationPolicy] = field(
        default_factory=dict
    )
    virtual_services: Mapping[tuple[str, str], VirtualService] = field(default_factory=dict)
    destination_rules: Mapping[tuple[str, str], DestinationRule] = field(default_factory=dict)
    gateways: Mapping[tuple[str, str], Gateway] = field(default_factory=dict)
    """Gateway API ``Gateway`` objects (waypoints and ingress)."""
    istio_gateways: Mapping[tuple[str, str], IstioGateway] = field(default_factory=dict)
    """Istio ``Gateway`` objects (ingress)."""
    http_routes: Mapping[tuple[str, str], HTTPRoute] = field(default_factory=dict)
    secrets: Mapping[tuple[str, str], Secret] = field(default_factory=dict)
    """TLS Secrets (gateway certificates); their keys never appear in a repr."""
    errors: tuple[SourceIssue, ...] = ()
    """Objects (or files) rejected; where an earlier good version existed, it stays."""
    warnings: tuple[SourceIssue, ...] = ()
    """Objects accepted but ignored, fully or in part, with the reason."""

    def namespace_of(self, obj: Pod | Service) -> Namespace | None:
        """The Namespace object of a namespaced object, if the source has one."""
        return self.namespaces.get(obj.namespace)

    def same_objects(self, other: ClusterState) -> bool:
        """Whether both hold the same objects (issues aside)."""
        return all(
            getattr(self, name) == getattr(other, name)
            for name in (
                "namespaces",
                "pods",
                "services",
                "service_accounts",
                "peer_authentications",
                "authorization_policies",
                "virtual_services",
                "destination_rules",
                "gateways",
                "istio_gateways",
                "http_routes",
                "secrets",
            )
        )


ClusterObject = (
    Namespace
    | Pod
    | Service
    | ServiceAccount
    | PeerAuthentication
    | AuthorizationPolicy
    | VirtualService
    | DestinationRule
    | Gateway
    | IstioGateway
    | HTTPRoute
    | Secret
)
"""Any domain object a source produces."""
