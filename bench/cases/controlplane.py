"""Control plane: YAML change -> every xDS client's acknowledgement, CPU, RSS, CSR rate.

Each variant is a real ``ambient controlplane run`` process on 127.0.0.1 (no root, no
lab) serving a folder of generated YAML (10 namespaces, 50 services, one file per pod:
the layout the lab writes), with :data:`CLIENTS` real ``XdsClient`` s (ztunnel's delta-xDS
client over gRPC/TLS with node credentials) in a background event loop of the bench
process. Only the variant being measured runs: the others are stopped (SIGSTOP), so an
idle 5,000-pod control plane's polling cannot slow the 1-pod baseline.

Probes:
- ``push``: :data:`CHANGES` changes per measurement, alternately a new pod file and a
  label flip (``version``) of an earlier pod, each written atomically (hidden temporary
  file, then ``os.replace``, as the lab writes). The figure is the time from just
  before the rename to the moment the last client accepted the new resource (its
  ``on_state`` callback, called after the client decoded the push, ACKed it and built
  its ``ProxyState``; the clients share this process, so one client's state build
  can delay another's by a few ms at 5,000 pods). Costs: the control plane's CPU
  seconds during the probe and its peak RSS (``VmHWM``) so far.
- ``idle``: the control plane's CPU use with nothing changing (folder polling).
- ``csr``: ``CreateCertificate`` calls per second for a pod identity of node1 through
  ``CaClient`` (gRPC/TLS, node credential, :data:`CSR_CONCURRENCY` in flight), and, as
  its baseline in the same measurement, the same work in-process
  (``CertificateService.create_certificate`` on the same CA and cluster, key and CSR
  generated per call in both cases).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench import stats
from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, register
from bench.errors import MeasurementError, ToolError
from bench.procs import tree_usage

CLIENTS = 2
"""xDS clients per control plane (each one a ztunnel's ``XdsClient`` on its own loop)."""
CHANGES = 20
"""Changes per ``push`` measurement (8 in quick mode)."""
CHANGE_TIMEOUT_S = 10.0
"""A change that has not reached every client by then fails the measurement."""
CSR_CONCURRENCY = 4
"""CreateCertificate calls in flight over gRPC."""
NAMESPACES = 10
SERVICES_PER_NAMESPACE = 5
POD_COUNTS = {"1-pod": 1, "100-pods": 100, "5000-pods": 5000}
START_TIMEOUT_S = 120.0
"""Bound on a control plane's start (loading 5,000 files on a busy machine)."""

T = TypeVar("T")


def _ms(metric: str, what: str) -> Metric:
    return Metric(metric, "ms", higher_is_better=False, description=what)


def namespace_yaml(index: int) -> str:
    """An enrolled namespace ``bench<index>``."""
    return (
        "apiVersion: v1\nkind: Namespace\n"
        f"metadata: {{name: bench{index}, labels: {{istio.io/dataplane-mode: ambient}}}}\n"
    )


def service_yaml(namespace: int, index: int) -> str:
    """Service ``s<index>`` selecting ``app: app<index>`` with a named target port."""
    return (
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: s{index}, namespace: bench{namespace}}}\n"
        f"spec: {{clusterIP: 10.96.{namespace}.{index + 1}, selector: {{app: app{index}}}, "
        "ports: [{name: http, port: 80, targetPort: http}]}\n"
    )


def pod_yaml(name: str, index: int, version: str = "v1") -> str:
    """A running, ready pod; pods alternate between node1 and node2."""
    namespace = index % NAMESPACES
    ip = f"10.{64 + index // 65536}.{(index // 256) % 256}.{index % 256}"
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {name}, namespace: bench{namespace}, uid: uid-{name}, "
        f"labels: {{app: app{index % 50}, version: {version}}}}}\n"
        f"spec: {{nodeName: node{index % 2 + 1}, serviceAccountName: sa{index % 20}, "
        "containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}\n"
        f"status: {{phase: Running, podIP: {ip}, "
        'conditions: [{type: Ready, status: "True"}]}\n'
    )


