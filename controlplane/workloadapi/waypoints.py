"""Waypoint binding: which waypoint serves a Service or a workload, as istiod decides it.

A waypoint is a Gateway API ``Gateway`` of class ``istio-waypoint``. Objects opt in
with the label ``istio.io/use-waypoint`` (``W``, ``NS/W``, or ``#none`` to opt out)
on a Namespace, Service or Pod, optionally with ``istio.io/use-waypoint-namespace``
naming the waypoint's namespace. The most specific label wins: a Service's own label
over its namespace's, a Pod's own label over its namespace's (a Service's label
binds traffic addressed to the Service, a Pod's traffic addressed to the pod).
The waypoint's ``istio.io/waypoint-for`` label (``service`` by default,
``workload``, ``all``, ``none``) says which of the two kinds of traffic it takes.
A waypoint's address is the ClusterIP of its Service: a Service in its namespace
labelled ``gateway.networking.k8s.io/gateway-name: W``, else the Service named W.

Everything here is pure: a :class:`~controlplane.model.ClusterState` in, bindings and
the reasons for missing ones out.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.messages import security as sec
from api.messages import workload as wl
from controlplane.model import (
    GATEWAY_NAME_LABEL,
    INGRESS_CLASS,
    ClusterState,
    Gateway,
    Namespace,
    Pod,
    Service,
    Severity,
    SourceIssue,
    selector_matches,
)
from controlplane.workloadapi.mesh import MeshConfig

USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
"""On a Namespace, Service or Pod: the waypoint its traffic goes through."""
USE_WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"
"""Beside ``istio.io/use-waypoint``: the namespace of that waypoint (default: own)."""
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
"""On a waypoint ``Gateway``: which traffic it takes (service, workload, all, none)."""
INGRESS_USE_WAYPOINT_LABEL = "istio.io/ingress-use-waypoint"
"""On a Service or its Namespace (``"true"``): ingress gateways send to its waypoint."""
OPT_OUT = "#none"
"""``istio.io/use-waypoint: '#none'``: no waypoint, whatever the namespace says."""
WAYPOINT_HBONE_PORT = 15008
"""istiod always sends ``hbone_mtls_port: 15008`` for waypoints."""
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class TrafficType(enum.Enum):
    """``istio.io/waypoint-for``: the traffic a waypoint takes."""

    SERVICE = "service"
    WORKLOAD = "workload"
    ALL = "all"
    NONE = "none"

    def takes(self, kind: TrafficType) -> bool:
        """Whether a waypoint of this type takes traffic addressed to a ``kind``."""
        return self is TrafficType.ALL or self is kind


@dataclass(frozen=True)
class Waypoint:
    """A waypoint Gateway, with what binding needs to know about it."""

    namespace: str
    name: str
    traffic_type: TrafficType = TrafficType.SERVICE
    address: str | None = None
    """The ClusterIP of its Service; None while it has none (not usable yet)."""
    gateway: Gateway | None = None
    pod_service_accounts: tuple[str, ...] = ()
    """Service accounts of its running pods (sorted; empty before any runs)."""

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def service_account(self) -> str:
        """Istio runs a waypoint ``W`` with the service account ``W``."""
        return self.name

    @property
    def service_accounts(self) -> tuple[str, ...]:
        """Its pods' service accounts, or Istio's ``W`` while none runs."""
        return self.pod_service_accounts or (self.service_account,)

    def identity(self, mesh: MeshConfig) -> str:
        """The waypoint's SPIFFE identity (by Istio's convention, service account ``W``)."""
        return f"spiffe://{mesh.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def principals(self, mesh: MeshConfig) -> tuple[str, ...]:
        """Its identities as authorization principals (``<td>/ns/<ns>/sa/<sa>``)."""
        return tuple(
            f"{mesh.trust_domain}/ns/{self.namespace}/sa/{sa}" for sa in self.service_accounts
        )

    def allows_namespace(self, namespace: Namespace | None, name: str) -> bool:
        """Whether objects of namespace ``name`` may use it (its listeners' ``allowedRoutes``).

        Without ``allowedRoutes`` only its own namespace may (Gateway API's ``Same``).
        """
        if name == self.namespace:
            return True
        listeners = self.gateway.listeners if self.gateway is not None else ()
        for listener in listeners:
            allowed: Mapping[str, Any] = listener.allowed_routes or {}
            namespaces: Mapping[str, Any] = allowed.get("namespaces") or {}
            source = namespaces.get("from", "Same")
            if source == "All":
                return True
            if source == "Selector":
                labels = dict(namespace.labels) if namespace is not None else {}
                labels.setdefault(NAMESPACE_NAME_LABEL, name)
                selector: Mapping[str, Any] = namespaces.get("selector") or {}
                match_labels = selector.get("matchLabels") or {}
                if (
                    isinstance(match_labels, Mapping)
                    and selector_matches(match_labels, labels)
                    and _expressions_match(selector.get("matchExpressions") or (), labels)
                ):
                    return True
        return False


def _expressions_match(expressions: Any, labels: Mapping[str, str]) -> bool:
    """Kubernetes ``matchExpressions`` (In, NotIn, Exists, DoesNotExist), all of them;
    anything malformed or unknown matches nothing (a selector never widens by mistake)."""
    if not isinstance(expressions, (list, tuple)):
        return False
    for expression in expressions:
        if not isinstance(expression, Mapping):
            return False
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or ()
        if not isinstance(key, str) or not isinstance(values, (list, tuple)):
            return False
        if operator == "In":
            matched = key in labels and labels[key] in values
        elif operator == "NotIn":
            matched = labels.get(key) not in values
        elif operator == "Exists":
            matched = key in labels
        elif operator == "DoesNotExist":
            matched = key not in labels
        else:
            return False
        if not matched:
            return False
    return True


@dataclass(frozen=True)
class Binding:
    """The outcome of resolving one object's waypoint."""

    waypoint: Waypoint | None = None
    """The waypoint serving it; None when it has none."""
    requested: tuple[str, str] | None = None
    """(namespace, name) the labels asked for, if any (also when it cannot be used)."""
    label_on: str = ""
    """Where the deciding label was: ``pod``, ``service`` or ``namespace`` ('' for none)."""
    problem: str = ""
    """Why the requested waypoint is not used ('' when it is, or none was asked for)."""


NO_BINDING = Binding()


def requested_waypoint(labels: Mapping[str, str], own_namespace: str) -> tuple[str, str] | None:
    """The (namespace, name) an object's labels ask for; None when they ask for none.

    Raises nothing: ``#none`` and an absent label both give None (the caller tells them
    apart with :func:`has_waypoint_label`).
    """
    value = labels.get(USE_WAYPOINT_LABEL)
    if not value or value == OPT_OUT:
        return None
    if "/" in value:
        namespace, _, name = value.partition("/")
        return (namespace, name)
    return (labels.get(USE_WAYPOINT_NAMESPACE_LABEL) or own_namespace, value)


def has_waypoint_label(labels: Mapping[str, str]) -> bool:
    """Whether the object decides for itself (a waypoint, or ``#none``)."""
    return bool(labels.get(USE_WAYPOINT_LABEL))


def traffic_type(gateway: Gateway) -> TrafficType:
    """A waypoint Gateway's ``istio.io/waypoint-for`` (``service`` when absent or unknown)."""
    value = gateway.labels.get(WAYPOINT_FOR_LABEL, "service")
    try:
        return TrafficType(value)
    except ValueError:
        return TrafficType.SERVICE


def waypoint_service(
    state: ClusterState,
    gateway: Gateway,
    labelled: Mapping[tuple[str, str], list[Service]] | None = None,
) -> Service | None:
    """The Service fronting a waypoint: labelled with its gateway name, else named after it.

    ``labelled`` is :func:`labelled_services` of the state, when the caller has it.
    """
    found = (labelled if labelled is not None else labelled_services(state)).get(gateway.key)
    if found:
        return min(found, key=lambda s: s.name)
    return state.services.get(gateway.key)


def labelled_services(state: ClusterState) -> dict[tuple[str, str], list[Service]]:
    """Services labelled ``gateway.networking.k8s.io/gateway-name``, by (namespace, name)."""
    out: dict[tuple[str, str], list[Service]] = {}
    for service in state.services.values():
        name = service.labels.get(GATEWAY_NAME_LABEL)
        if name is not None:
            out.setdefault((service.namespace, name), []).append(service)
    return out


def is_waypoint_object(labels: Mapping[str, str]) -> bool:
    """A gateway's own pod or Service (it never goes through a waypoint itself)."""
    return GATEWAY_NAME_LABEL in labels


class WaypointIndex:
    """Every waypoint of a state, and binding resolution against them."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.waypoints: dict[tuple[str, str], Waypoint] = {}
        gateways = [g for g in state.gateways.values() if g.is_waypoint]
        labelled = labelled_services(state) if gateways else {}
        accounts: dict[tuple[str, str], set[str]] = {}
        if gateways:
            for pod in state.pods.values():
                name = pod.labels.get(GATEWAY_NAME_LABEL)
                if name is not None:
                    accounts.setdefault((pod.namespace, name), set()).add(pod.service_account)
        for gateway in gateways:
            service = waypoint_service(state, gateway, labelled)
            address = (
                service.cluster_ips[0] if service is not None and service.cluster_ips else None
            )
            self.waypoints[gateway.key] = Waypoint(
                gateway.namespace,
                gateway.name,
                traffic_type(gateway),
                address,
                gateway,
                tuple(sorted(accounts.get(gateway.key, ()))),
            )

    def is_waypoint_pod(self, pod: Pod) -> bool:
        """Whether a pod runs a waypoint (HBONE, never captured)."""
        name = pod.labels.get(GATEWAY_NAME_LABEL)
        return name is not None and (pod.namespace, name) in self.waypoints

    def for_service(self, service: Service) -> Binding:
        """The waypoint of traffic addressed to a Service (its label, else its namespace's)."""
        if is_waypoint_object(service.labels):
            return NO_BINDING
        return self.resolve(service.namespace, service.labels, "service", TrafficType.SERVICE)

    def for_pod(self, pod: Pod) -> Binding:
        """The waypoint of traffic addressed to a pod (its label, else its namespace's)."""
        if is_waypoint_object(pod.labels):
            return NO_BINDING
        return self.resolve(pod.namespace, pod.labels, "pod", TrafficType.WORKLOAD)

    def resolve(
        self, namespace: str, labels: Mapping[str, str], kind: str, traffic: TrafficType | None
    ) -> Binding:
        """The binding of an object in ``namespace`` with ``labels`` (``kind`` names it).

        ``traffic`` is the kind of traffic bound (None: any, to check a namespace label).
        """
        ns = self.state.namespaces.get(namespace)
        if has_waypoint_label(labels):
            source, label_on = labels, kind
        elif ns is not None and has_waypoint_label(ns.labels):
            source, label_on = ns.labels, "namespace"
        else:
            return NO_BINDING
        requested = requested_waypoint(source, namespace)
        if requested is None:
            return NO_BINDING  # '#none'
        waypoint = self.waypoints.get(requested)
        problem = ""
        if waypoint is None:
            gateway = self.state.gateways.get(requested)
            what = f"waypoint {requested[0]}/{requested[1]}"
            problem = (
                f"{what} is a Gateway of class {gateway.gateway_class!r}, not istio-waypoint"
                if gateway is not None
                else f"{what} does not exist (no Gateway of class istio-waypoint by that name)"
            )
        elif traffic is not None and not waypoint.traffic_type.takes(traffic):
            problem = (
                f"waypoint {requested[0]}/{requested[1]} is for "
                f"{waypoint.traffic_type.value!r} traffic, not {traffic.value!r} "
                f"(label {WAYPOINT_FOR_LABEL})"
            )
        elif not waypoint.allows_namespace(ns, namespace):
            problem = (
                f"waypoint {requested[0]}/{requested[1]} does not allow namespace {namespace!r} "
                "(its listener's allowedRoutes.namespaces)"
            )
        elif waypoint.address is None:
            problem = (
                f"waypoint {requested[0]}/{requested[1]} has no address yet (no Service "
                f"labelled {GATEWAY_NAME_LABEL}={requested[1]} with a ClusterIP)"
            )
        if problem:
            return Binding(None, requested, label_on, problem)
        return Binding(waypoint, requested, label_on)


def ingress_uses_waypoint(state: ClusterState, service: Service) -> bool:
    """``istio.io/ingress-use-waypoint`` on the Service, else on its Namespace."""
    value = service.labels.get(INGRESS_USE_WAYPOINT_LABEL)
    if value is None:
        namespace = state.namespaces.get(service.namespace)
        value = namespace.labels.get(INGRESS_USE_WAYPOINT_LABEL) if namespace else None
    return bool(value == "true")


def gateway_address(waypoint: Waypoint | None, mesh: MeshConfig) -> Any | None:
    """The ``istio.workload.GatewayAddress`` istiod sends for a waypoint (None: none)."""
    if waypoint is None or waypoint.address is None:
        return None
    return wl.GatewayAddress(
        address=wl.NetworkAddress(
            network=mesh.network, address=ipaddress.ip_address(waypoint.address).packed
        ),
        hbone_mtls_port=WAYPOINT_HBONE_PORT,
    )


def allow_waypoint_name(waypoint: Waypoint) -> str:
    """istiod's implicit policy letting a waypoint reach what it serves (its short name)."""
    return f"istio_allow_waypoint_{waypoint.namespace}_{waypoint.name}"


def ingress_principals(state: ClusterState, mesh: MeshConfig) -> tuple[str, ...]:
    """Principals of the mesh's ingress gateways (north-south entry points), sorted.

    The service accounts of the pods of Gateway API gateways of class ``istio``
    (labelled with the gateway's name; ``<name>-istio`` when none runs yet), and of
    the pods an Istio ``Gateway`` selects (any namespace, istiod's default).
    """
    accounts: set[tuple[str, str]] = set()
    for gateway in state.gateways.values():
        if gateway.gateway_class != INGRESS_CLASS:
            continue
        accounts.add((gateway.namespace, f"{gateway.name}-istio"))
        accounts.update(
            (p.namespace, p.service_account)
            for p in state.pods.values()
            if p.namespace == gateway.namespace and p.labels.get(GATEWAY_NAME_LABEL) == gateway.name
        )
    selectors = [g.selector for g in state.istio_gateways.values() if g.selector]
    if selectors:
        accounts.update(
            (p.namespace, p.service_account)
            for p in state.pods.values()
            if any(selector_matches(sel, p.labels) for sel in selectors)
        )
    return tuple(sorted(f"{mesh.trust_domain}/ns/{ns}/sa/{sa}" for ns, sa in accounts))


def allow_waypoint_message(
    waypoint: Waypoint, namespace: str, mesh: MeshConfig, ingress: tuple[str, ...] = ()
) -> Any:
    """``<namespace>/istio_allow_waypoint_<ns>_<name>``: ALLOW from the waypoint's identity.

    As istiod's implicit policy (``PILOT_AUTO_ALLOW_WAYPOINT_POLICY``), it lives in the
    namespace of the workloads it serves, which list it, so that their own ALLOW
    policies (written for the original callers) do not refuse their waypoint. ztunnel
    also reads it as the list of peers a waypoint-served workload accepts: besides the
    waypoint, the ``ingress`` gateways' principals, which route north-south traffic
    to pods themselves (as Istio's ingress does without ``istio.io/ingress-use-waypoint``).
    """
    principals = [sec.StringMatch(exact=p) for p in (*waypoint.principals(mesh), *ingress)]
    return sec.Authorization(
        name=allow_waypoint_name(waypoint),
        namespace=namespace,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.ALLOW,
        rules=[sec.Rule(clauses=[sec.Clause(matches=[sec.Match(principals=principals)])])],
    )


def served_namespaces(state: ClusterState, index: WaypointIndex) -> set[tuple[str, Waypoint]]:
    """(namespace, waypoint) for every namespace with workloads a waypoint may serve."""
    pairs: set[tuple[str, tuple[str, str]]] = set()
    found: dict[tuple[str, str], Waypoint] = {}

    def add(namespace: str, waypoint: Waypoint | None) -> None:
        if waypoint is not None:
            pairs.add((namespace, waypoint.key))
            found[waypoint.key] = waypoint

    for ns in state.namespaces.values():
        if has_waypoint_label(ns.labels):
            add(ns.name, index.resolve(ns.name, ns.labels, "namespace", None).waypoint)
    for svc in state.services.values():
        add(svc.namespace, index.for_service(svc).waypoint)
    for pod in state.pods.values():
        if USE_WAYPOINT_LABEL in pod.labels:
            add(pod.namespace, index.for_pod(pod).waypoint)
    return {(ns, found[key]) for ns, key in pairs}


def binding_problems(state: ClusterState) -> list[tuple[Namespace | Service | Pod, str, str]]:
    """(object, field, message) for every use-waypoint label whose waypoint cannot be used.

    ``ambient controlplane validate`` reports them as warnings (istiod reports them as
    status conditions): the object's traffic goes to its destination directly.
    """
    index = WaypointIndex(state)
    field = f"metadata.labels.{USE_WAYPOINT_LABEL}"
    found: list[tuple[Namespace | Service | Pod, str, str]] = []
    for ns in sorted(state.namespaces.values(), key=lambda n: n.name):
        if has_waypoint_label(ns.labels):
            binding = index.resolve(ns.name, ns.labels, "namespace", None)
            if binding.problem:
                found.append((ns, field, binding.problem))
    for svc in sorted(state.services.values(), key=lambda s: s.key):
        if has_waypoint_label(svc.labels) and (problem := index.for_service(svc).problem):
            found.append((svc, field, problem))
    for pod in sorted(state.pods.values(), key=lambda p: p.key):
        if has_waypoint_label(pod.labels) and (problem := index.for_pod(pod).problem):
            found.append((pod, field, problem))
    return found


def binding_issues(state: ClusterState) -> list[SourceIssue]:
    """:func:`binding_problems` as warnings (without file locations)."""
    issues: list[SourceIssue] = []
    for obj, field, message in binding_problems(state):
        kind = type(obj).__name__
        namespace = "" if isinstance(obj, Namespace) else obj.namespace
        issues.append(
            SourceIssue("", 0, kind, namespace, obj.name, field, message, Severity.WARNING)
        )
    return issues
