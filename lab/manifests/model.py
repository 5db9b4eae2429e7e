"""The objects a user's manifests ask the lab for, as frozen values.

Raw YAML stops in :mod:`lab.manifests.parse`; past it, a manifest is one of the
dataclasses here, each remembering the file and line it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controlplane.model import EMPTY, FrozenMap, deep_thaw
from lab.manifests.images import Program
from lab.objects import object_filename

POD_TEMPLATE_HASH = "pod-template-hash"
"""Label a ReplicaSet puts on its pods (and what tells a Deployment's pods apart)."""


@dataclass(frozen=True)
class Origin:
    """Where a manifest was written."""

    file: str
    line: int
    """1-based line of the YAML document's start."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class PodTemplate:
    """What every pod of a Pod or Deployment is: labels, identity, placement, programs."""

    labels: FrozenMap[str, str] = EMPTY
    """The pod's labels (a Deployment's template labels, without ``pod-template-hash``)."""
    service_account: str = "default"
    """``serviceAccountName``: the SPIFFE identity ``.../ns/<ns>/sa/<service_account>``."""
    node: str = ""
    """``spec.nodeName`` when the manifest pins the pod to a node; '' lets the lab place it."""
    programs: tuple[Program, ...] = ()
    """The workload programs standing in for the containers that serve."""
    port_names: FrozenMap[str, int] = field(default_factory=FrozenMap)
    """Container port name -> number (what a Service's named ``targetPort`` resolves to)."""
    notes: tuple[str, ...] = ()
    """Why some container commands are not run (idle stand-ins)."""

    def runs(self) -> tuple[Any, ...]:
        """Everything but the labels: what makes two pods need replacing, not relabelling."""
        return (self.service_account, self.node, self.programs)


@dataclass(frozen=True)
class NamespaceManifest:
    """A ``Namespace``."""

    name: str
    labels: FrozenMap[str, str]
    origin: Origin
    kind: str = "Namespace"
    namespace: str = ""

    @property
    def ref(self) -> str:
        """``Namespace/<name>``."""
        return f"Namespace/{self.name}"


@dataclass(frozen=True)
class ServiceAccountManifest:
    """A ``ServiceAccount``."""

    namespace: str
    name: str
    origin: Origin
    kind: str = "ServiceAccount"

    @property
    def ref(self) -> str:
        """``ServiceAccount/<namespace>/<name>``."""
        return f"ServiceAccount/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class WorkloadManifest:
    """A ``Pod`` (one replica, its own name) or a ``Deployment`` (replicas, ReplicaSet names)."""

    kind: str
    """``Pod`` or ``Deployment``."""
    namespace: str
    name: str
    origin: Origin
    template: PodTemplate
    replicas: int = 1
    template_hash: str = ""
    """The ``pod-template-hash`` of a Deployment's template ('' for a Pod)."""

    @property
    def ref(self) -> str:
        """``<kind>/<namespace>/<name>``."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def pod_labels(self) -> dict[str, str]:
        """The labels each pod carries (a Deployment's pods add ``pod-template-hash``)."""
        labels = dict(self.template.labels)
        if self.template_hash:
            labels[POD_TEMPLATE_HASH] = self.template_hash
        return labels

    @property
    def replica_set(self) -> str:
        """``<deployment>-<pod-template-hash>``, the ReplicaSet a Deployment would make."""
        return f"{self.name}-{self.template_hash}"


@dataclass(frozen=True)
class PortManifest:
    """One Service port; ``target`` is a number or a container port name."""

    port: int
    target: int | str
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceManifest:
    """A ClusterIP ``Service``."""

    namespace: str
    name: str
    origin: Origin
    selector: FrozenMap[str, str]
    ports: tuple[PortManifest, ...]
    labels: FrozenMap[str, str] = EMPTY
    vip: str = ""
    """``spec.clusterIP`` when the manifest fixes one (in the lab's ``10.96.0.0/16``)."""
    kind: str = "Service"

    @property
    def ref(self) -> str:
        """``Service/<namespace>/<name>``."""
        return f"Service/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ConfigManifest:
    """An Istio or Gateway API object, written to the config folder as the user wrote it."""

    api_version: str
    kind: str
    namespace: str
    name: str
    origin: Origin
    document: FrozenMap[str, Any] = field(default_factory=FrozenMap)
    """The object, with ``metadata.namespace`` filled in when the manifest left it out."""

    @property
    def group(self) -> str:
        """The API group (``security.istio.io``)."""
        return self.api_version.rpartition("/")[0]

    @property
    def ref(self) -> str:
        """``<kind>.<group>/<namespace>/<name>`` (two kinds are called Gateway)."""
        return f"{self.kind}.{self.group}/{self.namespace}/{self.name}"

    @property
    def filename(self) -> str:
        """Its file in the config folder; the group keeps Istio's and Gateway API's apart."""
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return object_filename(kind, self.name, self.namespace)

    def plain(self) -> dict[str, Any]:
        """The object as plain dicts and lists (for YAML output)."""
        out: dict[str, Any] = deep_thaw(self.document)
        return out


Manifest = (
    NamespaceManifest | ServiceAccountManifest | WorkloadManifest | ServiceManifest | ConfigManifest
)