def write_atomically(path: Path, text: str) -> None:
    """Write a hidden temporary file next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(folder: Path, pods: int) -> None:
    """The generated cluster: namespaces, services, one file per pod."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(NAMESPACES):
        (folder / f"ns-{n}.yaml").write_text(namespace_yaml(n))
        for s in range(SERVICES_PER_NAMESPACE):
            (folder / f"svc-{n}-{s}.yaml").write_text(service_yaml(n, s))
    for i in range(pods):
        (folder / f"pod-{i}.yaml").write_text(pod_yaml(f"pod-{i}", i))


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EventLoopThread:
    """An asyncio loop in a daemon thread: the clients live there while ``measure`` blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for it (bounded)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what is left, stop the loop and join the thread."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Expectation:
    """A change the clients must see: ``uid`` present, at a version other than ``old``."""

    uid: str
    old: str | None
    seen: dict[int, float] = field(default_factory=dict)
    """client index -> monotonic time its core accepted the change (and ACKs it)."""
    built: dict[int, float] = field(default_factory=dict)
    """client index -> monotonic time it had built its ``ProxyState`` with the change."""
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Plane:
    """One control-plane process, its folder, its clients."""

    pods: int
    config: Path
    state: Path
    process: subprocess.Popen[bytes]
    xds_port: int
    tokens: dict[str, Path]
    clients: list[Any] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)
    expectation: Expectation | None = None
    service: Any = None
    """The in-process ``CertificateService`` on the same CA and cluster (CSR baseline)."""
    added: int = 0

    def endpoint(self, node: str) -> Any:
        """Where and how a client of ``node`` reaches this control plane."""
        from ztunnel.xds.client import ControlPlaneEndpoint

        return ControlPlaneEndpoint(
            address=f"127.0.0.1:{self.xds_port}",
            root_cert=self.state / "root-cert.pem",
            token_file=self.tokens[node],
            server_name="localhost",
            timeout=10.0,
        )

    def held_version(self, client: int, uid: str) -> str | None:
        """The version of workload ``uid`` that client ``client`` accepted, if any."""
        from api.messages import ADDRESS_TYPE_URL

        held = self.clients[client].core.types[ADDRESS_TYPE_URL].resources.get(uid)
        return None if held is None else str(held[0])

    def on_state(self, client: int, *, built: bool) -> None:
        """A client accepted a push (``built``: and built its state): note the awaited change."""
        expectation = self.expectation
        if expectation is None:
            return
        seen = expectation.built if built else expectation.seen
        if client in seen:
            return
        version = self.held_version(client, expectation.uid)
        if version is not None and version != expectation.old:
            seen[client] = time.monotonic()
            if len(expectation.built) == len(expectation.seen) == len(self.clients):
                expectation.done.set()


PUSH_METRICS = (
    _ms("p50_ms", "median time from the file rename until every client accepted (ACKs) it"),
    _ms("p99_ms", "99th percentile of the same (the maximum with few changes)"),
    _ms("state_p50_ms", "median time until every client had also built its ProxyState"),
    Metric(
        "cp_cpu_s",
        "s",
        higher_is_better=False,
        description="control-plane CPU seconds (user + system) during the probe",
        cost=True,
    ),
    Metric(
        "cp_rss_mb",
        "MB",
        higher_is_better=False,
        description="control-plane peak RSS (VmHWM) so far",
        cost=True,
    ),
)


@register
class ControlPlaneCase(Case):
    """Push latency, CPU, RSS and CSR rate of the control plane at 1, 100 and 5,000 pods."""

    name = "controlplane"
    description = (
        "Time from a YAML change (a pod added, a label flipped; file renamed into place) "
        "to every xDS client's acceptance, the control plane's CPU and RSS, and the "
        "CreateCertificate rate over gRPC/TLS against in-process signing."
    )
    data_path = (
        "folder -> FolderSource poll -> debounce -> translate -> delta ADS over gRPC/TLS "
        "(127.0.0.1) -> ztunnel XdsClient; CaClient -> gRPC/TLS -> CertificateService"
    )
    variants = (
        Variant("1-pod", "1 pod, 10 namespaces, 50 services", baseline=True),
        Variant("100-pods", "100 pods, 10 namespaces, 50 services"),
        Variant("5000-pods", "5,000 pods (one file each), 10 namespaces, 50 services"),
    )
    probes = (
        Probe(
            "push",
            f"{CHANGES} changes (a pod added, a pod's label flipped, alternately), each "
            "awaited at every client before the next (bounded by 10 s each)",
            PUSH_METRICS,
        ),
        Probe(
            "idle",
            "nothing changes for the measurement (at most 2 s): the folder polling's cost",
            (
                Metric(
                    "idle_cpu_pct",
                    "%",
                    higher_is_better=False,
                    description="control-plane CPU as a percentage of one core while idle",
                ),
            ),
        ),
        Probe(
            "csr",
            f"CreateCertificate for a pod identity of node1 for the measurement's duration: "
            f"CaClient over gRPC/TLS ({CSR_CONCURRENCY} in flight), then in-process",
            (
                Metric(
                    "grpc_per_s",
                    "1/s",
                    higher_is_better=True,
                    description="certificates per second through CaClient (gRPC/TLS)",
                ),
                Metric(
                    "inprocess_per_s",
                    "1/s",
                    higher_is_better=True,
                    description="the same work in-process (no gRPC, no TLS): the baseline",
                ),
            ),
        ),
    )

    def __init__(self) -> None:
        self._planes: dict[str, Plane] = {}
        self._loops: list[EventLoopThread] = []
        self._settings: RunSettings | None = None
        self._changes = CHANGES
        self._rng = random.Random(5)  # timing jitter, not cryptography

    # --- environment ----------------------------------------------------------

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """Start one control plane per variant, with its clients; stop them all on exit."""
        self._settings = settings
        self._changes = 8 if settings.quick else CHANGES
        # One event loop thread per client, as each ztunnel is its own process: a
        # client building its state must not hold the others' pushes in its loop.
        self._loops = [EventLoopThread() for _ in range(CLIENTS)]
        try:
            for variant in self.variants:
                plane = self._start(variant, settings.work_dir / variant.name)
                self._planes[variant.name] = plane
                for index, loop in enumerate(self._loops):
                    loop.run(self._connect(plane, index), START_TIMEOUT_S)
                os.kill(plane.process.pid, signal.SIGSTOP)
            yield
        finally:
            for loop in self._loops:
                loop.close()
            for plane in self._planes.values():
                _stop(plane.process)

    def _start(self, variant: Variant, work: Path) -> Plane:
        from controlplane.ca.credentials import NodeTokens

        pods = POD_COUNTS[variant.name]
        config, state = work / "config", work / "state"
        write_config(config, pods)
        xds, admin = free_port(), free_port()
        log = (work / "controlplane.log").open("wb")
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "ambient", "controlplane", "run"),
                *("--config-dir", str(config), "--state-dir", str(state)),
                *("--listen", f"127.0.0.1:{xds}", "--admin-listen", f"127.0.0.1:{admin}"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            _wait_listening(process, xds, work / "controlplane.log")
            tokens = NodeTokens.load_or_create(state)
            files = {}
            for node in ("node1", "node2"):
                files[node] = work / f"{node}.token"
                files[node].write_text(tokens.issue(node, dt.datetime.now(dt.UTC)))
        except BaseException:
            _stop(process)
            raise
        plane = Plane(pods, config, state, process, xds, files)
        plane.service = _inprocess_service(plane)
        return plane

    async def _connect(self, plane: Plane, index: int) -> None:
        """Client ``index`` of ``plane``, on the running loop, once it holds the state."""
        from ztunnel.xds.client import Backoff, XdsClient, node_id

        node = f"node{index % 2 + 1}"
        client = XdsClient(
            plane.endpoint(node),
            node_id(pod=f"ztunnel-{index}"),
            _callback(plane, index),
            node_metadata={"NODE_NAME": node},
            backoff=Backoff(initial=0.05, maximum=0.5),
        )
        _record_acceptance(plane, client, index)
        plane.clients.append(client)
        plane.tasks.append(asyncio.create_task(client.run()))
        await asyncio.wait_for(client.first_state.wait(), START_TIMEOUT_S)

    @contextlib.contextmanager
    def activate(self, variant: Variant) -> Iterator[None]:
        """Only the measured variant's control plane runs (the others are SIGSTOPped)."""
        plane = self._planes[variant.name]
        os.kill(plane.process.pid, signal.SIGCONT)
        time.sleep(0.3)  # let it catch up with what its clients sent while it was stopped
        try:
            yield
        finally:
            os.kill(plane.process.pid, signal.SIGSTOP)

    # --- measurements ---------------------------------------------------------

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """One probe against the variant's control plane."""
        plane = self._planes[variant.name]
        assert self._settings is not None
        if probe.name == "push":
            return self._push(plane, round_index)
        if probe.name == "idle":
            before = _usage(plane)
            window = min(self._settings.duration_s, 2.0)
            started = time.monotonic()
            time.sleep(window)
            used = _usage(plane).cpu_s - before.cpu_s
            return {"idle_cpu_pct": 100.0 * used / (time.monotonic() - started)}
        return self._csr(plane, self._settings.duration_s)

    def _push(self, plane: Plane, round_index: int) -> Measurement:
        before = _usage(plane)
        latencies: list[float] = []
        built: list[float] = []
        for k in range(self._changes):
            if k % 2 == 0 or plane.added == 0:
                index = 100_000 + plane.added
                name = f"bench-{index}"
                plane.added += 1
                text, old = pod_yaml(name, index), None
            else:
                index = 100_000 + self._rng.randrange(plane.added)
                name = f"bench-{index}"
                uid = f"Kubernetes//Pod/bench{index % NAMESPACES}/{name}"
                old = plane.held_version(0, uid)
                text = pod_yaml(name, index, version=f"r{round_index}k{k}")
            uid = f"Kubernetes//Pod/bench{index % NAMESPACES}/{name}"
            expectation = Expectation(uid, old)
            plane.expectation = expectation
            started = time.monotonic()
            write_atomically(plane.config / f"{name}.yaml", text)
            if not expectation.done.wait(CHANGE_TIMEOUT_S):
                raise MeasurementError(
                    f"{plane.pods} pods: change {k} ({uid}) reached clients "
                    f"{sorted(expectation.seen)} of {len(plane.clients)} within "
                    f"{CHANGE_TIMEOUT_S} s",
                    hint="see the control plane's log in the case's work folder",
                )
            latencies.append(1000.0 * (max(expectation.seen.values()) - started))
            built.append(1000.0 * (max(expectation.built.values()) - started))
            plane.expectation = None
            # Let the debouncer settle, at a random phase of the folder poll.
            time.sleep(0.15 + self._rng.uniform(0, 0.1))
        after = _usage(plane)
        return {
            "p50_ms": stats.percentile(latencies, 50),
            "p99_ms": stats.percentile(latencies, 99),
            "state_p50_ms": stats.percentile(built, 50),
            "cp_cpu_s": after.cpu_s - before.cpu_s,
            "cp_rss_mb": after.peak_rss_bytes / 1e6,
        }

    def _csr(self, plane: Plane, duration_s: float) -> Measurement:
        from ztunnel.identity.caclient import CaClient
        from ztunnel.identity.spiffe import SpiffeId

        assert self._loops
        identity = SpiffeId("cluster.local", "bench0", "sa0")  # pod-0: bench0, sa0, node1
        window = min(duration_s, 3.0)

        async def over_grpc() -> int:
            client = CaClient(plane.endpoint("node1"))
            deadline = time.monotonic() + window
            count = 0

            async def worker() -> None:
                nonlocal count
                while time.monotonic() < deadline:
                    await client.issue(identity)
                    count += 1

            try:
                await asyncio.gather(*(worker() for _ in range(CSR_CONCURRENCY)))
            finally:
                await client.close()
            return count

        started = time.monotonic()
        issued = self._loops[0].run(over_grpc(), window + 30)
        grpc_rate = issued / (time.monotonic() - started)
        inprocess = _sign_inprocess(plane, identity, window)
        return {"grpc_per_s": grpc_rate, "inprocess_per_s": inprocess}


