"""The demo: the mesh tutorial on a two-node lab, with real eBPF capture and real mTLS.

It applies ``deploy/examples/demo/`` (namespace ``demo`` enrolled in the ambient mesh:
``frontend``, ``backend`` v1 and v2 behind one Service, ``sleep``; a ``client`` in
``legacy``, outside the mesh) to a lab of two nodes, runs a node agent and a ztunnel on
each node, and proves, each as a named check with evidence:

1. frontend reaches ``http://backend/`` and both versions answer;
2. traffic between nodes is mutual TLS 1.3 with SPIFFE identities, nothing in clear;
3. the backend sees frontend's real pod IP;
4. PeerAuthentication STRICT refuses the non-mesh client; PERMISSIVE admits it;
5. AuthorizationPolicy "only frontend may call backend": frontend allowed, sleep denied;
6. fail closed: with frontend's ztunnel stopped, its call fails and nothing crosses in
   clear; restarted, it works again;
7. telemetry: Istio's ``istio_tcp_*`` counters for frontend -> backend on both reporters,
   and the capture maps of each node.

Then the tutorial, unchanged (``deploy/examples/tutorial/``: its ingress Gateway, the
80/20 canary), with the namespace enrolled and bound to its waypoint as Istio's ambient
docs do, and L7 on real Envoy (the waypoint and the ingress gateway), configured by the
control plane over xDS (:mod:`lab.demo_l7` holds checks 8 to 13):

8. canary: 1,000 requests split 80/20 within a binomial 99.9% interval; a live weight
   change is followed within a second;
9. header routing: ``end-user: jason`` always reaches v2, others v1;
10. retries: half the first attempts fail, retries make >= 99% of 1,000 succeed, and the
    retried attempts show in the waypoint's metrics;
11. circuit breaking (fast 503s, flag ``UO``) and outlier detection (a 5xx pod ejected);
12. L7 authorization at the waypoint: GET allowed, POST denied with 403, counted;
13. ingress: ``curl http://istio-ingressgateway.istio-system/`` from ``outside``.

The pure parts (what counts as a pass) are small functions over what was observed, so
each check's verdict is unit-tested; the shell drives the lab.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lab import Lab, LabSpec
from lab.errors import LabError
from lab.model import Node, Pod
from lab.pcap import contains, read_segments, summarize_tls
from lab.processes import LabProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "deploy" / "examples" / "demo"
BASE_FILES = (
    "00-namespaces.yaml",
    "10-frontend.yaml",
    "15-sleep.yaml",
    "20-backend.yaml",
    "30-client.yaml",
)
PEER_AUTH_FILE = "40-peer-authentication-strict.yaml"
AUTHZ_FILE = "50-authorization-policy-backend.yaml"
BACKEND_PORT = 5678
TRUST_DOMAIN = "cluster.local"
XDS_PORT = 15012
HBONE_PORT = 15008
XDS_SERVER_NAME = "istiod.istio-system.svc"
CONVERGE = 5.0  # seconds allowed for a configuration change to reach the ztunnels

SABOTAGE = {
    "no-agents": "start no node agents: nothing is captured, traffic flows in clear",
    "no-peer-authentication": "never apply the STRICT PeerAuthentication",
    "no-authorization-policy": "never apply the AuthorizationPolicy",
    "no-source-ip": "ztunnel connects to pods from the node's address (--no-preserve-source-ip)",
    "no-waypoint": "never bind the tutorial namespace to its waypoint (no istio.io/use-waypoint)",
    "no-canary-change": "never apply the live weight change (the tutorial's 80/20 stays)",
    "no-header-routing": "apply check 9's VirtualService without its end-user match",
    "no-retries": "apply check 10's VirtualService without its retries",
    "no-circuit-breaking": "apply check 11's DestinationRule without connectionPool and "
    "outlierDetection",
    "no-l7-authorization": "never apply check 12's AuthorizationPolicy",
    "no-ingress": "apply the tutorial without its ingress Gateway",
}


class DemoError(LabError):
    """The demo could not set up what its checks need (a process died, a step timed out)."""


@dataclass(frozen=True)
class DemoConfig:
    """How one demo run goes."""

    name: str = "demo"
    """Lab name: prefix of every namespace the demo creates."""
    keep: bool = False
    """Leave the lab running at the end (``ambient lab down --name NAME`` removes it)."""
    sabotage: frozenset[str] = frozenset()
    """Properties to break on purpose (keys of :data:`SABOTAGE`), to see checks FAIL."""
    checks: frozenset[int] = frozenset()
    """Run only these checks (numbers); empty runs them all."""

    def runs(self, number: int) -> bool:
        """Whether check ``number`` is part of this run."""
        return not self.checks or number in self.checks


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
    """Everything a run found: checks and step durations."""

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
            mark = "✔" if ok else "✘"
            self._out.write(("\r\x1b[K" if self._tty else "") + f"  {mark} {title} ({took:.1f}s)\n")
            self._out.flush()

    def _spin(self, title: str, start: float, done: threading.Event) -> None:
        i = 0
        while not done.wait(0.1):
            frame = self.FRAMES[i % len(self.FRAMES)]
            self._out.write(f"\r  {frame} {title} ({time.monotonic() - start:.1f}s)\x1b[K")
            self._out.flush()
            i += 1


# --------------------------------------------------------------------------- the world


@dataclass
class DemoWorld:
    """The running lab and the handles the checks use."""

    lab: Lab
    config: DemoConfig
    state_dir: Path
    """The control plane's state folder (its CA root, the node-credential key)."""
    pods: dict[str, Pod] = field(default_factory=dict)
    controlplane: LabProcess | None = None
    agents: dict[str, LabProcess] = field(default_factory=dict)
    ztunnels: dict[str, LabProcess] = field(default_factory=dict)
    capture: _FabricCapture | None = None
    """The fabric capture running since the mesh came up (read by check 2)."""
    l7_missing: str = ""
    """Why L7 through the tutorial's waypoint does not work ('' when it does)."""
    ingress_missing: str = ""
    """Why the ingress gateway does not answer ('' when it does)."""

    def node_of(self, pod: str) -> Node:
        """The node a demo pod runs on."""
        return self.lab.node(self.pods[pod].node)

    def remote_backend(self, caller: str) -> str:
        """A backend version running on another node than ``caller`` (traffic must cross)."""
        for name in ("backend-v1", "backend-v2"):
            if self.pods[name].node != self.pods[caller].node:
                return name
        raise DemoError(f"both backends run on {caller}'s node; the demo needs one elsewhere")

    def http(
        self,
        pod: str | Pod,
        url: str,
        *,
        count: int = 1,
        timeout: float = 2.0,
        concurrency: int = 1,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        report_headers: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Requests ``url`` from a pod with the lab's client; returns its JSON summary."""
        deadline = count * timeout / max(1, concurrency) + 2
        argv = [
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
            str(deadline),
            "--concurrency",
            str(concurrency),
            "--method",
            method,
            "--json",
        ]
        for key, value in (headers or {}).items():
            argv += ["--header", f"{key}: {value}"]
        for name in report_headers:
            argv += ["--report-header", name]
        target = pod if isinstance(pod, Pod) else self.pods[pod]
        done = self.lab.exec(target, argv, timeout=deadline + 15)
        try:
            summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            summary = {"ok": 0, "failed": count, "bodies": {}, "errors": [done.stderr[-300:]]}
        return summary

    def node_get(self, node: str, path: str, port: int) -> str:
        """An HTTP GET to a ztunnel's localhost endpoint, from inside its node."""
        code = (
            "import sys, urllib.request\n"
            "try:\n"
            f"    print(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=3)"
            ".read().decode())\n"
            "except Exception as err:\n"
            "    print('ERROR', err)\n"
        )
        return self.lab.exec(self.lab.node(node), ["python", "-c", code], timeout=20).stdout

    def maps(self, what: str, node: str) -> list[dict[str, Any]]:
        """``ambient maps WHAT --node-id ID -o json`` as a user would run it."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ambient",
                "maps",
                what,
                "--node-id",
                self.lab.node(node).id,
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

    def access_records(self, node: str) -> list[dict[str, Any]]:
        """The JSON access records ztunnel on ``node`` wrote so far (all its logs)."""
        records = []
        for log in sorted(self.lab.logs_dir.glob(f"ztunnel-{node}*.log")):
            for line in log.read_text(errors="replace").splitlines():
                start = line.find('{"')
                if start >= 0 and '"direction"' in line:
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line[start:]))
        return records

    def apply(self, *files: str | Path) -> None:
        """``ambient lab apply -f`` of example files (names in deploy/examples/demo)."""
        from lab.manifests.apply import apply_manifests

        apply_manifests(self.lab, [EXAMPLES / f if isinstance(f, str) else f for f in files])

    @property
    def xds_address(self) -> str:
        """Where ztunnels reach the control plane: its address on the fabric."""
        return f"{self.lab.fabric.ip}:{XDS_PORT}"

    def start_controlplane(self) -> None:
        """``ambient controlplane run`` on the fabric, serving the lab's config folder."""
        argv = [
            "python",
            "-m",
            "ambient",
            "controlplane",
            "run",
            "--config-dir",
            str(self.lab.config_dir),
            "--state-dir",
            str(self.state_dir),
            "--listen",
            self.xds_address,
            "--trust-domain",
            TRUST_DOMAIN,
        ]
        self.controlplane = self.lab.spawn(self.lab.fabric, argv, name="controlplane")
        self.wait_for(
            lambda: (
                (self.state_dir / "root-cert.pem").exists()
                and self.controlplane_status() is not None
            ),
            60,
            "the control plane to serve",
        )

    def controlplane_status(self) -> list[dict[str, Any]] | None:
        """``ambient controlplane status -o json`` on the fabric (None if not answering)."""
        argv = ["python", "-m", "ambient", "controlplane", "status", "-o", "json"]
        done = self.lab.exec(self.lab.fabric, argv, timeout=20)
        if done.returncode != 0:
            return None
        try:
            parsed = json.loads(done.stdout or "null")
        except ValueError:
            return None
        rows = parsed.get("proxies", parsed) if isinstance(parsed, dict) else parsed
        return rows if isinstance(rows, list) else []

    def node_token(self, node: Node) -> Path:
        """The node's bootstrap credential (``ambient controlplane node-credential``)."""
        path = self.lab.run_dir / f"{node.name}.token"
        if not path.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ambient",
                    "controlplane",
                    "node-credential",
                    node.name,
                    "--state-dir",
                    str(self.state_dir),
                    "--out",
                    str(path),
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
        return path

    def start_ztunnel(self, node: Node) -> LabProcess:
        """``ambient ztunnel run`` in ``node``: workloads and policies over delta xDS, and
        certificates from the control plane's CA, proving itself with the node token."""
        argv = [
            "python",
            "-m",
            "ambient",
            "ztunnel",
            "run",
            "--node",
            node.name,
            "--xds-address",
            self.xds_address,
            "--xds-server-name",
            XDS_SERVER_NAME,
            "--xds-root-cert",
            str(self.state_dir / "root-cert.pem"),
            "--auth-token-file",
            str(self.node_token(node)),
            "--trust-domain",
            TRUST_DOMAIN,
            "--access-log-format",
            "json",
        ]
        if "no-source-ip" in self.config.sabotage:
            argv.append("--no-preserve-source-ip")
        proc = self.lab.spawn_in_node(node, argv, name=f"ztunnel-{node.name}-{time.time_ns()}")
        self.ztunnels[node.name] = proc
        return proc

    def wait_ztunnel_ready(self, node: str) -> None:
        """Until ztunnel's readiness endpoint answers (state and certificates loaded)."""
        self.wait_for(
            lambda: "ERROR" not in self.node_get(node, "/healthz/ready", 15021),
            60,
            f"ztunnel on {node} to be ready",
        )

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        """Polls ``cond``; a process of ours dying or the deadline passing is a DemoError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            procs = [*self.agents.values(), *self.ztunnels.values()]
            for proc in [*procs, *([self.controlplane] if self.controlplane else [])]:
                if not proc.alive():
                    tail = proc.log_path.read_text()[-1500:] if proc.log_path.exists() else ""
                    raise DemoError(
                        f"{proc.name} exited while waiting for {what}",
                        hint=f"its log ({proc.log_path}) ends with: {tail.strip()}",
                    )
            time.sleep(0.2)
        raise DemoError(
            f"timed out after {timeout:.0f}s waiting for {what}",
            hint=f"see the logs under {self.lab.logs_dir} (--keep keeps them)",
        )


def build_world(lab: Lab, config: DemoConfig, progress: Progress) -> DemoWorld:
    """Applies the demo's manifests and starts an agent and a ztunnel on each node."""
    from lab.manifests.apply import workload_pods

    world = DemoWorld(lab, config, lab.run_dir / "controlplane")
    with progress.step("control plane: CA and delta xDS on the fabric (15012, TLS)"):
        world.start_controlplane()
    with progress.step(f"apply deploy/examples/demo/ ({', '.join(BASE_FILES)})"):
        world.apply(*BASE_FILES)
        for ns, name in (
            ("demo", "frontend"),
            ("demo", "sleep"),
            ("demo", "backend-v1"),
            ("demo", "backend-v2"),
            ("legacy", "client"),
        ):
            world.pods[name] = workload_pods(lab, ns, name)[0]
    if "no-agents" not in config.sabotage:
        with progress.step("node agents: compile, load and attach the eBPF capture programs"):
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
                        node.id,
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
            for node in lab.nodes:
                want = {
                    p.ip
                    for p in world.pods.values()
                    if p.node == node.name and p.namespace == "demo"
                }
                world.wait_for(
                    _enrolls(world, node.name, want), 60, f"{node.name}'s agent to enroll its pods"
                )
    with progress.step("ztunnels: workloads over xDS, certificates from the CA, on both nodes"):
        for node in lab.nodes:
            world.start_ztunnel(node)
        for node in lab.nodes:
            world.wait_ztunnel_ready(node.name)
    if any(config.runs(n) for n in range(8, 14)):
        from lab.demo_l7 import build_l7

        build_l7(world, progress)
    # From before the first mesh connection, so the TLS handshakes are in it.
    world.capture = _FabricCapture(lab, "tcp").__enter__()
    return world


def _enrolled(world: DemoWorld, node: str) -> set[str]:
    return {r["pod_ip"] for r in world.maps("workloads", node) if r.get("enrolled")}


def _enrolls(world: DemoWorld, node: str, want: set[str]) -> Callable[[], bool]:
    return lambda: want <= _enrolled(world, node)


# --------------------------------------------------------------------------- verdicts


def answers_by_version(summary: dict[str, Any]) -> dict[str, int]:
    """How many answers came from each backend version (``Hello from backend vN``)."""
    counts: dict[str, int] = {}
    for body, n in summary.get("bodies", {}).items():
        found = re.search(r"Hello from backend (v\d+)", body)
        if found:
            counts[found.group(1)] = counts.get(found.group(1), 0) + int(n)
    return counts


def callers_seen(summary: dict[str, Any]) -> set[str]:
    """The client IPs the echo servers reported (``client: ip:port``)."""
    return {
        m.group(1)
        for body in summary.get("bodies", {})
        for m in re.finditer(r"client: ([\d.]+):\d+", body)
    }


def metric_value(text: str, name: str, labels: dict[str, str]) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# --------------------------------------------------------------------------- checks


def check_service(world: DemoWorld) -> CheckResult:
    """1. frontend reaches backend by its Service name; v1 and v2 both answer."""
    got = world.http("frontend", "http://backend/", count=10)
    versions = answers_by_version(got)
    passed = got.get("ok") == 10 and set(versions) == {"v1", "v2"}
    return CheckResult(
        1,
        "frontend reaches http://backend/; answers come from v1 and v2",
        passed,
        (
            f"frontend -> http://backend/ ({world.lab.service('backend', 'demo').vip}:80): "
            f"{got.get('ok')}/10 answered",
            f"answers by version: {versions or got.get('errors')}",
        ),
    )


def check_mtls(world: DemoWorld) -> CheckResult:
    """2. Traffic between nodes is mutual TLS 1.3 with SPIFFE identities, nothing in clear."""
    backend = world.remote_backend("frontend")
    url = f"http://{world.pods[backend].ip}:{BACKEND_PORT}/"
    got = world.http("frontend", url, count=3)
    cap, world.capture = world.capture, None
    if cap is None:
        raise DemoError("the fabric capture was not started with the mesh")
    cap.__exit__(None, None, None)
    # Between nodes only: the ztunnels' own xDS/CA traffic to the control plane (TLS on
    # 15012, on the fabric's address) is not what this check is about.
    control_plane = world.lab.fabric.ip
    segments = [x for x in cap.segments() if control_plane not in (x.src, x.dst)]
    tls = summarize_tls(segments)
    leaked = contains(segments, b"Hello from backend") or contains(segments, b"GET / HTTP")
    fe = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend"
    be = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/backend"
    dst_node, src_node = world.node_of(backend).name, world.node_of("frontend").name
    inbound: list[dict[str, Any]] = []
    outbound: list[dict[str, Any]] = []

    def logged() -> bool:
        # Access records are written when a connection closes: give them a moment.
        inbound[:] = [
            r
            for r in world.access_records(dst_node)
            if r.get("direction") == "inbound-hbone" and r.get("src_identity") == fe
        ]
        outbound[:] = [r for r in world.access_records(src_node) if r.get("dst_identity") == be]
        return bool(inbound) and bool(outbound)

    _poll(logged, CONVERGE)
    passed = (
        got.get("ok") == 3
        and tls.only_tls
        and tls.ports == {15008}
        and tls.tls13_server_hellos >= 1
        and not leaked
        and bool(inbound)
        and bool(outbound)
    )
    return CheckResult(
        2,
        "between nodes: mTLS 1.3 with SPIFFE identities, no plaintext",
        passed,
        (
            f"frontend ({src_node}) -> {backend} ({dst_node}) {url}: {got.get('ok')}/3 answered",
            f"fabric capture since the mesh came up, node to node: {tls.segments} segments "
            "with payload, "
            f"ports {sorted(tls.ports)}, "
            f"TLS records {tls.record_types}, TLS 1.3 ServerHellos {tls.tls13_server_hellos}, "
            f"non-TLS flows {tls.non_tls_flows or 'none'}, plaintext found: {leaked}",
            f"ztunnel on {dst_node} saw client identity {fe}: {len(inbound)} connection(s)",
            f"ztunnel on {src_node} verified server identity {be}: {len(outbound)} connection(s)",
        ),
    )


def check_source_ip(world: DemoWorld) -> CheckResult:
    """3. The backend sees frontend's real pod IP."""
    got = world.http("frontend", "http://backend/", count=4)
    seen = callers_seen(got)
    fe = world.pods["frontend"].ip
    passed = got.get("ok") == 4 and seen == {fe}
    return CheckResult(
        3,
        "the backend sees frontend's real pod IP",
        passed,
        (
            f"frontend's pod IP: {fe}",
            f"caller addresses the backends reported: {sorted(seen) or got.get('errors')}",
        ),
    )


def check_peer_authentication(world: DemoWorld) -> CheckResult:
    """4. PeerAuthentication STRICT refuses the non-mesh client; PERMISSIVE admits it."""
    backend = world.remote_backend("client")
    url = f"http://{world.pods[backend].ip}:{BACKEND_PORT}/"
    evidence = []
    strict_ok = permissive_ok = False
    if "no-peer-authentication" not in world.config.sabotage:
        world.apply(PEER_AUTH_FILE)
        strict_ok = _poll(lambda: world.http("client", url, timeout=1.0).get("ok") == 0, CONVERGE)
        evidence.append(
            f"STRICT (deploy/examples/demo/{PEER_AUTH_FILE}): client (legacy, "
            f"no identity) -> {backend} {url}: "
            f"{'refused' if strict_ok else 'ANSWERED'}"
        )
        permissive = world.lab.run_dir / "peer-authentication-permissive.yaml"
        permissive.write_text(
            (EXAMPLES / PEER_AUTH_FILE).read_text().replace("mode: STRICT", "mode: PERMISSIVE")
        )
        world.apply(permissive)
        got: dict[str, Any] = {}

        def admitted() -> bool:
            got.update(world.http("client", url, timeout=1.0))
            return got.get("ok") == 1

        permissive_ok = _poll(admitted, CONVERGE) and world.pods["client"].ip in callers_seen(got)
        evidence.append(
            f"PERMISSIVE: client -> {backend}: "
            f"{'admitted' if permissive_ok else 'REFUSED'}; backend saw "
            f"{sorted(callers_seen(got))} (client is {world.pods['client'].ip})"
        )
        world.apply(PEER_AUTH_FILE)  # back to STRICT, as the example folder has it
    else:
        got = world.http("client", url, timeout=1.0)
        evidence.append(
            f"no PeerAuthentication applied: client -> {backend} answered "
            f"{got.get('ok')}/1 (STRICT not enforced)"
        )
    return CheckResult(
        4,
        "PeerAuthentication: STRICT refuses the non-mesh client, PERMISSIVE admits it",
        strict_ok and permissive_ok,
        tuple(evidence),
    )


def check_authorization(world: DemoWorld) -> CheckResult:
    """5. AuthorizationPolicy: only frontend may call backend; sleep is denied."""
    if "no-authorization-policy" not in world.config.sabotage:
        world.apply(AUTHZ_FILE)
    fe: dict[str, Any] = {}
    sl: dict[str, Any] = {}

    def enforced() -> bool:
        fe.update(world.http("frontend", "http://backend/", count=2, timeout=1.0))
        sl.update(world.http("sleep", "http://backend/", count=2, timeout=1.0))
        return fe.get("ok") == 2 and sl.get("ok") == 0

    passed = _poll(enforced, CONVERGE)
    denials: list[dict[str, Any]] = []

    def logged() -> bool:
        denials[:] = [
            r
            for node in world.lab.nodes
            for r in world.access_records(node.name)
            if "sa/sleep" in str(r.get("src_identity")) and r.get("result") != "ok"
        ]
        return bool(denials)

    passed = _poll(logged, CONVERGE) and passed
    return CheckResult(
        5,
        "AuthorizationPolicy: frontend allowed, another mesh pod denied",
        passed,
        (
            f"policy: deploy/examples/demo/{AUTHZ_FILE} (ALLOW principals "
            f"cluster.local/ns/demo/sa/frontend)",
            f"frontend -> http://backend/: {fe.get('ok')}/2 answered",
            f"sleep (spiffe://{TRUST_DOMAIN}/ns/demo/sa/sleep) -> http://backend/: "
            f"{sl.get('ok')}/2 answered",
            f"denials in the destination ztunnels' access logs: {len(denials)}"
            + (
                f" (e.g. result={denials[-1].get('result')} {denials[-1].get('reason', '')[:60]})"
                if denials
                else ""
            ),
        ),
    )


def check_fail_closed(world: DemoWorld) -> CheckResult:
    """6. Fail closed: with frontend's ztunnel stopped the call fails, nothing in clear."""
    node = world.node_of("frontend")
    backend = world.remote_backend("frontend")
    url = f"http://{world.pods[backend].ip}:{BACKEND_PORT}/"
    up: dict[str, Any] = {}

    def works() -> bool:
        up.update(world.http("frontend", url, timeout=1.0))
        return up.get("ok") == 1

    # One capture over the outage and the recovery: the recovered call's HBONE traffic
    # proves the capture was live, so "no plaintext" is not an empty observation.
    with _FabricCapture(world.lab, "tcp") as cap:
        world.lab.stop(world.ztunnels.pop(node.name))
        down = world.http("frontend", url, count=2, timeout=1.0)
        world.start_ztunnel(node)
        world.wait_ztunnel_ready(node.name)
        restored = _poll(works, CONVERGE)
    segments = cap.segments()
    plaintext = [s for s in segments if BACKEND_PORT in (s.sport, s.dport)]
    hbone = [s for s in segments if HBONE_PORT in (s.sport, s.dport)]
    passed = down.get("ok") == 0 and not plaintext and restored and bool(hbone)
    return CheckResult(
        6,
        "fail closed: ztunnel stopped -> refused, never in clear; restarted -> works",
        passed,
        (
            f"ztunnel on {node.name} stopped; frontend -> {backend} {url}: {down.get('ok')}/2 "
            f"answered ({'; '.join(sorted(set(down.get('errors', []))))[:80] or 'no error'})",
            f"fabric capture over outage and recovery: {len(plaintext)} segments to or from "
            f"port {BACKEND_PORT} (plaintext), {len(hbone)} HBONE segments on {HBONE_PORT}",
            f"ztunnel restarted: frontend -> {backend} {'answers again' if restored else 'FAILS'}",
        ),
    )


def check_telemetry(world: DemoWorld) -> CheckResult:
    """7. Telemetry: istio_tcp_* counters for frontend -> backend; proxies and maps."""
    src_node = world.node_of("frontend").name
    backend = world.remote_backend("frontend")
    dst_node = world.node_of(backend).name
    labels = {"source_workload": "frontend", "destination_workload": backend}
    values = {}
    for reporter, node in (("source", src_node), ("destination", dst_node)):
        text = world.node_get(node, "/metrics", 15020)
        for metric in (
            "istio_tcp_connections_opened_total",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
        ):
            values[(reporter, metric)] = metric_value(
                text, metric, {**labels, "reporter": reporter}
            )
    maps = {n.name: world.maps("workloads", n.name) for n in world.lab.nodes}
    proxies = world.controlplane_status() or []
    enrolled = {n: sum(1 for r in rows if r.get("enrolled")) for n, rows in maps.items()}
    passed = all(v > 0 for v in values.values()) and all(enrolled.values()) and len(proxies) >= 2
    evidence = [
        f"{metric}{{reporter={reporter},source_workload=frontend,destination_workload="
        f"{backend}}} = {value:g}"
        for (reporter, metric), value in values.items()
    ]
    evidence.append(
        f"ambient controlplane status: {len(proxies)} proxies connected "
        f"({', '.join(sorted(str(p.get('node', p.get('id', '?'))) for p in proxies))})"
    )
    evidence += [
        f"ambient maps workloads --node-id {world.lab.node(n).id}: {len(rows)} pods, "
        f"{enrolled[n]} enrolled"
        for n, rows in maps.items()
    ]
    return CheckResult(
        7,
        "telemetry: istio_tcp_* on both reporters; capture maps per node",
        passed,
        tuple(evidence),
    )


BASE_CHECKS: tuple[Callable[[DemoWorld], CheckResult], ...] = (
    check_service,
    check_mtls,
    check_source_ip,
    check_peer_authentication,
    check_authorization,
    check_fail_closed,
    check_telemetry,
)


def _poll(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


class _FabricCapture:
    """tcpdump on the fabric bridge for the duration of a ``with`` block, to a pcap file."""

    def __init__(self, lab: Lab, bpf_filter: str) -> None:
        self._lab = lab
        self._filter = bpf_filter
        self._path = lab.run_dir / f"fabric-{time.time_ns()}.pcap"
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> _FabricCapture:
        argv, env = self._lab.command(
            self._lab.fabric,
            [
                "tcpdump",
                "-i",
                "any",
                "-n",
                "-U",
                "--immediate-mode",  # else packets wait in the ring for a block timeout
                "-B",
                "16384",
                "-s",
                "0",
                "-w",
                str(self._path),
                self._filter,
            ],
        )
        self._proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # "listening on any ...": capturing from here on
            line = self._proc.stderr.readline()
            if "listening on" in line or not line:
                break
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        time.sleep(0.3)
        self._proc.terminate()
        try:
            self._proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()

    def segments(self) -> list[Any]:
        """The TCP segments with payload that crossed the fabric."""
        return list(read_segments(self._path.read_bytes())) if self._path.exists() else []


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> DemoReport:
    """Runs the whole scenario; the lab is torn down at the end unless ``config.keep``."""
    unknown = config.sabotage - set(SABOTAGE)
    if unknown:
        raise DemoError(f"unknown sabotage {sorted(unknown)}", hint=f"use {sorted(SABOTAGE)}")
    report = DemoReport()
    progress = Progress(out, report)
    out.write(f"ambient demo: the mesh tutorial on a two-node lab named {config.name!r}\n\n")
    lab: Lab | None = None
    try:
        with progress.step("lab: fabric bridge, 2 nodes, an outside host (network namespaces)"):
            lab = Lab.create(LabSpec(name=config.name, nodes=2))
        world = build_world(lab, config, progress)
        out.write("\n")
        for check in CHECKS:
            number, _, title = (check.__doc__ or "").partition(". ")
            if not config.runs(int(number)):
                continue
            with progress.step(f"check {number}: {title.split(';')[0].rstrip('.')}"):
                result = check(world)
            report.checks.append(result)
            out.write(f"     {result.status}  {result.title}\n")
            for line in result.evidence:
                out.write(f"           {line}\n")
        if world.capture is not None:  # check 2 did not run
            world.capture.__exit__(None, None, None)
    finally:
        if lab is not None and not config.keep:
            with progress.step("teardown: processes, namespaces, pins"):
                lab.destroy()
    return report


def summary(report: DemoReport, config: DemoConfig) -> str:
    """The closing table and what to try next."""
    lines = ["", "   #  RESULT  CHECK"]
    lines += [f"  {c.number:>2}  {c.status:<6}  {c.title}" for c in report.checks]
    passed = sum(c.passed for c in report.checks)
    lines.append(f"\n  {passed}/{len(report.checks)} checks passed")
    n = config.name
    if config.keep:
        lines += [
            "",
            "The mesh is still running. Try:",
            f"  ambient lab status --name {n}",
            f"  ambient lab exec --name {n} demo/frontend -- curl -s http://backend/",
            f"  ambient maps workloads --node-id {n}-node1",
            f"  ambient maps stats --node-id {n}-node2",
            f"  ambient lab exec --name {n} node1 -- python -m ambient ztunnel-config all",
            f"  ambient lab exec --name {n} fabric -- python -m ambient controlplane status",
            f"  ambient lab exec --name {n} node2 -- curl -s localhost:15020/metrics",
            f"  ambient waypoint list --lab {n}",
            f"  ambient lab exec --name {n} outside -- curl -s "
            "http://istio-ingressgateway.istio-system/",
            f"  ambient lab traces --name {n}",
            f"  ambient lab down --name {n}      # removes everything",
        ]
    else:
        lines.append("  Run 'ambient demo --keep' to explore the running mesh afterwards.")
    return "\n".join(lines)


def _all_checks() -> tuple[Callable[[DemoWorld], CheckResult], ...]:
    from lab.demo_l7 import L7_CHECKS

    return (*BASE_CHECKS, *L7_CHECKS)


CHECKS = _all_checks()
"""Every check, in order: 1-7 here, 8-13 in :mod:`lab.demo_l7`."""
