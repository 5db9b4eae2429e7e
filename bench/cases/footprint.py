"""Footprint: CPU and memory of each process a node and a cluster run, for requests and limits.

Not a comparison of paths: one variant (``measured``), and probes that each put the
processes in one state and read them from ``/proc`` per process:

- ``node-idle``, ``node-hold-1000``, ``node-bulk``: a 2-node lab running, on each node,
  the agent and ``ambient ztunnel run`` (supervisor and forked workers) as
  ``bench/cases/ztunnel.py`` starts them, an enrolled client pod on node1 and server pod
  on node2. Idle: nothing flows for the measurement. Hold: 1,000 keep-alive
  connections client -> server through both ztunnels, read while open. Bulk: iperf3
  with 4 streams for the measurement. For each node the agent's tree, the ztunnel
  supervisor and each worker are read on their own; the figure is the largest over
  the two nodes (and, for workers, over the workers).
- ``agent-compile``: the child the agent forks at start to compile and pin the capture
  programs (``python -m agent.programs PIN_DIR``), run to completion with its pins
  under a folder of this run's own; its peak RSS from ``wait4``.
- ``cp-100-pods``, ``cp-1000-pods``: ``ambient controlplane run`` on a folder of
  generated YAML (the lab's one-file-per-pod layout, 10 namespaces, 50 services) with 2
  real ztunnel xDS clients, as the ``controlplane`` case builds it; each measurement
  is 8 pushes (pods added and relabelled, each awaited at both clients) then an idle
  window. Only the measured control plane runs (the other is SIGSTOPped).

CPU is reported as a percentage of one core over the measurement (what a CPU request
is), memory as the resident set when read (``VmRSS``) and its peak so far (``VmHWM``).
``python -m bench.cases.footprint record RESULTS`` turns a run's ``results.json`` into
``deploy/footprint.json``, which the chart's requests and limits are checked against.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench import load
from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, register
from bench.datapath import BULK_PORT, HTTP_PORT, check_http, start_apps, tune_pod
from bench.errors import BenchError, MeasurementError
from bench.procs import NetnsProcess, descendants, parse_cpu_seconds, parse_ppid, parse_status_kb

HOLD_COUNT = 1000
CP_POD_COUNTS = {"cp-100-pods": 100, "cp-1000-pods": 1000}
CP_CHANGES = 8
"""Pushes per control-plane measurement."""
FOOTPRINT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "footprint.json"


def _pct(name: str, what: str) -> Metric:
    return Metric(name, "%", higher_is_better=False, description=f"{what}, % of one core")


def _mb(name: str, what: str) -> Metric:
    return Metric(name, "MB", higher_is_better=False, description=what)


NODE_METRICS = (
    _pct("agent_cpu_pct", "the agent (and any child) during the measurement"),
    _mb("agent_rss_mb", "the agent's resident memory (VmRSS) at the end"),
    _mb("agent_peak_mb", "the agent's peak resident memory (VmHWM) so far"),
    _pct("supervisor_cpu_pct", "ztunnel's supervisor process during the measurement"),
    _mb("supervisor_peak_mb", "ztunnel's supervisor, peak resident memory so far"),
    _pct("worker_cpu_pct", "the busiest ztunnel worker during the measurement"),
    _mb("worker_rss_mb", "the largest ztunnel worker's VmRSS at the reading"),
    _mb("worker_peak_mb", "the largest ztunnel worker's VmHWM so far"),
    _pct("ztunnel_cpu_pct", "a whole ztunnel (supervisor + workers) during the measurement"),
    _mb("ztunnel_rss_mb", "a whole ztunnel's VmRSS summed over its processes at the reading"),
    _mb(
        "ztunnel_peak_mb",
        "a whole ztunnel's VmHWM summed over its processes (an upper bound: shared "
        "pages count once per process)",
    ),
)
COMPILE_METRICS = (
    _mb(
        "compile_peak_mb",
        "peak resident memory of the agent's compile child (BCC + LLVM; it exits once "
        "the programs are pinned, but counts against the agent container's limit)",
    ),
    Metric(
        "compile_cpu_s",
        "s",
        higher_is_better=False,
        description="CPU seconds of that child: the agent's start-up cost",
    ),
)
CP_METRICS = (
    _pct("cp_cpu_pct", f"the control plane over {CP_CHANGES} pushes and an idle window"),
    _pct("cp_idle_cpu_pct", "the control plane while nothing changes (folder polling)"),
    _mb("cp_rss_mb", "the control plane's VmRSS at the end"),
    _mb("cp_peak_mb", "the control plane's VmHWM so far"),
    Metric(
        "push_p50_ms",
        "ms",
        higher_is_better=False,
        description="median time from a file rename until both clients accepted it",
    ),
)


@dataclass(frozen=True)
class ProcReading:
    """One process's CPU seconds so far and memory, from ``/proc``."""

    pid: int
    cpu_s: float
    rss_mb: float
    peak_mb: float


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def read_tree(root: int) -> list[ProcReading]:
    """``root`` then each of its descendants, read one by one (empty when it is gone)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            text = _read(f"/proc/{entry.name}/stat")
            if text is not None:
                with contextlib.suppress(ValueError, IndexError):
                    parents[int(entry.name)] = parse_ppid(text)
    if root not in parents:
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in descendants(root, parents):
        stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
        if stat is None or status is None:
            continue
        with contextlib.suppress(ValueError, IndexError):
            out.append(
                ProcReading(
                    pid,
                    parse_cpu_seconds(stat, ticks, with_children=True),
                    parse_status_kb(status, "VmRSS") / 1000,
                    parse_status_kb(status, "VmHWM") / 1000,
                )
            )
    return out


@dataclass(frozen=True)
class NodeReading:
    """One node's agent tree and ztunnel tree (supervisor first), read at one moment."""

    agent: list[ProcReading]
    ztunnel: list[ProcReading]