def _callback(plane: Plane, index: int) -> Callable[[Any], None]:
    def on_state(_state: Any) -> None:
        plane.on_state(index, built=True)

    return on_state


def _record_acceptance(plane: Plane, client: Any, index: int) -> None:
    """Time each push when the client's core accepts it (the ACK is sent right after).

    The client's own ``handle`` runs unchanged; this only notes the moment it returns,
    before the client builds its ``ProxyState`` (which ``on_state`` then reports).
    """
    handle = client.core.handle

    def timed(response: Any) -> Any:
        reply = handle(response)
        plane.on_state(index, built=False)
        return reply

    client.core.handle = timed


def _inprocess_service(plane: Plane) -> Any:
    """A ``CertificateService`` on the plane's CA, node tokens and folder (same work)."""
    from controlplane.ca.auth import ChainedAuthenticator
    from controlplane.ca.authority import load_or_create
    from controlplane.ca.credentials import NodeTokens
    from controlplane.ca.service import CertificateService
    from controlplane.sources import FolderSource

    now = dt.datetime.now(dt.UTC)
    ca = load_or_create(plane.state, now)
    state = FolderSource(plane.config).load()
    authenticator = ChainedAuthenticator(NodeTokens.load_or_create(plane.state), None)
    return CertificateService(ca, authenticator, lambda: state, lambda: dt.datetime.now(dt.UTC))


