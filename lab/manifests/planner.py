"""What applying (or deleting) manifests changes in a lab: a pure plan of actions.

The planner takes the manifests, a :class:`LabView` of what the lab holds now and the
:class:`Applied` record of earlier applies, and returns the actions that make the lab
match, what each object's outcome is (``created``, ``configured``, ``unchanged``, ...)
and the new record. It does no I/O, so placement, pod names, idempotency and every
plan-time error are unit-tested without a lab.

Like ``kubectl apply``, labels a manifest drops are removed only if an earlier apply
set them (a three-way merge); labels set by hand (``ambient lab label``) stay.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.model import EMPTY, FrozenMap, SourceIssue, selector_matches
from controlplane.sources.fields import is_dns1123_label
from lab.manifests import gateways
from lab.manifests.errors import ManifestError
from lab.manifests.gateways import GatewayDeployment
from lab.manifests.images import Program
from lab.manifests.model import (
    POD_TEMPLATE_HASH,
    ConfigManifest,
    Manifest,
    NamespaceManifest,
    ServiceAccountManifest,
    ServiceManifest,
    WorkloadManifest,
)
from lab.model import ServicePort
from lab.objects import object_filename

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_ORDER = {
    NamespaceManifest: 0,
    ServiceAccountManifest: 1,
    WorkloadManifest: 2,
    ServiceManifest: 3,
    ConfigManifest: 4,
}


# --- what the lab holds --------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    """A pod the lab has."""

    namespace: str
    name: str
    node: str
    labels: FrozenMap[str, str] = EMPTY


@dataclass(frozen=True)
class ServiceView:
    """A Service the lab has."""

    namespace: str
    name: str
    vip: str
    selector: FrozenMap[str, str] = EMPTY
    ports: tuple[ServicePort, ...] = ()
    labels: FrozenMap[str, str] = EMPTY


@dataclass(frozen=True)
class LabView:
    """The part of a lab's state a plan depends on."""

    nodes: tuple[str, ...]
    """Node names, ``node1`` first."""
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Namespace -> labels."""
    pods: Mapping[str, PodView] = field(default_factory=dict)
    """``namespace/name`` -> pod."""
    services: Mapping[str, ServiceView] = field(default_factory=dict)
    """``namespace/name`` -> Service."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Config-folder file name -> its text, for the files the manifests name."""


@dataclass(frozen=True)
class Applied:
    """What earlier applies made for one object (saved between commands)."""

    fingerprint: str = ""
    """A digest of what, when changed, makes the object be replaced."""
    labels: FrozenMap[str, str] = EMPTY
    """The labels as last applied (pods' labels for Pods and Deployments)."""
    pods: tuple[str, ...] = ()
    """Names of the pods made for a Pod or Deployment."""
    port_names: FrozenMap[str, int] = field(default_factory=FrozenMap)
    """Container port names of those pods (for Services applied later)."""
    files: tuple[str, ...] = ()
    """Config-folder files written for the object."""

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "fingerprint": self.fingerprint,
            "labels": dict(self.labels),
            "pods": list(self.pods),
            "port_names": dict(self.port_names),
            "files": list(self.files),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Applied:
        """The value :meth:`to_json` made."""
        return cls(
            fingerprint=str(data.get("fingerprint", "")),
            labels=FrozenMap({str(k): str(v) for k, v in data.get("labels", {}).items()}),
            pods=tuple(str(p) for p in data.get("pods", [])),
            port_names=FrozenMap({str(k): int(v) for k, v in data.get("port_names", {}).items()}),
            files=tuple(str(f) for f in data.get("files", [])),
        )


Record = Mapping[str, Applied]
"""Object ref (``Deployment/demo/frontend``) -> what applying it made."""


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddNamespace:
    """Create a namespace with labels."""

    name: str
    labels: FrozenMap[str, str]


@dataclass(frozen=True)
class SetNamespaceLabels:
    """Change a namespace's labels in place (None removes a key)."""

    name: str
    changes: FrozenMap[str, str | None]