def node_figures(
    before: NodeReading, after: NodeReading, wall_s: float, held: NodeReading | None = None
) -> dict[str, float]:
    """One node's figures over a measurement of ``wall_s`` (pure).

    CPU is the growth between the two readings per PID (a process that was not there
    before counts from zero); memory is read from ``held`` when given (the hold probe's
    reading while the connections are open), else from ``after``.
    """
    if wall_s <= 0:
        raise MeasurementError(f"a footprint measurement lasted {wall_s} s")
    mem = held or after

    def cpu(procs_before: list[ProcReading], procs_after: list[ProcReading]) -> dict[int, float]:
        old = {p.pid: p.cpu_s for p in procs_before}
        return {p.pid: 100.0 * (p.cpu_s - old.get(p.pid, 0.0)) / wall_s for p in procs_after}

    if not after.ztunnel or not after.agent or not mem.ztunnel:
        raise MeasurementError("a node's agent or ztunnel was gone at the reading")
    zt_cpu = cpu(before.ztunnel, after.ztunnel)
    supervisor = after.ztunnel[0].pid
    workers = [p for p in mem.ztunnel if p.pid != supervisor]
    worker_cpu = [v for pid, v in zt_cpu.items() if pid != supervisor]
    return {
        "agent_cpu_pct": sum(cpu(before.agent, after.agent).values()),
        "agent_rss_mb": sum(p.rss_mb for p in after.agent),
        "agent_peak_mb": sum(p.peak_mb for p in after.agent),
        "supervisor_cpu_pct": zt_cpu[supervisor],
        "supervisor_peak_mb": mem.ztunnel[0].peak_mb,
        "worker_cpu_pct": max(worker_cpu, default=0.0),
        "worker_rss_mb": max((p.rss_mb for p in workers), default=0.0),
        "worker_peak_mb": max((p.peak_mb for p in workers), default=0.0),
        "ztunnel_cpu_pct": sum(zt_cpu.values()),
        "ztunnel_rss_mb": sum(p.rss_mb for p in mem.ztunnel),
        "ztunnel_peak_mb": sum(p.peak_mb for p in mem.ztunnel),
    }


