"""The agent process: load, attach, pin once; then keep the maps in step with the cluster.

The decisions (which pods, what changed) are pure (:mod:`agent.workloads`); this shell
does the kernel work through BCC, pyroute2 and the pinned maps, and runs the watch loop.

On start the agent adopts what an earlier agent pinned: the maps are reopened with
their contents (BCC's pinned tables), the freshly compiled programs *replace* the old
ones on every interface atomically, and pods still present are not touched otherwise.
On exit it leaves everything attached and pinned (unless told to detach), so neither a
restart nor a crash drops a connection; ``ambient agent cleanup`` removes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.attach import (
    LocalDelivery,
    attach_ingress,
    detach,
    install_local_delivery,
    link_name,
    remove_local_delivery,
    route_ifindex,
    uplink_ifindex,
)
from agent.config import AgentConfig
from agent.errors import AgentError, AttachError
from agent.layout import AttachKind
from agent.metrics import AgentMetrics
from agent.nodemaps import Attachment, NodeMaps, attachments_in, settings_in
from agent.pinned import PinnedMap, remove_pins
from agent.programs import LoadedProgram, load_in_child
from agent.workloads import LocalWorkload, local_workloads, plan
from controlplane.model import ClusterState

log = logging.getLogger("agent")


def in_named_netns(run_netns: Path = Path("/run/netns")) -> str | None:
    """The name of the named network namespace this process is in (``ip netns``), if any.

    Identified positively, by comparing ``/proc/self/ns/net`` with every
    ``/run/netns/<name>``: the host's namespace is never a named one, and a process that
    cannot tell (unreadable ``/proc``, no ``/run/netns``) is not in a named one.
    """
    try:
        me = os.stat("/proc/self/ns/net")
        entries = sorted(run_netns.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            st = os.stat(entry)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return entry.name
    return None


def refuse_host_namespace(allow: bool, what: str) -> None:
    """Stops ``what`` unless it runs in a named namespace or the host's is allowed.

    Fails closed: where the namespace cannot be identified as a named one (the lab's
    node namespaces are), only ``--allow-host-namespace`` lets it change anything.
    """
    if in_named_netns() is None and not allow:
        raise AgentError(
            f"{what} refuses to run outside a named network namespace (this may be the host's own)",
            hint="run it inside the node's namespace (the lab does: "
            "nsenter --net=/run/netns/<lab>-node1), or pass --allow-host-namespace "
            "on a real node",
        )


@dataclass
class Applied:
    """What this agent process has put in place for one pod."""

    workload: LocalWorkload
    ifindex: int
    ifname: str
    attached_here: bool = False


@dataclass
class Agent:
    """One node's agent. ``ipr`` is a pyroute2 IPRoute of the agent's own namespace."""

    config: AgentConfig
    ipr: Any
    metrics: AgentMetrics | None = None
    programs: dict[str, LoadedProgram] = field(default_factory=dict)
    maps: NodeMaps | None = None
    applied: dict[str, Applied] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    uplink: int = 0

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Loads and pins the programs, opens the maps, routes, attaches the uplink."""
        refuse_host_namespace(self.config.allow_host_namespace, "ambient agent run")
        pin_dir = self.config.pin_dir
        self.programs = load_in_child(pin_dir)
        self.maps = NodeMaps(pin_dir)
        self.maps.write_settings(self.config.capture)
        install_local_delivery(self.ipr, self.config.local_delivery)
        self.uplink = uplink_ifindex(self.ipr, self.config.uplink)
        attach_ingress(self.ipr, self.uplink, self.programs["node_ingress"].fd, "node_ingress")
        self.maps.record_attachment(
            Attachment(
                self.uplink,
                link_name(self.ipr, self.uplink) or "?",
                AttachKind.NODE_INGRESS,
                None,
                self.config.node_name,
            )
        )
        recorded = {a.ifindex: a.ifname for a in self.maps.attachments_list()}
        for ip, (workload, ifindex) in self.maps.applied_workloads().items():
            self.applied[ip] = Applied(workload, ifindex, recorded.get(ifindex, "?"))
        log.info(
            "started node=%s node_id=%s pin_dir=%s uplink=%s adopted=%d excluded_namespaces=%s",
            self.config.node_name,
            self.config.node_id,
            pin_dir,
            link_name(self.ipr, self.uplink),
            len(self.applied),
            ",".join(sorted(self.config.excluded_namespaces)) or "-",
        )

    # ------------------------------------------------------------------ sync

    def apply(self, state: ClusterState) -> None:
        """Brings programs and maps in step with ``state`` (idempotent)."""
        assert self.maps is not None
        desired = local_workloads(state, self.config.node_name, self.config.excluded_namespaces)
        changes = plan(desired, {ip: a.workload for ip, a in self.applied.items()})
        for workload in changes.remove:
            self._forget(workload)
        self.pending = set()
        for ip, workload in desired.items():
            current = self.applied.get(ip)
            try:
                # every pass: a pod recreated with the same address has a new veth
                ifindex, ifname = self._attach_pod(workload, current)
            except AttachError as err:
                self.pending.add(ip)
                if self.metrics is not None:
                    self.metrics.attach_failures.inc()
                log.warning("attach failed pod=%s ip=%s error=%s", workload.key, ip, err)
                continue
            if (
                current is not None
                and current.attached_here
                and current.workload == workload
                and (current.ifindex, current.ifname) == (ifindex, ifname)
            ):
                continue
            self.maps.write_workload(workload, ifindex, ifname)
            if current is None or current.workload != workload:
                log.info(
                    "workload pod=%s ip=%s enrolled=%s ifindex=%d",
                    workload.key,
                    ip,
                    workload.enrolled,
                    ifindex,
                )
            self.applied[ip] = Applied(workload, ifindex, ifname, attached_here=True)

    def _attach_pod(self, workload: LocalWorkload, current: Applied | None) -> tuple[int, str]:
        """Attaches to the pod's host-side interface unless already done; (ifindex, name)."""
        ifindex = route_ifindex(self.ipr, workload.ip)
        ifname = link_name(self.ipr, ifindex) if ifindex else None
        if ifindex is None or ifname is None or ifindex == self.uplink or ifname == "lo":
            raise AttachError(f"no host-side interface routes to {workload.ip} yet")
        if (
            current is None
            or not current.attached_here
            or (current.ifindex, current.ifname) != (ifindex, ifname)
        ):
            attach_ingress(self.ipr, ifindex, self.programs["pod_egress"].fd, "pod_egress")
        return ifindex, ifname

    def _forget(self, workload: LocalWorkload) -> None:
        assert self.maps is not None
        gone = self.applied.pop(workload.ip, None)
        self.maps.forget_workload(workload.ip)
        if gone is not None and link_name(self.ipr, gone.ifindex) == gone.ifname:
            # The pod's veth normally goes with it; if it stays, our program goes.
            with contextlib.suppress(AttachError):
                detach(self.ipr, gone.ifindex)
        log.info("workload removed pod=%s ip=%s", workload.key, workload.ip)

    # ------------------------------------------------------------------ run

    def run(self, stop: threading.Event) -> None:
        """Watches the cluster source and applies every change until ``stop`` is set.

        pyroute2's synchronous API runs its own event loop, so the kernel work stays on
        this thread with no loop running; the source's async watch runs on a thread of
        its own and hands each new state over a queue.
        """
        source = open_source(self.config)
        last = source.load()
        self.apply(last)
        states: queue.Queue[ClusterState | BaseException] = queue.Queue()

        async def watch() -> None:
            async for new_state in source.watch(interval=self.config.watch_interval):
                states.put(new_state)

        def watch_thread() -> None:
            try:
                asyncio.run(watch())
            except BaseException as err:  # reported on the main thread
                states.put(err)

        threading.Thread(target=watch_thread, name="source-watch", daemon=True).start()
        while not stop.is_set():
            try:
                item = states.get(timeout=self.config.retry_interval)
            except queue.Empty:
                if self.pending:
                    self.apply(last)
                continue
            if isinstance(item, BaseException):
                raise AgentError(f"the cluster source stopped: {item}") from item
            log.debug("cluster state pods=%d errors=%d", len(item.pods), len(item.errors))
            last = item
            self.apply(last)