def _sign_inprocess(plane: Plane, identity: Any, window: float) -> float:
    from api.xds import IMPERSONATED_IDENTITY, CertificateRequest
    from ztunnel.identity.certs import build_csr, generate_key

    metadata = {"authorization": f"Bearer {plane.tokens['node1'].read_text().strip()}"}
    deadline = time.monotonic() + window
    started, count = time.monotonic(), 0
    while time.monotonic() < deadline:
        request = CertificateRequest(
            csr=build_csr(generate_key(), identity).decode(),
            validity_seconds=86400,
            metadata={IMPERSONATED_IDENTITY: str(identity)},
        )
        plane.service.create_certificate(request, metadata)
        count += 1
    return count / (time.monotonic() - started)


@dataclass(frozen=True)
class _Usage:
    cpu_s: float
    peak_rss_bytes: int


def _usage(plane: Plane) -> _Usage:
    usage = tree_usage(plane.process.pid)
    if usage is None:
        raise MeasurementError(f"the {plane.pods}-pod control plane exited")
    return _Usage(usage.cpu_s, usage.peak_rss_bytes)


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ToolError(
                f"the control plane exited with {process.returncode}: "
                f"{log.read_text(errors='replace')[-600:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise ToolError(f"the control plane did not listen on {port} within {START_TIMEOUT_S} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
