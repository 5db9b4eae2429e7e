"""What a lab is made of: nodes, hosts, pods, Services, processes, and its saved state.

The state is plain JSON under the lab's run folder, so ``ambient lab status``, ``exec``
and ``down`` work from any process, also after the builder died.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATE_VERSION = 1


@dataclass(frozen=True)
class Host:
    """A namespace on the fabric that is not a node: the fabric itself, or ``outside``."""

    name: str
    """``fabric`` or ``outside``."""
    netns: str
    """Its network namespace."""
    ip: str
    """Its address on the fabric subnet."""
    ifname: str
    """Its interface on the fabric (the bridge for the fabric, ``eth0`` for outside)."""


@dataclass(frozen=True)
class Node:
    """A Kubernetes node: a namespace with an uplink on the fabric and routes to pods."""

    name: str
    """Kubernetes node name, ``node<index>``."""
    index: int
    """1-based; the third octet of its pod CIDR."""
    netns: str
    """Its network namespace, ``<lab>-node<index>``; also its id for BPF pins."""
    uplink: str
    """Its interface on the fabric (inside ``netns``)."""
    ip: str
    """Its fabric address (``172.30.L.(10+index)``)."""
    pod_cidr: str
    """``10.244.<index>.0/24``."""
    pod_gateway: str
    """``10.244.<index>.1``: the address on every host-side veth; pods route via it."""

    @property
    def id(self) -> str:
        """A host-unique node id (the namespace name), e.g. for ``/sys/fs/bpf/ambient/<id>``."""
        return self.netns


@dataclass(frozen=True)
class Pod:
    """A pod: a namespace attached to its node by a veth pair."""

    name: str
    namespace: str
    """Kubernetes namespace."""
    node: str
    """Name of its node."""
    netns: str
    """Its network namespace."""
    ip: str
    """Its address (``/32`` on ``ifname``)."""
    host_ifname: str
    """Host side of its veth, inside the node's namespace."""
    uid: str
    """Kubernetes uid, stable for the pod's life."""
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ifname: str = "eth0"
    """Its interface inside its own namespace."""

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service."""

    port: int
    """The port on the VIP."""
    target_port: int
    """The port on the pods."""
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Service:
    """A ClusterIP Service: a VIP in ``10.96.0.0/16`` and a pod selector."""

    name: str
    namespace: str
    vip: str
    selector: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[ServicePort, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ProcessRecord:
    """A process the lab started, as saved in the state (for status and teardown)."""

    name: str
    pid: int
    netns: str
    argv: tuple[str, ...]
    log: str
    """Path of its log file."""
    start_time: int
    """Its start time in clock ticks (``/proc/<pid>/stat`` field 22): tells a reused pid."""


@dataclass
class LabState:
    """Everything a lab made, saved as JSON after every change.

    Namespaces and ``/etc/netns`` folders are recorded *before* they are created, so
    teardown after a crash finds them even when the crash came mid-step.
    """

    name: str
    octet: int
    node_count: int
    run_dir: str
    config_dir: str
    keep_logs: bool = False
    has_outside: bool = True
    """Whether the ``outside`` host was built."""
    netns: list[str] = field(default_factory=list)
    etc_netns: list[str] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    """Kubernetes namespace name -> labels."""
    pods: dict[str, Pod] = field(default_factory=dict)
    """``namespace/name`` -> pod."""
    services: dict[str, Service] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    """Process name -> record."""
    phase: str = "building"
    """``building``, ``ready`` or ``destroying``."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the whole state."""
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "octet": self.octet,
            "node_count": self.node_count,
            "run_dir": self.run_dir,
            "config_dir": self.config_dir,
            "keep_logs": self.keep_logs,
            "has_outside": self.has_outside,
            "phase": self.phase,
            "netns": list(self.netns),
            "etc_netns": list(self.etc_netns),
            "namespaces": {k: dict(v) for k, v in self.namespaces.items()},
            "pods": {k: _pod_to_json(p) for k, p in self.pods.items()},
            "services": {k: _service_to_json(s) for k, s in self.services.items()},
            "processes": {k: _process_to_json(p) for k, p in self.processes.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabState:
        """The state saved by :meth:`to_json`."""
        return cls(
            name=str(data["name"]),
            octet=int(data["octet"]),
            node_count=int(data["node_count"]),
            run_dir=str(data["run_dir"]),
            config_dir=str(data["config_dir"]),
            keep_logs=bool(data.get("keep_logs", False)),
            has_outside=bool(data.get("has_outside", True)),
            phase=str(data.get("phase", "ready")),
            netns=[str(n) for n in data.get("netns", [])],
            etc_netns=[str(n) for n in data.get("etc_netns", [])],
            namespaces={
                str(k): {str(a): str(b) for a, b in v.items()}
                for k, v in data.get("namespaces", {}).items()
            },
            pods={str(k): _pod_from_json(v) for k, v in data.get("pods", {}).items()},
            services={str(k): _service_from_json(v) for k, v in data.get("services", {}).items()},
            processes={str(k): _process_from_json(v) for k, v in data.get("processes", {}).items()},
        )


def _pod_to_json(pod: Pod) -> dict[str, Any]:
    return {
        "name": pod.name,
        "namespace": pod.namespace,
        "node": pod.node,
        "netns": pod.netns,
        "ip": pod.ip,
        "host_ifname": pod.host_ifname,
        "uid": pod.uid,
        "service_account": pod.service_account,
        "labels": dict(pod.labels),
        "ifname": pod.ifname,
    }


def _pod_from_json(data: Mapping[str, Any]) -> Pod:
    return Pod(
        name=str(data["name"]),
        namespace=str(data["namespace"]),
        node=str(data["node"]),
        netns=str(data["netns"]),
        ip=str(data["ip"]),
        host_ifname=str(data["host_ifname"]),
        uid=str(data["uid"]),
        service_account=str(data["service_account"]),
        labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
        ifname=str(data.get("ifname", "eth0")),
    )


def _service_to_json(svc: Service) -> dict[str, Any]:
    return {
        "name": svc.name,
        "namespace": svc.namespace,
        "vip": svc.vip,
        "selector": dict(svc.selector),
        "labels": dict(svc.labels),
        "ports": [
            {"port": p.port, "target_port": p.target_port, "name": p.name, "protocol": p.protocol}
            for p in svc.ports
        ],
    }


def _service_from_json(data: Mapping[str, Any]) -> Service:
    return Service(
        name=str(data["name"]),
        namespace=str(data["namespace"]),
        vip=str(data["vip"]),
        selector={str(k): str(v) for k, v in data.get("selector", {}).items()},
        labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
        ports=tuple(
            ServicePort(
                port=int(p["port"]),
                target_port=int(p["target_port"]),
                name=str(p.get("name", "")),
                protocol=str(p.get("protocol", "TCP")),
            )
            for p in data.get("ports", [])
        ),
    )


def _process_to_json(proc: ProcessRecord) -> dict[str, Any]:
    return {
        "name": proc.name,
        "pid": proc.pid,
        "netns": proc.netns,
        "argv": list(proc.argv),
        "log": proc.log,
        "start_time": proc.start_time,
    }


def _process_from_json(data: Mapping[str, Any]) -> ProcessRecord:
    return ProcessRecord(
        name=str(data["name"]),
        pid=int(data["pid"]),
        netns=str(data["netns"]),
        argv=tuple(str(a) for a in data.get("argv", [])),
        log=str(data["log"]),
        start_time=int(data.get("start_time", 0)),
    )
