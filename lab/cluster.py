"""The lab: a Kubernetes-like cluster of network namespaces on one machine.

``Lab.create(LabSpec(...))`` builds the fabric, the nodes and ``outside``; pods,
namespaces and Services are added through the API, which also writes the Kubernetes
objects a control plane reads. Used as a context manager it always tears down.
``Lab.attach(name)`` acts on a lab another process built; ``Lab.destroy_by_name(name)``
removes one, also after its builder was killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from lab import dns, network, objects, plan, processes
from lab.errors import (
    LabError,
    LabExistsError,
    LabNotFoundError,
    LabProcessError,
    LabSpecError,
    NoSuchObjectError,
)
from lab.model import Host, LabState, Node, Pod, Service, ServicePort
from lab.processes import STOP_TIMEOUT, LabProcess
from lab.state import StateStore
from lab.teardown import TeardownReport, teardown

DEFAULT_RUN_ROOT = Path("/run/ambient/lab")
EXEC_TIMEOUT = 60.0
READY_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parent.parent

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # loose source checks: ztunnel answers for pod addresses that are not its own
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}
HOST_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}

WORKLOADS = ("http_echo", "tcp_echo", "client")
"""Programs under ``lab/workloads/`` that :meth:`Lab.start_workload` runs."""

Target = Pod | Node | Host | str


@dataclass(frozen=True)
class LabSpec:
    """What lab to build (the lab's one configuration object)."""

    name: str = "lab"
    """Prefix of every namespace (``<name>-...``); letters and digits, at most 12."""
    nodes: int = 2
    """Number of nodes, ``node1`` .. ``node<nodes>``."""
    run_root: Path = DEFAULT_RUN_ROOT
    """The lab's state, logs and config folder live in ``<run_root>/<name>/``."""
    octet: int | None = None
    """Third octet of the fabric subnet ``172.30.<octet>.0/24``; None derives it from name."""
    outside: bool = True
    """Whether to create the ``outside`` host on the fabric."""
    keep_logs: bool = False
    """Keep ``<run_dir>/logs/`` at teardown (everything else is removed)."""
    python: str = sys.executable
    """Interpreter that runs workload programs (and ``python`` in :meth:`Lab.exec`)."""

    def __post_init__(self) -> None:
        plan.validate_lab_name(self.name)
        plan.validate_node_count(self.nodes)
        if self.octet is not None:
            plan.AddressPlan(self.octet)


class Lab:
    """A running lab. Build it with :meth:`create`; find one with :meth:`attach`."""

    def __init__(self, state: LabState, *, python: str = sys.executable) -> None:
        """Wraps a saved state; use :meth:`create` or :meth:`attach` instead."""
        self._state = state
        self._store = StateStore(Path(state.run_dir))
        self._plan = plan.AddressPlan(state.octet)
        self._python = python
        self._procs: dict[str, LabProcess] = {}
        self._destroyed = False

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def create(cls, spec: LabSpec) -> Lab:
        """Builds the fabric, the nodes and ``outside``; tears down what it made on failure."""
        run_dir = spec.run_root / spec.name
        store = StateStore(run_dir)
        taken = [n for n in network.list_netns() if n.startswith(plan.netns_prefix(spec.name))]
        if store.exists() or taken:
            raise LabExistsError(
                f"a lab named {spec.name!r} already exists"
                + (f" (namespaces {', '.join(taken[:4])})" if taken else f" ({run_dir})"),
                hint=f"remove it with 'ambient lab down --name {spec.name}' or pick another name",
            )
        octet = plan.AddressPlan.for_lab(spec.name, spec.octet).octet
        state = LabState(
            name=spec.name,
            octet=octet,
            node_count=spec.nodes,
            run_dir=str(run_dir),
            config_dir=str(run_dir / "config"),
            keep_logs=spec.keep_logs,
            has_outside=spec.outside,
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "config").mkdir(exist_ok=True)
        lab = cls(state, python=spec.python)
        try:
            with lab._store.locked():
                lab._store.save(state)
            lab._build(outside=spec.outside)
        except BaseException:
            lab.destroy()
            raise
        return lab

    @classmethod
    def attach(cls, name: str, run_root: Path = DEFAULT_RUN_ROOT) -> Lab:
        """The lab ``name`` built by any process (from its saved state)."""
        plan.validate_lab_name(name)
        store = StateStore(run_root / name)
        if not store.exists():
            raise LabNotFoundError(
                f"no lab named {name!r} under {run_root}",
                hint="start one with 'ambient lab up --name " + name + "'",
            )
        lab_class = cls
        if cls is Lab and (store.run_dir / "remote.json").is_file():
            from lab.remote import RemoteLab  # one node of a multi-machine lab (lab/remote.py)

            lab_class = RemoteLab
        lab = lab_class(store.load())
        for rec in lab._state.processes.values():
            lab._procs[rec.name] = LabProcess.from_record(rec)
        return lab

    @staticmethod
    def list_labs(run_root: Path = DEFAULT_RUN_ROOT) -> list[str]:
        """Names of the labs with a saved state under ``run_root``."""
        if not run_root.is_dir():
            return []
        return sorted(p.name for p in run_root.iterdir() if StateStore(p).exists())

    @staticmethod
    def destroy_by_name(
        name: str, run_root: Path = DEFAULT_RUN_ROOT, *, keep_logs: bool | None = None
    ) -> TeardownReport:
        """Removes everything of lab ``name``: processes, namespaces, files, run folder.

        Works from the saved state when there is one and by the name prefix in any case,
        so it also cleans up after a builder that was killed with SIGKILL.
        """
        plan.validate_lab_name(name)
        store = StateStore(run_root / name)
        state: LabState | None = None
        with contextlib.suppress(LabError):
            state = store.load()
        from lab.remote import restore_uplink  # a remote node's uplink goes back first

        with contextlib.suppress(LabError):
            restore_uplink(store.run_dir)
        return teardown(name, store.run_dir, state, keep_logs)

    def destroy(self) -> TeardownReport:
        """Tears the lab down (idempotent).

        Every process in the lab's namespaces is signalled at once (not one by one), then
        the children this process started are reaped so none is left a zombie.
        """
        report = teardown(self.name, self.run_dir, self._state_or_none(), None)
        for proc in self._procs.values():
            if proc.popen is not None:
                with contextlib.suppress(LabProcessError):
                    processes.stop(proc)
        self._destroyed = True
        return report

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # ------------------------------------------------------------------ views

    @property
    def name(self) -> str:
        """The lab's name (prefix of its namespaces)."""
        return self._state.name

    @property
    def run_dir(self) -> Path:
        """Folder of the lab's state, logs and config."""
        return Path(self._state.run_dir)

    @property
    def config_dir(self) -> Path:
        """Folder of Namespace/Pod/Service YAML, one object per file."""
        return Path(self._state.config_dir)

    @property
    def logs_dir(self) -> Path:
        """Folder of the logs of the processes the lab started."""
        return self.run_dir / "logs"

    @property
    def address_plan(self) -> plan.AddressPlan:
        """The lab's addresses."""
        return self._plan

    @property
    def python(self) -> str:
        """Interpreter used for workloads and for ``python`` in :meth:`exec`."""
        return self._python

    @property
    def nodes(self) -> list[Node]:
        """The nodes, ``node1`` first."""
        return [self._node(i) for i in range(1, self._state.node_count + 1)]

    @property
    def fabric(self) -> Host:
        """The fabric namespace (bridge ``br0``, address ``172.30.L.1``)."""
        return Host(
            name="fabric",
            netns=plan.fabric_netns(self.name),
            ip=self._plan.fabric_ip,
            ifname=plan.BRIDGE_IFNAME,
        )

    @property
    def outside(self) -> Host:
        """The ``outside`` host: on the fabric, in no mesh, routes to every pod CIDR."""
        if not self._state.has_outside:
            raise NoSuchObjectError(
                f"lab {self.name!r} was built without the outside host",
                hint="build it with LabSpec(outside=True) (the default)",
            )
        return Host(
            name="outside",
            netns=plan.outside_netns(self.name),
            ip=self._plan.outside_ip,
            ifname=plan.NODE_UPLINK_IFNAME,
        )

    @property
    def pods(self) -> list[Pod]:
        """Every pod, in creation order."""
        self.refresh()
        return list(self._state.pods.values())

    @property
    def services(self) -> list[Service]:
        """Every Service."""
        self.refresh()
        return list(self._state.services.values())

    @property
    def namespaces(self) -> dict[str, dict[str, str]]:
        """Kubernetes namespaces and their labels."""
        self.refresh()
        return {k: dict(v) for k, v in self._state.namespaces.items()}

    @property
    def processes(self) -> list[LabProcess]:
        """Processes started through this lab (by any process), alive or not."""
        return list(self._procs.values())

    def node(self, ref: str | int) -> Node:
        """A node by name (``node1``) or index (1)."""
        index = ref if isinstance(ref, int) else plan.node_index(ref)
        if index is None or not 1 <= index <= self._state.node_count:
            raise NoSuchObjectError(
                f"lab {self.name!r} has no node {ref!r}",
                hint=f"nodes are node1..node{self._state.node_count}",
            )
        return self._node(index)

    def pod(self, ref: Pod | str) -> Pod:
        """A pod by object, ``namespace/name``, or a name unique across namespaces.

        A Deployment's name (``demo/frontend``) stands for its first pod, as in
        ``kubectl exec deploy/frontend``, when no pod has that name.
        """
        self.refresh()
        if isinstance(ref, Pod):
            ref = ref.key
        if "/" in ref:
            found = self._state.pods.get(ref)
            if found is None:
                namespace, _, name = ref.partition("/")
                replicas = self._replicas(namespace, name)
                if replicas:
                    return replicas[0]
                raise NoSuchObjectError(f"lab {self.name!r} has no pod {ref!r}")
            return found
        matches = [p for p in self._state.pods.values() if p.name == ref]
        if not matches:
            replicas = self._replicas(None, ref)
            matches = replicas if len({p.namespace for p in replicas}) > 1 else replicas[:1]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NoSuchObjectError(
                f"lab {self.name!r} has no pod named {ref!r}",
                hint="list pods with 'ambient lab status --name " + self.name + "'",
            )
        raise NoSuchObjectError(
            f"pod name {ref!r} is in several namespaces",
            hint="say which: " + ", ".join(p.key for p in matches),
        )

    def _replicas(self, namespace: str | None, deployment: str) -> list[Pod]:
        """Pods named like a Deployment's (``<deployment>-<hash>-<5 chars>``), by key."""
        pattern = re.compile(rf"^{re.escape(deployment)}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}$")
        return sorted(
            (
                p
                for p in self._state.pods.values()
                if (namespace is None or p.namespace == namespace)
                and "pod-template-hash" in p.labels
                and pattern.match(p.name)
            ),
            key=lambda p: p.key,
        )

    def service(self, ref: Service | str, namespace: str = "default") -> Service:
        """A Service by object, ``namespace/name``, or name in ``namespace``."""
        self.refresh()
        key = ref.key if isinstance(ref, Service) else ref if "/" in ref else f"{namespace}/{ref}"
        found = self._state.services.get(key)
        if found is None:
            raise NoSuchObjectError(f"lab {self.name!r} has no Service {key!r}")
        return found

    def refresh(self) -> None:
        """Re-reads the saved state (another process may have changed the lab)."""
        if self._store.exists():
            self._state = self._store.load()
            for rec in self._state.processes.values():
                known = self._procs.get(rec.name)
                if known is None or (known.pid != rec.pid and known.popen is None):
                    self._procs[rec.name] = LabProcess.from_record(rec)

    def describe(self) -> dict[str, Any]:
        """Everything about the lab as JSON-able data (``ambient lab status -o json``)."""
        self.refresh()
        present = set(network.list_netns())
        return {
            "name": self.name,
            "phase": self._state.phase,
            "missing_netns": [n for n in self._state.netns if n not in present],
            "run_dir": str(self.run_dir),
            "config_dir": str(self.config_dir),
            "fabric": {
                "netns": self.fabric.netns,
                "ip": self.fabric.ip,
                "cidr": str(self._plan.fabric_cidr),
            },
            "outside": (
                {"netns": self.outside.netns, "ip": self.outside.ip}
                if self._state.has_outside
                else None
            ),
            "nodes": [
                {
                    "name": n.name,
                    "netns": n.netns,
                    "ip": n.ip,
                    "uplink": n.uplink,
                    "pod_cidr": n.pod_cidr,
                }
                for n in self.nodes
            ],
            "namespaces": self.namespaces,
            "pods": [
                {
                    "name": p.name,
                    "namespace": p.namespace,
                    "node": p.node,
                    "ip": p.ip,
                    "netns": p.netns,
                    "host_ifname": p.host_ifname,
                    "labels": dict(p.labels),
                    "service_account": p.service_account,
                }
                for p in self.pods
            ],
            "services": [
                {
                    "name": s.name,
                    "namespace": s.namespace,
                    "vip": s.vip,
                    "selector": dict(s.selector),
                    "ports": [f"{p.port}->{p.target_port}/{p.protocol}" for p in s.ports],
                }
                for s in self.services
            ],
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "netns": p.netns,
                    "alive": p.alive(),
                    "log": str(p.log_path),
                }
                for p in self.processes
            ],
        }

    # ------------------------------------------------------------------ cluster objects

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, str]:
        """Adds a Kubernetes namespace (or sets the labels of an existing one)."""
        plan.validate_k8s_name(name, "namespace")
        with self._mutate() as state:
            merged = {**state.namespaces.get(name, {}), **dict(labels or {})}
            state.namespaces[name] = merged
            objects.write_object(self.config_dir, objects.namespace_object(name, merged))
        return dict(merged)

    def set_namespace_labels(
        self, name: str, labels: Mapping[str, str | None], *, replace_all: bool = False
    ) -> dict[str, str]:
        """Changes a namespace's labels (a None value removes a key) and rewrites its file."""
        with self._mutate() as state:
            if name not in state.namespaces:
                raise NoSuchObjectError(f"lab {self.name!r} has no namespace {name!r}")
            merged = _merge_labels({} if replace_all else state.namespaces[name], labels)
            state.namespaces[name] = merged
            objects.write_object(self.config_dir, objects.namespace_object(name, merged))
        return dict(merged)

    def remove_namespace(self, name: str) -> None:
        """Deletes a Kubernetes namespace with its pods, Services and ServiceAccount files."""
        if name == "default":
            raise LabSpecError(
                "the namespace 'default' cannot be deleted", hint="delete its objects"
            )
        for pod in [p for p in self.pods if p.namespace == name]:
            self.remove_pod(pod)
        for svc in [s for s in self.services if s.namespace == name]:
            self.remove_service(svc)
        with self._mutate() as state:
            if state.namespaces.pop(name, None) is None:
                raise NoSuchObjectError(f"lab {self.name!r} has no namespace {name!r}")
            objects.remove_object(self.config_dir, "Namespace", name)
            for path in self.config_dir.glob(f"serviceaccount.{name}.*.yaml"):
                path.unlink(missing_ok=True)

    def add_pod(
        self,
        name: str,
        *,
        namespace: str = "default",
        node: str | int | Node = "node1",
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
    ) -> Pod:
        """Creates a pod: its namespace, veth pair, routes, DNS files and Pod object."""
        plan.validate_k8s_name(name, "pod")
        plan.validate_k8s_name(namespace, "namespace")
        plan.validate_k8s_name(service_account, "service account")
        the_node = node if isinstance(node, Node) else self.node(node)
        if namespace not in self.namespaces:
            self.add_namespace(namespace)
        with self._mutate() as state:
            key = f"{namespace}/{name}"
            if key in state.pods:
                raise LabExistsError(f"pod {key} already exists in lab {self.name!r}")
            on_node = [p for p in state.pods.values() if p.node == the_node.name]
            ifname = plan.host_ifname(namespace, name)
            if any(p.host_ifname == ifname for p in on_node):
                raise LabSpecError(f"veth name {ifname} of pod {key} clashes on {the_node.name}")
            pod = Pod(
                name=name,
                namespace=namespace,
                node=the_node.name,
                netns=plan.pod_netns(self.name, namespace, name),
                ip=plan.allocate_pod_ip(the_node.index, [p.ip for p in on_node]),
                host_ifname=ifname,
                uid=str(uuid.uuid4()),
                service_account=service_account,
                labels=dict(labels or {}),
            )
            # recorded before creation, so a crash mid-way still leaves a trail to clean
            state.netns.append(pod.netns)
            state.etc_netns.append(pod.netns)
            self._store.save(state)
            try:
                network.create_netns(pod.netns)
                dns.write_pod_files(pod, state.services.values())
                network.attach_pod(
                    node=the_node.netns,
                    pod=pod.netns,
                    host_ifname=pod.host_ifname,
                    pod_ifname=pod.ifname,
                    pod_ip=pod.ip,
                    gateway=the_node.pod_gateway,
                )
            except BaseException:
                dns.remove_pod_files(pod.netns)
                network.delete_netns(pod.netns)
                state.netns.remove(pod.netns)
                state.etc_netns.remove(pod.netns)
                self._store.save(state)
                raise
            state.pods[key] = pod
            objects.write_object(
                self.config_dir, objects.service_account_object(service_account, namespace)
            )
            objects.write_object(self.config_dir, objects.pod_object(pod, the_node))
        return pod

    def set_pod_labels(
        self, pod: Pod | str, labels: Mapping[str, str | None], *, replace_all: bool = False
    ) -> Pod:
        """Changes a pod's labels (a None value removes a key) and rewrites its Pod object."""
        key = self.pod(pod).key
        with self._mutate() as state:
            old = state.pods[key]
            new = replace(old, labels=_merge_labels({} if replace_all else old.labels, labels))
            state.pods[key] = new
            objects.write_object(self.config_dir, objects.pod_object(new, self.node(new.node)))
        return new

    def set_service_labels(
        self, service: Service | str, labels: Mapping[str, str | None], *, replace_all: bool = False
    ) -> Service:
        """Changes a Service's labels (a None value removes a key) and rewrites its object,
        as ``kubectl label service`` does (``istio.io/use-waypoint``, ...); the VIP stays."""
        key = self.service(service).key
        with self._mutate() as state:
            old = state.services[key]
            new = replace(old, labels=_merge_labels({} if replace_all else old.labels, labels))
            state.services[key] = new
            objects.write_object(self.config_dir, objects.service_object(new))
        return new

    def remove_pod(self, pod: Pod | str) -> None:
        """Deletes a pod: its processes, namespace (and veth), DNS files and Pod object."""
        key = self.pod(pod).key
        with self._mutate() as state:
            gone = state.pods.pop(key)
            objects.remove_object(self.config_dir, "Pod", gone.name, gone.namespace)
            for proc in [p for p in self._procs.values() if p.netns == gone.netns]:
                with contextlib.suppress(LabProcessError):
                    processes.stop(proc)
                state.processes.pop(proc.name, None)
            processes.kill_pids(processes.pids_in_netns([gone.netns]))
            network.delete_netns(gone.netns)
            dns.remove_pod_files(gone.netns)
            with contextlib.suppress(ValueError):
                state.netns.remove(gone.netns)
            with contextlib.suppress(ValueError):
                state.etc_netns.remove(gone.netns)

    def add_service(
        self,
        name: str,
        *,
        namespace: str = "default",
        selector: Mapping[str, str],
        ports: Sequence[ServicePort],
        labels: Mapping[str, str] | None = None,
        vip: str | None = None,
    ) -> Service:
        """Adds a ClusterIP Service (VIP from ``10.96.0.0/16``) and makes pods resolve it."""
        plan.validate_k8s_name(name, "service")
        plan.validate_k8s_name(namespace, "namespace")
        if not ports:
            raise LabSpecError(f"Service {namespace}/{name} needs at least one port")
        if namespace not in self.namespaces:
            self.add_namespace(namespace)
        with self._mutate() as state:
            key = f"{namespace}/{name}"
            if key in state.services:
                raise LabExistsError(f"Service {key} already exists in lab {self.name!r}")
            used = [s.vip for s in state.services.values()]
            if vip is not None and vip in used:
                raise LabSpecError(f"VIP {vip} is already used by another Service")
            svc = Service(
                name=name,
                namespace=namespace,
                vip=vip or plan.allocate_vip(used),
                selector=dict(selector),
                ports=tuple(ports),
                labels=dict(labels or {}),
            )
            state.services[key] = svc
            objects.write_object(self.config_dir, objects.service_object(svc))
            for pod in state.pods.values():
                dns.write_pod_files(pod, state.services.values())
        return svc

    def remove_service(self, svc: Service | str, namespace: str = "default") -> None:
        """Deletes a Service, its file and its names."""
        key = self.service(svc, namespace).key
        with self._mutate() as state:
            gone = state.services.pop(key)
            objects.remove_object(self.config_dir, "Service", gone.name, gone.namespace)
            for pod in state.pods.values():
                dns.write_pod_files(pod, state.services.values())

    # ------------------------------------------------------------------ processes

    def exec(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        timeout: float = EXEC_TIMEOUT,
        check: bool = False,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command to completion in a pod, node, ``outside`` or ``fabric``.

        Pods run under ``ip netns exec`` (their hosts/resolv.conf apply); nodes and hosts
        under ``nsenter --net``. ``python`` as the program means the lab's interpreter.
        """
        netns, _ = self._enter(target)
        full, full_env = self.command(target, argv, env)
        try:
            done = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                cwd=REPO_ROOT,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise LabProcessError(
                f"command {' '.join(argv)!r} in {netns} did not finish within {timeout:.0f}s"
            ) from err
        if check and done.returncode != 0:
            raise LabProcessError(
                f"command {' '.join(argv)!r} in {netns} failed with code {done.returncode}",
                hint=(done.stderr or done.stdout).strip()[-2000:] or None,
            )
        return done

    def command(
        self, target: Target, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The full command line and environment :meth:`exec` would run (for callers that
        want the output streamed rather than captured, like ``ambient lab exec``)."""
        _, enter = self._enter(target)
        return [*enter, *self._argv(argv)], self._env(env)

    def spawn(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Starts a long-running process in a pod, node or host; logs to ``logs/<name>.log``."""
        netns, enter = self._enter(target)
        if not name or "/" in name:
            raise LabSpecError(f"process name {name!r} must be non-empty and contain no '/'")
        self.refresh()
        if name in self._procs and self._procs[name].alive():
            raise LabExistsError(f"a process named {name!r} already runs in lab {self.name!r}")
        proc = processes.spawn(
            enter,
            netns,
            self._argv(argv),
            name=name,
            log_path=self.logs_dir / f"{name}.log",
            env=self._env(env),
            cwd=REPO_ROOT,
        )
        self._procs[name] = proc
        with self._mutate() as state:
            state.processes[name] = proc.record()
        return proc

    def spawn_in_node(
        self,
        node: Node | str | int,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Starts a node process (agent, ztunnel) in the node's network namespace only.

        No new mount namespace: the process sees the host's ``/sys/fs/bpf``.
        """
        the_node = node if isinstance(node, Node) else self.node(node)
        return self.spawn(the_node, argv, name=name, env=env)

    def start_workload(
        self,
        pod: Pod | str,
        program: str,
        args: Sequence[str] = (),
        *,
        name: str | None = None,
        wait_port: int | None = None,
        timeout: float = READY_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Runs ``python -m lab.workloads.<program> args`` in a pod.

        ``program`` is ``http-echo``, ``tcp-echo`` or ``client`` (``_`` works too). For the
        servers, the call returns once the port they listen on accepts (``wait_port``
        overrides the port read from their arguments). ``http-echo`` without a text
        answers ``Hello from <pod name>``; it reports spans to the lab's trace collector
        once one runs (``lab.workloads.spans``: the lab's ``mesh.json``, service
        ``<pod>.<namespace>`` unless ``env`` names another).
        """
        module = program.replace("-", "_")
        if module not in WORKLOADS:
            raise LabSpecError(
                f"unknown workload {program!r}", hint="use one of: " + ", ".join(WORKLOADS)
            )
        the_pod = self.pod(pod)
        args = list(args)
        if module == "http_echo" and not any(a.lstrip("-").startswith("text") for a in args):
            args.insert(0, f"--text=Hello from {the_pod.name}")
        proc_name = name or self._free_name(f"{the_pod.name}-{module.replace('_', '-')}")
        full_env = dict(env or {})
        if module == "http_echo":
            full_env.setdefault("AMBIENT_LAB_MESH", str(self.run_dir / "mesh.json"))
            full_env.setdefault("AMBIENT_TRACE_SERVICE", f"{the_pod.name}.{the_pod.namespace}")
        proc = self.spawn(
            the_pod,
            ["python", "-m", f"lab.workloads.{module}", *args],
            name=proc_name,
            env=full_env,
        )
        port = wait_port if wait_port is not None else _listen_port(module, args)
        if port is not None:
            try:
                processes.wait_listening(proc, port, timeout)
            except LabProcessError:
                self.stop(proc)
                raise
        return proc

    def stop(self, proc: LabProcess | str, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stops a process the lab started (SIGTERM, then SIGKILL); returns its exit code."""
        handle = self._procs.get(proc) if isinstance(proc, str) else proc
        if handle is None:
            raise NoSuchObjectError(f"lab {self.name!r} has no process {proc!r}")
        code = processes.stop(handle, timeout)
        with self._mutate() as state:
            state.processes.pop(handle.name, None)
        self._procs.pop(handle.name, None)
        return code

    # ------------------------------------------------------------------ internals

    def _build(self, *, outside: bool) -> None:
        fabric = self.fabric
        with self._mutate() as state:
            state.netns.append(fabric.netns)
            state.netns.extend(n.netns for n in self.nodes)
            if outside:
                state.netns.append(self.outside.netns)
        network.create_netns(fabric.netns)
        network.set_sysctls(fabric.netns, HOST_SYSCTLS)
        network.create_bridge(
            fabric.netns, plan.BRIDGE_IFNAME, fabric.ip, self._plan.fabric_prefixlen
        )
        hosts: list[tuple[str, str, str]] = [(n.netns, n.name, n.ip) for n in self.nodes]
        if outside:
            hosts.append((self.outside.netns, "outside", self.outside.ip))
        for netns, role, ip in hosts:
            network.create_netns(netns)
            network.set_sysctls(netns, NODE_SYSCTLS if role != "outside" else HOST_SYSCTLS)
            network.plug_into_bridge(
                fabric=fabric.netns,
                bridge=plan.BRIDGE_IFNAME,
                port=plan.fabric_port_ifname(role),
                host=netns,
                uplink=plan.NODE_UPLINK_IFNAME,
                ip=ip,
                prefixlen=self._plan.fabric_prefixlen,
            )
        for node in self.nodes:
            for other in self.nodes:
                if other.index != node.index:
                    network.add_route(node.netns, other.pod_cidr, other.ip)
            for netns in [fabric.netns] + ([self.outside.netns] if outside else []):
                network.add_route(netns, node.pod_cidr, node.ip)
        self.add_namespace("default")
        with self._mutate() as state:
            state.phase = "ready"

    def _node(self, index: int) -> Node:
        return Node(
            name=plan.node_name(index),
            index=index,
            netns=plan.node_netns(self.name, index),
            uplink=plan.NODE_UPLINK_IFNAME,
            ip=self._plan.node_ip(index),
            pod_cidr=str(self._plan.pod_cidr(index)),
            pod_gateway=self._plan.pod_gateway(index),
        )

    def set_outside_hosts(self, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
        """The ``outside`` host's ``/etc/hosts``: names of what it may reach from the fabric
        (the gateways, ``istio-ingressgateway.istio-system``), as a LoadBalancer's DNS
        name would resolve. Commands in ``outside`` see it from then on."""
        netns = self.outside.netns
        with self._mutate() as state:
            if netns not in state.etc_netns:
                state.etc_netns.append(netns)
        folder = dns.ETC_NETNS / netns
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{ip}\t{' '.join(names)}" for ip, names in entries]
        with open(folder / "hosts", "w") as f:  # in place: running processes see it
            f.write("\n".join(lines) + "\n")

    def _enter(self, target: Target) -> tuple[str, list[str]]:
        if isinstance(target, str):
            target = self._resolve(target)
        if isinstance(target, Pod):
            return target.netns, processes.pod_enter_argv(target.netns)
        if (
            isinstance(target, Host)
            and target.name == "outside"
            and (dns.ETC_NETNS / target.netns / "hosts").exists()
        ):
            # its hosts file (the gateways' names) applies, as for a pod
            return target.netns, processes.pod_enter_argv(target.netns)
        return target.netns, processes.node_enter_argv(target.netns)

    def _resolve(self, ref: str) -> Pod | Node | Host:
        if ref == "outside":
            return self.outside
        if ref == "fabric":
            return self.fabric
        if plan.node_index(ref) is not None:
            return self.node(ref)
        return self.pod(ref)

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if not argv:
            raise LabSpecError("no command given")
        first = self._python if argv[0] in ("python", "python3") else argv[0]
        return [first, *argv[1:]]

    @staticmethod
    def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{REPO_ROOT}:{path}" if path else str(REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def _free_name(self, base: str) -> str:
        self.refresh()
        name, n = base, 1
        while name in self._procs and self._procs[name].alive():
            n += 1
            name = f"{base}-{n}"
        return name

    def _state_or_none(self) -> LabState | None:
        try:
            return self._store.load()
        except LabError:
            return self._state

    @contextlib.contextmanager
    def _mutate(self) -> Iterator[LabState]:
        """Read-modify-write of the saved state under the lab's lock."""
        if self._destroyed:
            raise LabError(f"lab {self.name!r} was torn down")
        with self._store.locked():
            if self._store.exists():
                self._state = self._store.load()
            yield self._state
            self._store.save(self._state)


def _merge_labels(old: Mapping[str, str], change: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(old)
    for key, value in change.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _listen_port(module: str, args: Sequence[str]) -> int | None:
    if module == "http_echo":
        from lab.workloads import http_echo

        return http_echo.parse_args(list(args)).port
    if module == "tcp_echo":
        from lab.workloads import tcp_echo

        return tcp_echo.parse_args(list(args)).port
    return None