@dataclass(frozen=True)
class RemoveNamespace:
    """Delete a namespace with its pods and Services."""

    name: str


@dataclass(frozen=True)
class WriteFile:
    """Write an object file into the config folder."""

    filename: str
    text: str


@dataclass(frozen=True)
class RemoveFile:
    """Remove an object file from the config folder."""

    filename: str


@dataclass(frozen=True)
class AddPod:
    """Create a pod on a node and start its programs."""

    namespace: str
    name: str
    node: str
    labels: FrozenMap[str, str]
    service_account: str
    programs: tuple[Program, ...]
    owner: str = ""
    """The ReplicaSet (``<deployment>-<hash>``) of a Deployment's pod; '' for a bare Pod."""


@dataclass(frozen=True)
class RemovePod:
    """Delete a pod (and its processes)."""

    namespace: str
    name: str


@dataclass(frozen=True)
class SetPodLabels:
    """Change a pod's labels in place (None removes a key)."""

    namespace: str
    name: str
    changes: FrozenMap[str, str | None]


@dataclass(frozen=True)
class AddService:
    """Create a ClusterIP Service (``vip`` '' allocates one)."""

    namespace: str
    name: str
    selector: FrozenMap[str, str]
    ports: tuple[ServicePort, ...]
    vip: str = ""
    labels: FrozenMap[str, str] = EMPTY


@dataclass(frozen=True)
class SetServiceLabels:
    """Change a Service's labels in place (None removes a key), e.g. ``istio.io/use-waypoint``."""

    namespace: str
    name: str
    changes: FrozenMap[str, str | None]


@dataclass(frozen=True)
class RemoveService:
    """Delete a Service."""

    namespace: str
    name: str


Action = (
    AddNamespace
    | SetNamespaceLabels
    | RemoveNamespace
    | WriteFile
    | RemoveFile
    | AddPod
    | RemovePod
    | SetPodLabels
    | AddService
    | SetServiceLabels
    | RemoveService
)


@dataclass(frozen=True)
class Outcome:
    """What happened to one manifest, as ``kubectl`` reports it."""

    ref: str
    """``Kind/namespace/name``."""
    result: str
    """``created``, ``configured``, ``unchanged``, ``deleted`` or ``not found``."""
    detail: str = ""


@dataclass(frozen=True)
class Plan:
    """Actions in the order to run them, the outcome per manifest, and the new record."""

    actions: tuple[Action, ...]
    outcomes: tuple[Outcome, ...]
    record: Mapping[str, Applied]


# --- placement and names -------------------------------------------------------------------


def place(nodes: Sequence[str], load: Mapping[str, int], siblings: Mapping[str, int]) -> str:
    """The node for a new pod: fewest pods of the same owner, then fewest pods, then first.

    Replicas spread over the nodes, and single pods of different Deployments alternate.
    """
    return min(nodes, key=lambda n: (siblings.get(n, 0), load.get(n, 0), nodes.index(n)))


def pod_suffix(namespace: str, replica_set: str, attempt: int) -> str:
    """Five characters like a ReplicaSet's random pod suffix, but reproducible."""
    digest = hashlib.sha256(f"{namespace}/{replica_set}/{attempt}".encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:5])


def is_replica_of(pod: PodView, deployment: str) -> bool:
    """Whether a pod is named and labelled like a replica of ``deployment``."""
    pattern = rf"^{re.escape(deployment)}-[{_SUFFIX_ALPHABET}]{{1,10}}-[{_SUFFIX_ALPHABET}]{{5}}$"
    return POD_TEMPLATE_HASH in pod.labels and re.match(pattern, pod.name) is not None


def workload_fingerprint(manifest: WorkloadManifest) -> str:
    """What, when changed, replaces the pods (a Deployment's template hash, a Pod's run)."""
    if manifest.kind == "Deployment":
        return manifest.template_hash
    runs = repr(manifest.template.runs()).encode()
    return hashlib.sha256(runs).hexdigest()[:16]


