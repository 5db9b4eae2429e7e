"""Which pods of this node the programs must know, and what changes to make (sans-IO).

The agent turns a :class:`~controlplane.model.ClusterState` into the set of local
workloads, and compares it with what it has applied to get a :class:`Plan`. Every pod of
the node is known to the programs, enrolled or not: a neighbour outside the mesh needs
the pod-egress program on its veth for its SYNs to enrolled pods to reach the inbound
listener, and replies of ztunnel's spoofed connections to it must find ztunnel's socket.
Leaving the mesh clears the enrolled flag and keeps the program attached, so flows
ztunnel already carries finish unharmed; a pod that goes is forgotten.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agent.layout import WorkloadFlags
from controlplane.model import ClusterState, is_enrolled


@dataclass(frozen=True)
class LocalWorkload:
    """A pod of this node as the maps see it."""

    namespace: str
    name: str
    ip: str
    enrolled: bool

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def flags(self) -> int:
        """``workload_value.flags``."""
        flags = WorkloadFlags.LOCAL
        if self.enrolled:
            flags |= WorkloadFlags.ENROLLED
        return int(flags)

    @property
    def workload_id(self) -> int:
        """A stable 31-bit id for logs and maps (a hash of ``namespace/name``)."""
        return zlib.crc32(self.key.encode()) & 0x7FFFFFFF


def local_workloads(
    state: ClusterState, node_name: str, excluded_namespaces: Collection[str] = ()
) -> dict[str, LocalWorkload]:
    """The pods of ``node_name`` that have an address of their own, by IP.

    Pods of ``excluded_namespaces`` are never enrolled, whatever their labels (as
    istio-cni's ``excludeNamespaces``); they stay known to the programs like any pod
    outside the mesh, so their connections to enrolled pods still reach ztunnel.
    """
    out: dict[str, LocalWorkload] = {}
    for pod in state.pods.values():
        if pod.node_name != node_name or not pod.ip or pod.host_network:
            continue
        if ":" in pod.ip:  # IPv6 capture is not there yet
            continue
        out[pod.ip] = LocalWorkload(
            namespace=pod.namespace,
            name=pod.name,
            ip=pod.ip,
            enrolled=pod.namespace not in excluded_namespaces
            and is_enrolled(pod, state.namespace_of(pod)),
        )
    return out


@dataclass(frozen=True)
class Plan:
    """What to change: attach and write new pods, rewrite changed ones, forget gone ones."""

    add: tuple[LocalWorkload, ...] = ()
    update: tuple[LocalWorkload, ...] = ()
    remove: tuple[LocalWorkload, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return not (self.add or self.update or self.remove)


def plan(desired: Mapping[str, LocalWorkload], applied: Mapping[str, LocalWorkload]) -> Plan:
    """The changes that turn ``applied`` into ``desired`` (both keyed by IP)."""
    add = tuple(w for ip, w in sorted(desired.items()) if ip not in applied)
    update = tuple(w for ip, w in sorted(desired.items()) if ip in applied and applied[ip] != w)
    remove = tuple(w for ip, w in sorted(applied.items()) if ip not in desired)
    return Plan(add=add, update=update, remove=remove)