def worst_of(per_node: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's largest value over the nodes."""
    return {key: max(figures[key] for figures in per_node) for key in per_node[0]}


@dataclass
class NodeProcs:
    """The PIDs of one lab node's agent and ztunnel."""

    name: str
    agent_pid: int
    ztunnel_pid: int

    def read(self) -> NodeReading:
        """Both trees, now."""
        return NodeReading(read_tree(self.agent_pid), read_tree(self.ztunnel_pid))


@register
class Footprint(Case):
    """CPU and memory per process of the node (agent, ztunnel) and the control plane."""

    name = "footprint"
    description = (
        "CPU (% of a core) and resident memory of each process the chart runs: the "
        "agent, ztunnel's supervisor and each worker (idle, 1,000 open connections, "
        "4-stream bulk), and the control plane at 100 and 1,000 pods (pushes, idle). "
        "The figures the chart's requests and limits are set from (deploy/footprint.json)."
    )
    data_path = (
        "node probes: client pod -> node1 (TC capture -> ztunnel) -> HBONE -> node2 "
        "ztunnel -> server pod, as the ztunnel case; control plane: folder -> "
        "controlplane run -> delta xDS over gRPC/TLS on 127.0.0.1 -> 2 ztunnel clients"
    )
    variants: ClassVar[tuple[Variant, ...]] = (
        Variant("measured", "the processes as the chart runs them", baseline=True),
    )
    probes: ClassVar[tuple[Probe, ...]] = (
        Probe("node-idle", "nothing flows for the measurement", NODE_METRICS),
        Probe(
            f"node-hold-{HOLD_COUNT}",
            f"{HOLD_COUNT} keep-alive connections through both ztunnels (one request "
            "each), memory read while they are open",
            NODE_METRICS,
        ),
        Probe(
            "node-bulk",
            "iperf3, 4 streams through both ztunnels for the measurement",
            NODE_METRICS,
        ),
        Probe(
            "agent-compile",
            "the agent's compile-and-pin child, run to completion (pins removed after)",
            COMPILE_METRICS,
        ),
        *(
            Probe(
                name,
                f"{pods} pods: {CP_CHANGES} pushes awaited at 2 clients, then idle",
                CP_METRICS,
            )
            for name, pods in CP_POD_COUNTS.items()
        ),
    )

    def __init__(self) -> None:
        self._settings: RunSettings | None = None
        self._nodes: list[NodeProcs] = []
        self._client_netns = ""
        self._server_ip = ""
        self._planes: dict[str, Any] = {}
        self._cp: Any = None
        self._notes: list[str] = []
        self._apps: list[NetnsProcess] = []

    # --- environment ----------------------------------------------------------

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """The 2-node lab with agents and ztunnels, and the two control planes."""
        from lab import Lab, LabSpec

        self._settings = settings
        name = settings.lab_prefix + "fp"
        with (
            Lab.create(LabSpec(name=name, nodes=2, outside=False)) as lab,
            contextlib.ExitStack() as stack,
        ):
            self._start_node_side(lab, settings, stack)
            self._start_control_planes(settings, stack)
            try:
                yield
            finally:
                self._notes += [
                    f"{node.name}: agent pid {node.agent_pid}, ztunnel pid "
                    f"{node.ztunnel_pid} (processes: {len(read_tree(node.ztunnel_pid))})"
                    for node in self._nodes
                ]
                self._settings = None

    def _start_node_side(
        self, lab: Any, settings: RunSettings, stack: contextlib.ExitStack
    ) -> None:
        from agent.pinned import BPFFS_ROOT
        from bench.cases.ztunnel import AMBIENT, MESH_NAMESPACE, _remove_capture, _wait_ready
        from ztunnel.app import load_or_create_ca

        work = settings.work_dir / "node"
        ca_dir = work / "ca"
        ca_dir.mkdir(parents=True, exist_ok=True)
        load_or_create_ca(ca_dir, "cluster.local", dt.datetime.now(dt.UTC))
        lab.add_namespace(MESH_NAMESPACE, labels=AMBIENT)
        client = lab.add_pod("fclient", namespace=MESH_NAMESPACE, node="node1")
        server = lab.add_pod("fserver", namespace=MESH_NAMESPACE, node="node2")
        for pod in (client, server):
            tune_pod(pod)
        self._apps = start_apps(server, settings.work_dir)
        for app in self._apps:
            stack.callback(app.stop)
        stack.callback(_remove_capture, lab)
        workers = os.cpu_count() or 1
        for node in lab.nodes:
            agent = lab.spawn_in_node(
                node,
                [
                    *("python", "-m", "ambient", "agent", "run", "--node", node.name),
                    *("--node-id", node.id, "--config-dir", str(lab.config_dir)),
                    *("--uplink", node.uplink, "--metrics-port", "0", "--detach-on-exit"),
                ],
                name=f"fp-agent-{node.name}",
            )
            stack.callback(lab.stop, agent)
            zt = lab.spawn_in_node(
                node,
                [
                    *("python", "-m", "ambient", "ztunnel", "run", "--node", node.name),
                    *("--cluster-folder", str(lab.config_dir), "--ca-dir", str(ca_dir)),
                    *("--workers", str(workers)),
                ],
                name=f"fp-ztunnel-{node.name}",
            )
            stack.callback(lab.stop, zt)
            self._nodes.append(NodeProcs(node.name, agent.pid, zt.pid))
        for node, pod in ((lab.nodes[0], client), (lab.nodes[1], server)):
            _wait_ready(node, pod, BPFFS_ROOT / node.id)
        from bench.datapath import Endpoint

        check_http(client.netns, Endpoint(server.ip, HTTP_PORT), timeout_s=20)
        self._client_netns, self._server_ip = client.netns, server.ip
        self._notes.append(f"ztunnels ran {workers} workers each (one per CPU)")

    def _start_control_planes(self, settings: RunSettings, stack: contextlib.ExitStack) -> None:
        from bench.cases import controlplane as cp
        from bench.procs import tree_usage

        self._cp = cp.ControlPlaneCase()
        self._cp._changes = CP_CHANGES
        self._cp._rng = random.Random(7)  # timing jitter, not cryptography
        self._cp._loops = [cp.EventLoopThread() for _ in range(cp.CLIENTS)]
        for loop in self._cp._loops:
            stack.callback(loop.close)
        for probe, pods in CP_POD_COUNTS.items():
            started = time.monotonic()
            with _pod_count(cp, probe, pods):
                plane = self._cp._start(Variant(probe, ""), settings.work_dir / probe)
            stack.callback(cp._stop, plane.process)
            for index, loop in enumerate(self._cp._loops):
                loop.run(self._cp._connect(plane, index), cp.START_TIMEOUT_S)
            usage = tree_usage(plane.process.pid)
            if usage is not None:
                self._notes.append(
                    f"control plane with {pods} pods: {usage.cpu_s:.2f} CPU s and "
                    f"{time.monotonic() - started:.1f} s from start to both clients holding "
                    f"the state; peak RSS then {usage.peak_rss_bytes / 1e6:.0f} MB"
                )
            os.kill(plane.process.pid, signal.SIGSTOP)
            self._planes[probe] = plane

    # --- measurements ---------------------------------------------------------

    def notes(self) -> tuple[str, ...]:
        """Start-up figures of the control planes and the processes read."""
        return tuple(self._notes)

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """Put the processes in the probe's state and read them."""
        del variant
        if self._settings is None:
            raise BenchError(f"case {self.name}: measure() called outside environment()")
        if probe.name in CP_POD_COUNTS:
            return self._control_plane(probe.name, round_index)
        if probe.name == "agent-compile":
            return compile_footprint(self._settings.lab_prefix + "fp-compile")
        duration = self._settings.duration_s
        before = [node.read() for node in self._nodes]
        held: list[NodeReading] | None = None
        started = time.monotonic()
        if probe.name == "node-idle":
            time.sleep(duration)
        elif probe.name == "node-bulk":
            load.bulk(
                self._client_netns, self._server_ip, BULK_PORT, streams=4, duration_s=duration
            )
        else:
            result = load.hold_connections(
                self._client_netns,
                self._server_ip,
                HTTP_PORT,
                count=HOLD_COUNT,
                while_held=lambda: [node.read() for node in self._nodes],
            )
            if result.held < HOLD_COUNT * 0.99:
                raise MeasurementError(f"only {result.held} of {HOLD_COUNT} connections opened")
            held = result.reading
        wall = time.monotonic() - started
        after = [node.read() for node in self._nodes]
        per_node = [
            node_figures(b, a, wall, held[i] if held else None)
            for i, (b, a) in enumerate(zip(before, after, strict=True))
        ]
        return worst_of(per_node)

    def _control_plane(self, probe: str, round_index: int) -> Measurement:
        from bench.procs import tree_usage

        plane = self._planes[probe]
        os.kill(plane.process.pid, signal.SIGCONT)
        try:
            time.sleep(0.3)  # let it answer what its clients sent while it was stopped
            before = tree_usage(plane.process.pid)
            started = time.monotonic()
            pushes = self._cp._push(plane, round_index)
            idle_started = time.monotonic()
            idle_before = tree_usage(plane.process.pid)
            time.sleep(min(2.0, max(0.5, self._settings.duration_s if self._settings else 1)))
            after = tree_usage(plane.process.pid)
            ended = time.monotonic()
        finally:
            os.kill(plane.process.pid, signal.SIGSTOP)
        if before is None or after is None or idle_before is None:
            raise MeasurementError(f"the {probe} control plane exited")
        return {
            "cp_cpu_pct": 100.0 * (after.cpu_s - before.cpu_s) / (ended - started),
            "cp_idle_cpu_pct": 100.0 * (after.cpu_s - idle_before.cpu_s) / (ended - idle_started),
            "cp_rss_mb": after.rss_bytes / 1e6,
            "cp_peak_mb": after.peak_rss_bytes / 1e6,
            "push_p50_ms": pushes["p50_ms"],
        }


def compile_footprint(node_id: str) -> Measurement:
    """Peak RSS and CPU of ``python -m agent.programs`` pinning under ``node_id``'s folder."""
    import subprocess

    from agent.pinned import BPFFS_ROOT, pin_dir_for, remove_pins

    pin_dir = pin_dir_for(node_id, BPFFS_ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.programs", str(pin_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                raise MeasurementError("the agent's compile child ran longer than 120 s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err = proc.stderr.read().decode(errors="replace")[-400:] if proc.stderr else ""
            raise MeasurementError(f"the agent's compile child failed: {err}")
    finally:
        if proc.stderr:
            proc.stderr.close()
        remove_pins(pin_dir)
    return {
        "compile_peak_mb": usage.ru_maxrss * 1024 / 1e6,
        "compile_cpu_s": usage.ru_utime + usage.ru_stime,
    }


@contextlib.contextmanager
def _pod_count(cp: Any, name: str, pods: int) -> Iterator[None]:
    """The controlplane case's ``_start`` reads the pod count by variant name."""
    cp.POD_COUNTS[name] = pods
    try:
        yield
    finally:
        cp.POD_COUNTS.pop(name, None)


# --- the record the chart is checked against --------------------------------------------


def footprint_record(results: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
    """``deploy/footprint.json`` from a run's ``results.json``: each figure's median and
    maximum over the rounds, per probe (pure)."""
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for row in results.get("summaries", []):
        if row.get("case") != Footprint.name:
            continue
        probe = figures.setdefault(row["probe"], {})
        probe[row["metric"]] = {
            "median": round(float(row["median"]), 1),
            "max": round(float(row["max"]), 1),
        }
    if not figures:
        raise BenchError(f"{run_dir}: no '{Footprint.name}' figures in these results")
    settings = results.get("settings", {})
    machine = results.get("machine", {})
    keep = ("cpu_count", "cpu_model", "kernel", "loadavg_before", "loadavg_after")
    return {
        "source": f"bench/results/{Path(run_dir).name}/results.json (not committed)",
        "command": "sudo .venv/bin/" + str(settings.get("command", "python -m bench")),
        "rounds": settings.get("rounds"),
        "duration_s": settings.get("duration_s"),
        "measured_at": results.get("started_at", ""),
        "machine": {k: machine[k] for k in keep if k in machine},
        "units": {"*_pct": "% of one core", "*_mb": "MB (10^6 bytes)", "*_ms": "ms"},
        "figures": figures,
    }


def record_text(record: Mapping[str, Any]) -> str:
    """The record as JSON with one line per figure (pure)."""
    import re

    text = json.dumps(record, indent=2)
    return (
        re.sub(
            r'\{\n\s+"median": ([^,\n]+),\n\s+"max": ([^\n]+)\n\s+\}',
            r'{"median": \1, "max": \2}',
            text,
        )
        + "\n"
    )


def main(argv: list[str]) -> int:
    """``python -m bench.cases.footprint record bench/results/<run>`` writes the record."""
    if len(argv) != 2 or argv[0] != "record":
        sys.stderr.write("usage: python -m bench.cases.footprint record bench/results/<run>\n")
        return 2
    run_dir = Path(argv[1])
    results = json.loads((run_dir / "results.json").read_text())
    record = footprint_record(results, str(run_dir.resolve()))
    FOOTPRINT_FILE.write_text(record_text(record))
    sys.stdout.write(f"wrote {FOOTPRINT_FILE}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