def object_text(obj: Mapping[str, Any]) -> str:
    """The YAML text of a config-folder file, as :mod:`lab.objects` writes them."""
    return yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False)


def service_account_file(namespace: str, name: str) -> tuple[str, str]:
    """File name and text of a ServiceAccount (the form the lab writes for pods)."""
    from lab.objects import service_account_object

    return (
        object_filename("ServiceAccount", name, namespace),
        object_text(service_account_object(name, namespace)),
    )


# --- apply ---------------------------------------------------------------------------------


class _Planner:
    """Accumulates actions and outcomes while walking the manifests in apply order."""

    def __init__(self, view: LabView, record: Record) -> None:
        self.view = view
        self.record: dict[str, Applied] = dict(record)
        self.actions: list[Action] = []
        self.outcomes: list[Outcome] = []
        self.problems: list[SourceIssue] = []
        self.load = {n: 0 for n in view.nodes}
        self.pods = set(view.pods)
        for pod in view.pods.values():
            self.load[pod.node] = self.load.get(pod.node, 0) + 1
        self.namespaces = set(view.namespaces)
        self.vips = {key: svc.vip for key, svc in view.services.items()}
        self.ingress_ports: dict[str, Mapping[str, int]] = {
            ref: applied.port_names
            for ref, applied in record.items()
            if _INGRESS_KEY in applied.pods
        }
        """Istio Gateway ref -> its server ports, for every Gateway the ingress serves."""
        self.deployed: set[str] = set()
        """Gateway pods (``ns/name``) already planned by this apply."""

    def problem(self, manifest: Manifest, field_path: str, message: str) -> None:
        self.problems.append(
            SourceIssue(
                manifest.origin.file,
                manifest.origin.line,
                manifest.kind,
                manifest.namespace,
                manifest.name,
                field_path,
                message,
            )
        )

    def outcome(self, manifest: Manifest, result: str, detail: str = "") -> None:
        self.outcomes.append(Outcome(manifest.ref, result, detail))

    # --- per kind

    def namespace(self, m: NamespaceManifest) -> None:
        current = self.view.namespaces.get(m.name)
        before = self.record.get(m.ref, Applied()).labels
        self.record[m.ref] = Applied(labels=m.labels)
        self.namespaces.add(m.name)
        if current is None:
            self.actions.append(AddNamespace(m.name, m.labels))
            self.outcome(m, "created")
            return
        changes = label_changes(current, m.labels, before)
        if changes:
            self.actions.append(SetNamespaceLabels(m.name, changes))
            self.outcome(m, "configured", _describe(changes))
        else:
            self.outcome(m, "unchanged")

    def service_account(self, m: ServiceAccountManifest) -> None:
        if not self.need_namespace(m):
            return
        filename, text = service_account_file(m.namespace, m.name)
        self.record[m.ref] = Applied(files=(filename,))
        if self.view.files.get(filename) == text:
            self.outcome(m, "unchanged")
            return
        self.actions.append(WriteFile(filename, text))
        self.outcome(m, "created")

    def workload(self, m: WorkloadManifest) -> None:
        if not self.need_namespace(m):
            return
        if m.template.node and m.template.node not in self.view.nodes:
            where = "spec.nodeName" if m.kind == "Pod" else "spec.template.spec.nodeName"
            self.problem(m, where, f"the lab has no node {m.template.node!r} ({_list(self)})")
            return
        longest = m.name if m.kind == "Pod" else f"{m.replica_set}-{'x' * 5}"
        if not is_dns1123_label(longest):
            self.problem(
                m,
                "metadata.name",
                f"pod name {longest!r} would not be a DNS label (at most 63 characters; "
                "a Deployment's pods add 17)",
            )
            return
        fingerprint = workload_fingerprint(m)
        before = self.record.get(m.ref)
        labels = FrozenMap(m.pod_labels)
        existing = self.existing_pods(m, before)
        if m.kind == "Pod":
            self.pod(m, fingerprint, before, existing, labels)
        else:
            self.deployment(m, fingerprint, before, existing, labels)

    def pod(
        self,
        m: WorkloadManifest,
        fingerprint: str,
        before: Applied | None,
        existing: list[PodView],
        labels: FrozenMap[str, str],
    ) -> None:
        self.record[m.ref] = Applied(fingerprint, labels, (m.name,), m.template.port_names, ())
        if existing and before is not None and before.fingerprint == fingerprint:
            changes = label_changes(existing[0].labels, labels, before.labels)
            if changes:
                self.actions.append(SetPodLabels(m.namespace, m.name, changes))
                self.outcome(m, "configured", _describe(changes))
            else:
                self.outcome(m, "unchanged", f"on {existing[0].node}")
            return
        node = m.template.node or (existing[0].node if existing else "")
        for pod in existing:
            self.remove_pod(pod)
        node = node or place(self.view.nodes, self.load, {})
        self.add_pod(m, m.name, node, labels)
        self.outcome(m, "configured" if existing else "created", f"on {node}")

    def deployment(
        self,
        m: WorkloadManifest,
        fingerprint: str,
        before: Applied | None,
        existing: list[PodView],
        labels: FrozenMap[str, str],
    ) -> None:
        current = [p for p in existing if p.labels.get(POD_TEMPLATE_HASH) == fingerprint]
        stale = [p for p in existing if p not in current]
        keep = current[: m.replicas]
        for pod in [*stale, *current[m.replicas :]]:
            self.remove_pod(pod)
        siblings: dict[str, int] = {}
        for pod in keep:
            siblings[pod.node] = siblings.get(pod.node, 0) + 1
        made: list[str] = []
        for _ in range(m.replicas - len(keep)):
            node = m.template.node or place(self.view.nodes, self.load, siblings)
            siblings[node] = siblings.get(node, 0) + 1
            name = self.free_pod_name(m)
            self.add_pod(m, name, node, labels)
            made.append(f"{name} on {node}")
        names = tuple(p.name for p in keep) + tuple(n.split(" ")[0] for n in made)
        self.record[m.ref] = Applied(fingerprint, labels, names, m.template.port_names, ())
        if not stale and not made and len(keep) == len(current):
            self.outcome(m, "unchanged", f"{len(keep)} replicas")
        elif not existing:
            self.outcome(m, "created", ", ".join(made))
        else:
            detail = f"{len(keep)} kept, {len(made)} new, {len(existing) - len(keep)} removed"
            self.outcome(m, "configured", detail)

    def service(self, m: ServiceManifest) -> None:
        if not self.need_namespace(m):
            return
        ports = self.service_ports(m)
        if ports is None:
            return
        key = f"{m.namespace}/{m.name}"
        if not is_dns1123_label(m.name):
            self.problem(m, "metadata.name", "a Service name must be a DNS label (no dots)")
            return
        if m.vip:
            users = [k for k, v in self.vips.items() if v == m.vip and k != key]
            if users:
                self.problem(m, "spec.clusterIP", f"{m.vip} is taken by Service {users[0]}")
                return
            self.vips[key] = m.vip
        current = self.view.services.get(key)
        before = self.record.get(m.ref, Applied()).labels
        self.record[m.ref] = Applied(labels=m.labels)
        if current is None:
            self.actions.append(AddService(m.namespace, m.name, m.selector, ports, m.vip, m.labels))
            self.outcome(m, "created")
            return
        same = current.selector == m.selector and current.ports == ports
        if same and (not m.vip or m.vip == current.vip):
            # labels in place (kubectl apply's three-way merge: keys set by hand stay)
            changes = label_changes(current.labels, m.labels, before)
            if changes:
                self.actions.append(SetServiceLabels(m.namespace, m.name, changes))
                self.outcome(m, "configured", _describe(changes))
            else:
                self.outcome(m, "unchanged", current.vip)
            return
        self.actions.append(RemoveService(m.namespace, m.name))
        self.actions.append(
            AddService(
                m.namespace,
                m.name,
                m.selector,
                ports,
                m.vip or current.vip,
                FrozenMap(
                    {
                        k: v
                        for k, v in {
                            **current.labels,
                            **label_changes(current.labels, m.labels, before),
                        }.items()
                        if v is not None
                    }
                ),
            )
        )
        self.outcome(m, "configured", m.vip or current.vip)

    def config(self, m: ConfigManifest) -> None:
        if not self.need_namespace(m):
            return
        text = object_text(m.plain())
        self.record[m.ref] = Applied(files=(m.filename,))
        current = self.view.files.get(m.filename)
        deployment = self.gateway(m)
        detail = ""
        if deployment is not None:
            what = "waypoint" if deployment.kind == "waypoint" else "gateway"
            detail = f"{what} pod {deployment.key}"
        if current == text:
            self.outcome(m, "unchanged", detail)
            return
        self.actions.append(WriteFile(m.filename, text))
        self.outcome(m, "created" if current is None else "configured", detail)

    def gateway(self, m: ConfigManifest) -> GatewayDeployment | None:
        """The pod and Service a gateway object needs, planned once per apply."""
        if gateways.is_ingress(m):
            self.ingress_ports.setdefault(m.ref, FrozenMap(gateways.server_ports(m)))
            deployment: GatewayDeployment | None = gateways.ingress_deployment(
                self.ingress_ports[k] for k in sorted(self.ingress_ports)
            )
        else:
            deployment = gateways.deployment_for(m)
        if deployment is None:
            return None
        ports: FrozenMap[str, int] = (
            FrozenMap(gateways.server_ports(m)) if gateways.is_ingress(m) else FrozenMap()
        )
        self.record[m.ref] = Applied(files=(m.filename,), pods=(deployment.key,), port_names=ports)
        if deployment.key in self.deployed:
            return deployment
        self.deployed.add(deployment.key)
        if deployment.namespace not in self.namespaces:
            self.actions.append(AddNamespace(deployment.namespace, EMPTY))
            self.namespaces.add(deployment.namespace)
        if deployment.key not in self.pods:
            node = place(self.view.nodes, self.load, {})
            program = Program(
                gateways.PROXY_PROGRAM,
                (deployment.kind, deployment.gateway_name),
                gateways.STATUS_PORT,
            )
            self.actions.append(
                AddPod(
                    deployment.namespace,
                    deployment.name,
                    node,
                    deployment.labels,
                    deployment.name,
                    (program,),
                )
            )
            self.pods.add(deployment.key)
            self.load[node] = self.load.get(node, 0) + 1
        current = self.view.services.get(deployment.key)
        if current is None:
            self.actions.append(
                AddService(
                    deployment.namespace, deployment.name, deployment.selector, deployment.ports
                )
            )
        elif current.ports != deployment.ports or current.selector != deployment.selector:
            self.actions.append(RemoveService(deployment.namespace, deployment.name))
            self.actions.append(
                AddService(
                    deployment.namespace,
                    deployment.name,
                    deployment.selector,
                    deployment.ports,
                    current.vip,
                )
            )
        return deployment

    # --- helpers

    def need_namespace(self, m: Manifest) -> bool:
        if m.namespace in self.namespaces:
            return True
        self.problem(
            m,
            "metadata.namespace",
            f"namespace {m.namespace!r} does not exist in the lab; "
            "add a Namespace manifest (or apply it first)",
        )
        return False

    def existing_pods(self, m: WorkloadManifest, before: Applied | None) -> list[PodView]:
        names = set(before.pods) if before is not None else set()
        if m.kind == "Pod":
            names.add(m.name)
        found = [
            p
            for key, p in self.view.pods.items()
            if key in self.pods
            and p.namespace == m.namespace
            and (p.name in names or (m.kind == "Deployment" and is_replica_of(p, m.name)))
        ]
        return sorted(found, key=lambda p: p.name)

    def free_pod_name(self, m: WorkloadManifest) -> str:
        attempt = 0
        while True:
            name = f"{m.replica_set}-{pod_suffix(m.namespace, m.replica_set, attempt)}"
            if f"{m.namespace}/{name}" not in self.pods:
                return name
            attempt += 1

    def add_pod(
        self, m: WorkloadManifest, name: str, node: str, labels: FrozenMap[str, str]
    ) -> None:
        self.actions.append(
            AddPod(
                m.namespace,
                name,
                node,
                labels,
                m.template.service_account,
                m.template.programs,
                m.replica_set if m.kind == "Deployment" else "",
            )
        )
        self.pods.add(f"{m.namespace}/{name}")
        self.load[node] = self.load.get(node, 0) + 1

    def remove_pod(self, pod: PodView) -> None:
        self.actions.append(RemovePod(pod.namespace, pod.name))
        self.pods.discard(f"{pod.namespace}/{pod.name}")
        self.load[pod.node] = self.load.get(pod.node, 1) - 1

    def service_ports(self, m: ServiceManifest) -> tuple[ServicePort, ...] | None:
        out: list[ServicePort] = []
        for i, port in enumerate(m.ports):
            target = port.target
            if isinstance(target, str):
                found = self.named_port(m, target)
                if len(found) != 1:
                    why = (
                        "names no container port of the pods the selector picks"
                        if not found
                        else f"is port {' or '.join(map(str, sorted(found)))} in different pods"
                    )
                    self.problem(m, f"spec.ports[{i}].targetPort", f"{target!r} {why}")
                    return None
                target = found.pop()
            out.append(ServicePort(port.port, target, port.name, port.protocol))
        return tuple(out)

    def named_port(self, m: ServiceManifest, name: str) -> set[int]:
        found: set[int] = set()
        for ref, applied in self.record.items():
            kind, _, rest = ref.partition("/")
            namespace = rest.partition("/")[0]
            if kind not in ("Pod", "Deployment") or namespace != m.namespace:
                continue
            if selector_matches(m.selector, applied.labels) and name in applied.port_names:
                found.add(applied.port_names[name])
        return found


