"""The demo scenario: a two-node lab, the capture agents, and checks that prove them.

The scenario is the mesh tutorial's cast (``frontend``, ``backend`` v1 and v2 in namespace
``demo``; a ``client`` in a namespace outside the mesh) on a two-node lab, with the node
agent on each node. What it proves today, each as a named check with evidence:

1. pods reach each other across nodes and see each other's real addresses (no mesh yet);
2. labelling the namespace ``istio.io/dataplane-mode=ambient`` reaches both agents'
   maps within a second; the non-mesh client stays out;
3. fail closed: with no ztunnel listening, the enrolled frontend's connection to a
   backend is refused, the drop is counted, and not one packet of it crosses the fabric;
4. traffic outside the mesh is untouched (client to a host outside the cluster);
5. removing the label restores direct traffic within a second.

ztunnel (the proxy captured traffic is handed to) is the next piece of the project;
with it, check 3 turns into "the call works, over mTLS".
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from lab import Lab, LabSpec
from lab.errors import LabError
from lab.model import Pod, ServicePort
from lab.processes import LabProcess

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
ECHO_PORT = 8080
OUTSIDE_PORT = 8000
ENROLL_DEADLINE = 1.0  # seconds: how fast a label change must reach the maps


class DemoError(LabError):
    """The demo could not set up what its checks need (an agent died, a step timed out)."""


@dataclass(frozen=True)
class DemoConfig:
    """How one demo run goes."""

    name: str = "demo"
    """Lab name: prefix of every namespace the demo creates."""
    keep: bool = False
    """Leave the lab running at the end (``ambient lab down --name NAME`` removes it)."""
    run_agents: bool = True
    """Start the node agents (turning this off shows check 3 failing: traffic in clear)."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one named check, with what was seen."""

    number: int
    title: str
    passed: bool
    evidence: tuple[str, ...]

    @property
    def status(self) -> str:
        """``PASS`` or ``FAIL``."""
        return "PASS" if self.passed else "FAIL"


@dataclass
class DemoReport:
    """Everything a run found: checks, step durations, and how to go on."""

    checks: list[CheckResult] = field(default_factory=list)
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)


class Progress:
    """Names each step as it runs (a spinner on a terminal) and records its duration."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, out: TextIO, report: DemoReport) -> None:
        self._out = out
        self._report = report
        self._tty = out.isatty()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Runs the body as one named step."""
        start = time.monotonic()
        done = threading.Event()
        spinner = None
        if self._tty:
            spinner = threading.Thread(target=self._spin, args=(title, start, done), daemon=True)
            spinner.start()
        else:
            self._out.write(f"  .. {title}\n")
            self._out.flush()
        ok = False
        try:
            yield
            ok = True
        finally:
            done.set()
            if spinner is not None:
                spinner.join()
            took = time.monotonic() - start
            self._report.steps.append((title, took))
            mark = "ok" if ok else "!!"
            self._out.write(f"\r  {mark} {title} ({took:.1f}s)\x1b[K\n" if self._tty else "")
            if not self._tty:
                self._out.write(f"  {mark} {title} ({took:.1f}s)\n")
            self._out.flush()

    def _spin(self, title: str, start: float, done: threading.Event) -> None:
        i = 0
        while not done.wait(0.1):
            frame = self.FRAMES[i % len(self.FRAMES)]
            self._out.write(f"\r  {frame} {title} ({time.monotonic() - start:.1f}s)\x1b[K")
            self._out.flush()
            i += 1