def open_source(config: AgentConfig) -> Any:
    """The cluster source the config names: the YAML folder, or the Kubernetes API."""
    if config.config_dir is not None:
        from controlplane.sources import FolderSource

        return FolderSource(Path(config.config_dir))
    from controlplane.sources.kube import KubernetesSource, ResourceKind

    kinds = (
        ResourceKind("Namespace", "", "v1", "namespaces"),
        ResourceKind("Pod", "", "v1", "pods"),
    )
    return KubernetesSource(kubeconfig=config.kubeconfig, kinds=kinds)


def run_agent(config: AgentConfig) -> None:
    """``ambient agent run``: start, serve metrics, sync until SIGTERM/SIGINT."""
    from pyroute2 import IPRoute

    refuse_host_namespace(config.allow_host_namespace, "ambient agent run")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with IPRoute() as ipr:
        metrics = AgentMetrics(config.node_name)
        metrics.show_excluded_namespaces(config.excluded_namespaces)
        agent = Agent(config=config, ipr=ipr, metrics=metrics)
        agent.start()
        assert agent.maps is not None
        metrics.watch_maps(agent.maps)
        if config.metrics_port:
            metrics.serve(config.metrics_host, config.metrics_port)
        try:
            agent.run(stop)
        finally:
            if config.detach_on_exit:
                cleanup(config.pin_dir, ipr, config.local_delivery)
            log.info("stopped node=%s detached=%s", config.node_name, config.detach_on_exit)


def cleanup(pin_dir: Path, ipr: Any | None, delivery: LocalDelivery | None) -> dict[str, Any]:
    """Removes every attachment recorded under ``pin_dir``, the routing, and the pins.

    ``ipr`` is the node's namespace (None when it is gone: its interfaces went with it).
    An interface is detached only if it still carries the name the agent recorded.
    """
    report: dict[str, Any] = {"pin_dir": str(pin_dir), "detached": [], "unpinned": []}
    # Each map is opened on its own: a partial or older pin folder still gets cleaned.
    if ipr is not None and (pin_dir / "attachments").exists():
        with PinnedMap.open(pin_dir, "attachments") as table:
            for att in attachments_in(table):
                if link_name(ipr, att.ifindex) == att.ifname and detach(ipr, att.ifindex):
                    report["detached"].append(att.ifname)
    if delivery is not None and (pin_dir / "settings").exists():
        with PinnedMap.open(pin_dir, "settings") as table:
            settings = settings_in(table)
        if settings is not None:
            delivery = LocalDelivery(
                settings.mark, delivery.mask, delivery.table, delivery.priority
            )
    if ipr is not None and delivery is not None:
        remove_local_delivery(ipr, delivery)
        report["routing_removed"] = True
    report["unpinned"] = remove_pins(pin_dir)
    return report