def label_changes(
    current: Mapping[str, str], desired: Mapping[str, str], applied_before: Mapping[str, str]
) -> FrozenMap[str, str | None]:
    """Changes that make ``current`` carry ``desired``, dropping what the last apply set."""
    changes: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in applied_before:
        if key not in desired and key in current:
            changes[key] = None
    return FrozenMap(changes)


def in_apply_order(manifests: Iterable[Manifest]) -> list[Manifest]:
    """Namespaces, ServiceAccounts, workloads, Services, then config; file order within."""
    return sorted(manifests, key=lambda m: _ORDER[type(m)])


def plan_apply(manifests: Sequence[Manifest], view: LabView, record: Record) -> Plan:
    """The actions that make the lab hold ``manifests``; raises :class:`ManifestError`
    (nothing to run) when one cannot be placed or resolved."""
    planner = _Planner(view, record)
    for m in manifests:  # the ingress Service carries the ports of every Gateway it serves
        if isinstance(m, ConfigManifest) and gateways.is_ingress(m):
            planner.ingress_ports[m.ref] = FrozenMap(gateways.server_ports(m))
    for m in in_apply_order(manifests):
        if isinstance(m, NamespaceManifest):
            planner.namespace(m)
        elif isinstance(m, ServiceAccountManifest):
            planner.service_account(m)
        elif isinstance(m, WorkloadManifest):
            planner.workload(m)
        elif isinstance(m, ServiceManifest):
            planner.service(m)
        else:
            planner.config(m)
    if planner.problems:
        raise ManifestError(planner.problems)
    return Plan(tuple(planner.actions), tuple(planner.outcomes), planner.record)