@dataclass
class DemoWorld:
    """The running lab and the handles the checks use."""

    lab: Lab
    frontend: Pod
    backend_v1: Pod
    backend_v2: Pod
    client: Pod
    agents: dict[str, LabProcess] = field(default_factory=dict)

    def node_id(self, node: str) -> str:
        """The pin id of a node's agent."""
        return f"{self.lab.name}-{node}"

    def http(self, pod: Pod, url: str, *, count: int = 1, timeout: float = 1.0) -> dict[str, Any]:
        """GETs ``url`` from ``pod`` with the lab's client; returns its JSON summary."""
        done = self.lab.exec(
            pod,
            [
                "python",
                "-m",
                "lab.workloads.client",
                "http",
                url,
                "--count",
                str(count),
                "--timeout",
                str(timeout),
                "--deadline",
                str(count * timeout + 2),
                "--json",
            ],
            timeout=count * timeout + 10,
        )
        try:
            summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            summary = {"ok": 0, "failed": count, "errors": [done.stderr.strip()[-300:]]}
        return summary

    def maps(self, what: str, node: str) -> list[dict[str, Any]]:
        """``ambient maps WHAT --node-id ... -o json`` for one node, as a user would run it."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ambient",
                "maps",
                what,
                "--node-id",
                self.node_id(node),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            return []
        rows: list[dict[str, Any]] = json.loads(done.stdout or "[]")
        return rows

    def enrolled_ips(self, node: str) -> set[str]:
        """Pod IPs the node's workloads map holds as enrolled."""
        return {r["pod_ip"] for r in self.maps("workloads", node) if r.get("enrolled")}


def build_world(lab: Lab, config: DemoConfig, progress: Progress) -> DemoWorld:
    """Creates the tutorial's cast and, if configured, the node agents."""
    with progress.step("workloads: frontend, backend v1 and v2 in 'demo'; client in 'legacy'"):
        lab.add_namespace("demo")
        lab.add_namespace("legacy")
        frontend = lab.add_pod(
            "frontend",
            namespace="demo",
            node="node1",
            labels={"app": "frontend"},
            service_account="frontend",
        )
        v1 = lab.add_pod(
            "backend-v1",
            namespace="demo",
            node="node1",
            labels={"app": "backend", "version": "v1"},
            service_account="backend",
        )
        v2 = lab.add_pod(
            "backend-v2",
            namespace="demo",
            node="node2",
            labels={"app": "backend", "version": "v2"},
            service_account="backend",
        )
        client = lab.add_pod(
            "client",
            namespace="legacy",
            node="node2",
            labels={"app": "client"},
            service_account="client",
        )
        lab.add_service(
            "backend",
            namespace="demo",
            selector={"app": "backend"},
            ports=[ServicePort(port=80, target_port=ECHO_PORT, name="http")],
        )
        for pod, text in ((v1, "Hello from backend v1"), (v2, "Hello from backend v2")):
            lab.start_workload(pod, "http-echo", [f"-text={text}", f"-listen=:{ECHO_PORT}"])
        lab.spawn(
            lab.outside,
            [
                "python",
                "-m",
                "lab.workloads.http_echo",
                "-text=Hello from outside",
                f"-listen=:{OUTSIDE_PORT}",
            ],
            name="outside-http-echo",
        )
    world = DemoWorld(lab, frontend, v1, v2, client)
    if config.run_agents:
        with progress.step("node agents: compile, load and attach the capture programs"):
            for node in lab.nodes:
                world.agents[node.name] = lab.spawn_in_node(
                    node,
                    [
                        "python",
                        "-m",
                        "ambient",
                        "agent",
                        "run",
                        "--node",
                        node.name,
                        "--node-id",
                        world.node_id(node.name),
                        "--uplink",
                        node.uplink,
                        "--config-dir",
                        str(lab.config_dir),
                        "--metrics-port",
                        "0",
                        "--detach-on-exit",
                    ],
                    name=f"agent-{node.name}",
                )
            _wait_for(
                lambda: all(world.maps("programs", n.name) for n in lab.nodes),
                60,
                "the agents to attach their programs",
                world,
            )
    return world


def _wait_for(cond: Callable[[], bool], timeout: float, what: str, world: DemoWorld) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for name, proc in world.agents.items():
            if not proc.alive():
                log = world.lab.logs_dir / f"agent-{name}.log"
                tail = log.read_text()[-1500:] if log.exists() else ""
                raise DemoError(
                    f"the agent on {name} exited while waiting for {what}",
                    hint=f"its log ({log}) ends with: {tail.strip()}",
                )
        time.sleep(0.1)
    raise DemoError(
        f"timed out after {timeout:.0f}s waiting for {what}",
        hint=f"see the logs under {world.lab.logs_dir} (run with --keep to keep them)",
    )