# --- delete --------------------------------------------------------------------------------


def plan_delete(manifests: Sequence[Manifest], view: LabView, record: Record) -> Plan:
    """The actions that remove what ``manifests`` name; absent objects are 'not found'."""
    actions: list[Action] = []
    outcomes: list[Outcome] = []
    kept = dict(record)
    gone_namespaces = {m.name for m in manifests if isinstance(m, NamespaceManifest)}
    _refuse_default(manifests)
    for m in reversed(in_apply_order(manifests)):
        applied = kept.pop(m.ref, None)
        found: list[Action] = []
        if isinstance(m, ConfigManifest):
            found += _gateway_removal(m, view, kept, gone_namespaces)
        if isinstance(m, ServiceAccountManifest | ConfigManifest):
            filename = (
                m.filename
                if isinstance(m, ConfigManifest)
                else object_filename("ServiceAccount", m.name, m.namespace)
            )
            if filename in view.files:
                found.append(RemoveFile(filename))
        elif m.namespace in gone_namespaces:
            pass  # pods and Services go with their namespace, below
        elif isinstance(m, WorkloadManifest):
            found += _pods_of(m, view, applied)
        elif isinstance(m, ServiceManifest):
            if f"{m.namespace}/{m.name}" in view.services:
                found.append(RemoveService(m.namespace, m.name))
        elif m.name in view.namespaces:
            for ref in [r for r in kept if r.split("/")[1:2] == [m.name]]:
                found += [RemoveFile(f) for f in kept.pop(ref).files if f in view.files]
            found.append(RemoveNamespace(m.name))
        if m.namespace in gone_namespaces:
            outcomes.append(Outcome(m.ref, "deleted", f"with namespace {m.namespace}"))
        else:
            outcomes.append(Outcome(m.ref, "deleted" if found else "not found"))
        actions += found
    return Plan(tuple(actions), tuple(reversed(outcomes)), kept)


_INGRESS_KEY = f"{gateways.INGRESS_NAMESPACE}/{gateways.INGRESS_NAME}"


def _gateway_removal(
    m: ConfigManifest, view: LabView, kept: Record, gone_namespaces: set[str]
) -> list[Action]:
    """Removal of a gateway object's pod and Service, unless another object still needs
    them (the ingress gateway serves every Istio Gateway selecting it) or they go with
    their namespace."""
    deployment = gateways.deployment_for(m)
    if deployment is None or deployment.namespace in gone_namespaces:
        return []
    if any(deployment.key in applied.pods for applied in kept.values()):
        return []
    found: list[Action] = []
    if deployment.key in view.pods:
        found.append(RemovePod(deployment.namespace, deployment.name))
    if deployment.key in view.services:
        found.append(RemoveService(deployment.namespace, deployment.name))
    return found


def _pods_of(m: WorkloadManifest, view: LabView, applied: Applied | None) -> list[Action]:
    """Removal of a Pod, or of a Deployment's pods (recorded, or recognised by name)."""
    names = set(applied.pods if applied else ())
    if m.kind == "Pod":
        names.add(m.name)
    return [
        RemovePod(p.namespace, p.name)
        for p in view.pods.values()
        if p.namespace == m.namespace
        and (p.name in names or (m.kind == "Deployment" and is_replica_of(p, m.name)))
    ]


def _refuse_default(manifests: Sequence[Manifest]) -> None:
    for m in manifests:
        if m.ref == "Namespace/default":
            issue = SourceIssue(
                m.origin.file,
                m.origin.line,
                m.kind,
                "",
                m.name,
                "metadata.name",
                "the namespace 'default' cannot be deleted",
            )
            raise ManifestError([issue], hint="delete the objects in it instead")


def _describe(changes: Mapping[str, str | None]) -> str:
    return ", ".join(f"{k}-" if v is None else f"{k}={v}" for k, v in changes.items())


def _list(planner: _Planner) -> str:
    return "nodes: " + ", ".join(planner.view.nodes)


def record_to_json(record: Record) -> str:
    """The record as the JSON text saved in the lab's run folder."""
    return json.dumps({k: v.to_json() for k, v in sorted(record.items())}, indent=1)


def record_from_json(text: str) -> dict[str, Applied]:
    """The record :func:`record_to_json` saved."""
    data = json.loads(text)
    return {str(k): Applied.from_json(v) for k, v in data.items()}