def _poll(cond: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``cond`` held, or None if it did not within ``timeout``."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.05)


def check_direct(world: DemoWorld) -> CheckResult:
    """1. Before the mesh: cross-node HTTP works and shows the caller's real address."""
    url = f"http://{world.backend_v2.ip}:{ECHO_PORT}/"
    got = world.http(world.frontend, url, count=3)
    first = _first_answer(got)
    passed = got.get("ok") == 3 and "Hello from backend v2" in first and world.frontend.ip in first
    return CheckResult(
        1,
        "pods reach each other across nodes; backend sees frontend's IP",
        passed,
        (
            f"frontend {world.frontend.ip} (node1) -> backend-v2 {url} (node2): "
            f"{got.get('ok')}/3 answered",
            f"answer: {first}",
        ),
    )


def check_enrollment(world: DemoWorld) -> CheckResult:
    """2. Labelling the namespace reaches both agents' maps within a second."""
    world.lab.set_namespace_labels("demo", AMBIENT)
    want = {"node1": {world.frontend.ip, world.backend_v1.ip}, "node2": {world.backend_v2.ip}}
    took = _poll(lambda: all(want[n] <= world.enrolled_ips(n) for n in want), 5.0)
    client_out = world.client.ip not in world.enrolled_ips("node2")
    passed = took is not None and took <= ENROLL_DEADLINE + 0.5 and client_out
    seen = {n: sorted(world.enrolled_ips(n)) for n in want}
    return CheckResult(
        2,
        "namespace label istio.io/dataplane-mode=ambient reaches the maps",
        passed,
        (
            "kubectl-equivalent: ambient lab label --name "
            f"{world.lab.name} namespace demo istio.io/dataplane-mode=ambient",
            f"enrolled in maps after {took:.2f}s" if took is not None else "not enrolled within 5s",
            f"node1 enrolled: {seen['node1']}; node2 enrolled: {seen['node2']}",
            f"client {world.client.ip} (namespace legacy) enrolled: {not client_out}",
        ),
    )


def check_fail_closed(world: DemoWorld) -> CheckResult:
    """3. No ztunnel listening: the enrolled call is refused, counted, and nothing crosses."""
    before = _drops(world, "node1", world.frontend.ip)
    capture = _FabricCapture(world.lab, f"tcp port {ECHO_PORT}")
    with capture:
        got = world.http(world.frontend, f"http://{world.backend_v2.ip}:{ECHO_PORT}/", count=2)
    after = _drops(world, "node1", world.frontend.ip)
    refused = got.get("ok") == 0
    passed = refused and after > before and capture.packets == 0
    return CheckResult(
        3,
        "fail closed: captured traffic with no ztunnel is refused, never in clear",
        passed,
        (
            f"frontend -> backend-v2: {got.get('ok')} of 2 answered "
            f"({'; '.join(sorted(set(got.get('errors', []))))[:120] or 'no error'})",
            f"fail-closed drops counted for frontend in 'ambient maps stats': {before} -> {after}",
            f"packets to port {ECHO_PORT} seen on the fabric bridge: {capture.packets}",
        ),
    )


def check_outside_untouched(world: DemoWorld) -> CheckResult:
    """4. Pods outside the mesh keep talking to the world unchanged."""
    url = f"http://{world.lab.outside.ip}:{OUTSIDE_PORT}/"
    got = world.http(world.client, url, count=3)
    first = _first_answer(got)
    passed = got.get("ok") == 3 and world.client.ip in first
    return CheckResult(
        4,
        "traffic outside the mesh is untouched",
        passed,
        (
            f"client {world.client.ip} (not enrolled) -> outside {url}: {got.get('ok')}/3 answered",
            f"answer: {first}",
        ),
    )


def check_unenroll(world: DemoWorld) -> CheckResult:
    """5. Removing the label restores direct traffic within a second."""
    world.lab.set_namespace_labels("demo", {"istio.io/dataplane-mode": None})
    url = f"http://{world.backend_v2.ip}:{ECHO_PORT}/"
    took = _poll(lambda: world.http(world.frontend, url, timeout=0.5).get("ok") == 1, 5.0)
    passed = took is not None and took <= ENROLL_DEADLINE + 0.5
    return CheckResult(
        5,
        "removing the label restores direct traffic",
        passed,
        (
            f"frontend -> backend-v2 answered again after {took:.2f}s"
            if took is not None
            else "frontend -> backend-v2 still failing after 5s",
        ),
    )


CHECKS: tuple[Callable[[DemoWorld], CheckResult], ...] = (
    check_direct,
    check_enrollment,
    check_fail_closed,
    check_outside_untouched,
    check_unenroll,
)


def _first_answer(summary: dict[str, Any]) -> str:
    """The first body the client got, on one line (``text / client: ip:port``)."""
    bodies = list(summary.get("bodies", {}))
    if not bodies:
        return f"no answer: {'; '.join(sorted(set(summary.get('errors', []))))[:160]}"
    return " / ".join(line.strip() for line in bodies[0].splitlines() if line.strip())


def _drops(world: DemoWorld, node: str, pod_ip: str) -> int:
    for row in world.maps("stats", node):
        if row.get("pod_ip") == pod_ip:
            return int(row.get("dropped_no_listener", 0)) + int(row.get("dropped_assign_failed", 0))
    return 0


class _FabricCapture:
    """tcpdump on the fabric bridge for the duration of a ``with`` block; counts packets."""

    def __init__(self, lab: Lab, bpf_filter: str) -> None:
        self._lab = lab
        self._filter = bpf_filter
        self._proc: subprocess.Popen[str] | None = None
        self.packets = -1

    def __enter__(self) -> _FabricCapture:
        argv, env = self._lab.command(
            self._lab.fabric,
            ["tcpdump", "-i", "any", "-n", "-l", "-q", "--immediate-mode", self._filter],
        )
        self._proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # tcpdump needs a moment before it sees packets
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        time.sleep(0.3)
        self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        self.packets = sum(1 for line in out.splitlines() if line.strip())


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> DemoReport:
    """Runs the whole scenario; the lab is torn down at the end unless ``config.keep``."""
    report = DemoReport()
    progress = Progress(out, report)
    out.write(f"ambient demo: a two-node mesh lab named {config.name!r}\n\n")
    lab: Lab | None = None
    try:
        with progress.step("lab: fabric, 2 nodes, an outside host (network namespaces)"):
            lab = Lab.create(LabSpec(name=config.name, nodes=2))
        world = build_world(lab, config, progress)
        out.write("\n")
        for check in CHECKS:
            number, _, title = (check.__doc__ or "").partition(". ")
            with progress.step(f"check {number}: {title.split(':')[0].rstrip('.')}"):
                result = check(world)
            report.checks.append(result)
            out.write(f"     {result.status}  {result.title}\n")
            for line in result.evidence:
                out.write(f"           {line}\n")
    finally:
        if lab is not None and not config.keep:
            with progress.step("teardown: processes, namespaces, pins"):
                for proc in world.agents.values() if "world" in locals() else ():
                    with contextlib.suppress(Exception):
                        lab.stop(proc)
                lab.destroy()
    return report


def summary(report: DemoReport, config: DemoConfig) -> str:
    """The closing table and what to try next."""
    lines = ["", "  #  RESULT  CHECK"]
    lines += [f"  {c.number}  {c.status:<6}  {c.title}" for c in report.checks]
    passed = sum(c.passed for c in report.checks)
    lines.append(f"\n  {passed}/{len(report.checks)} checks passed")
    if config.keep:
        n = config.name
        lines += [
            "",
            "The lab is still running. Try:",
            f"  ambient lab status --name {n}",
            f"  ambient lab exec --name {n} demo/frontend -- python -m lab.workloads.client "
            f"http http://backend-v2.demo.pod.cluster.local:{ECHO_PORT}/",
            f"  ambient maps workloads --node-id {n}-node1",
            f"  ambient maps stats --node-id {n}-node2",
            f"  ambient lab label --name {n} namespace demo istio.io/dataplane-mode=ambient",
            f"  ambient lab down --name {n}      # removes everything",
        ]
    return "\n".join(lines)
