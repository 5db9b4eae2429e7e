"""Pod to pod across two lab nodes: direct (no mesh) against a sidecar-style Envoy pair.

Both variants are live at once (the Envoys listen on 127.0.0.1 in the pods, the
servers on the pod IP), so every probe alternates between them with nothing restarted.
Later cases (ztunnel) subclass :class:`PodToPod` and add variants through ``paths``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

from bench import load
from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, register
from bench.datapath import (
    LivePath,
    PathFactory,
    PodPair,
    direct,
    start_apps,
    tune_pod,
)
from bench.envoy.pair import envoy_pair
from bench.errors import BenchError
from bench.procs import NetnsProcess, ProxyProcess, Usage, machine_busy_seconds

PROXY_CPU = Metric(
    "proxy_cpu_s",
    "s",
    higher_is_better=False,
    description="CPU seconds all proxies of the path used during the measurement",
    cost=True,
)
PROXY_RSS = Metric(
    "proxy_rss_mb",
    "MB",
    higher_is_better=False,
    description="peak RSS (VmHWM) of the path's proxies, summed, so far in the run",
    cost=True,
)
LOAD_CPU = Metric(
    "load_cpu_pct",
    "%",
    higher_is_better=False,
    description="CPU of the load generator as % of one core; near 100 means it was the bound",
    cost=True,
)
SERVER_CPU = Metric(
    "server_cpu_pct",
    "%",
    higher_is_better=False,
    description="CPU of the server apps (iperf3 -s, origin) as % of one core; near 100 "
    "means the server, not the path, was the bound",
    cost=True,
)
OTHER_CPU = Metric(
    "other_cpu_pct",
    "%",
    higher_is_better=False,
    description="machine CPU busy outside the load tool, servers and proxies, as % of one "
    "core (other work, and kernel network work not charged to our processes)",
    cost=True,
)
COSTS = (PROXY_CPU, PROXY_RSS, LOAD_CPU, SERVER_CPU, OTHER_CPU)
THROUGHPUT = Metric(
    "throughput", "Gbit/s", higher_is_better=True, description="iperf3 bits received per second"
)
P50 = Metric("p50", "us", higher_is_better=False, description="median request latency (wrk)")
P99 = Metric("p99", "us", higher_is_better=False, description="99th percentile latency (wrk)")
RPS = Metric("rate", "req/s", higher_is_better=True, description="requests completed per second")
CPS = Metric(
    "rate",
    "conn/s",
    higher_is_better=True,
    description="new TCP connections per second, one at a time, each with one request",
)

HOLD_COUNT = 1000
HELD = Metric("held", "conn", higher_is_better=True, description="connections open at the reading")
RSS_HELD = Metric(
    "proxy_rss_held_mb",
    "MB",
    higher_is_better=False,
    description="resident memory (VmRSS) of the path's proxies with the connections open",
)
RSS_LARGEST_HELD = Metric(
    "proxy_rss_largest_mb",
    "MB",
    higher_is_better=False,
    description="resident memory (VmRSS) of the largest single proxy process (a ztunnel "
    "worker, one Envoy) with the connections open",
)
RSS_PER_CONN = Metric(
    "rss_per_conn_kb",
    "KB",
    higher_is_better=False,
    description="growth of the proxies' resident memory per open connection",
)

PROBES = (
    Probe(
        "bulk-1",
        "iperf3, 1 TCP stream client -> server pod for the measurement time; bounded by the "
        "CPU of the path (kernel copies, proxies' TLS) shared with iperf3 on 2 cores",
        (THROUGHPUT, *COSTS),
    ),
    Probe(
        "bulk-4",
        "iperf3, 4 parallel TCP streams; same bounds as bulk-1, more parallelism",
        (THROUGHPUT, *COSTS),
    ),
    Probe(
        "rr-1",
        "wrk, 1 thread, 1 keep-alive connection, closed loop of small HTTP/1.1 requests "
        "to an Envoy direct_response origin: round-trip latency of the path",
        (P50, P99, RPS, *COSTS),
    ),
    Probe(
        "rr-16",
        "wrk, 1 thread, 16 keep-alive connections (closed loop): latency under load; "
        "bounded by the 2 CPUs shared by wrk, origin and proxies",
        (P50, P99, RPS, *COSTS),
    ),
    Probe(
        "connect",
        "wrk, 1 connection at a time with 'Connection: close': every request opens a new "
        "TCP connection (and, through the Envoy pair, a new mTLS session to the peer)",
        (CPS, *COSTS),
    ),
    Probe(
        f"hold-{HOLD_COUNT}",
        f"{HOLD_COUNT} keep-alive connections opened 8 at a time (one request each, so the "
        "whole path is up), held while the proxies' memory is read, then closed; a "
        "Python client, bounded by its own timeout",
        (HELD, RSS_HELD, RSS_LARGEST_HELD, RSS_PER_CONN, *COSTS),
    ),
)


@dataclass(frozen=True)
class LoadFigures:
    """What a probe's load tool measured, before costs are added."""

    metrics: dict[str, float]
    load_cpu_s: float
    """CPU the load tool used (its whole run, start-up included)."""


ProbeRunner = Callable[[LivePath, RunSettings, "PodToPod"], LoadFigures]


def _bulk(streams: int) -> ProbeRunner:
    def run(live: LivePath, settings: RunSettings, case: PodToPod) -> LoadFigures:
        del case
        result = load.bulk(
            live.client_netns,
            live.bulk.host,
            live.bulk.port,
            streams=streams,
            duration_s=settings.duration_s,
        )
        return LoadFigures({"throughput": result.gbit_per_s}, result.client_cpu_s)

    return run


def _requests(connections: int, *, new_connection_each: bool) -> ProbeRunner:
    def run(live: LivePath, settings: RunSettings, case: PodToPod) -> LoadFigures:
        result = load.requests(
            live.client_netns,
            live.http.url,
            connections=connections,
            duration_s=settings.duration_s,
            script=settings.work_dir / "wrk-summary.lua",
            new_connection_each=new_connection_each,
        )
        if result.errors > result.requests // 100:
            raise BenchError(
                f"case {case.name}: {result.errors} errors for {result.requests} requests "
                f"to {live.http.url}",
                hint="see the proxies' logs in the run's work folder",
            )
        figures = {"rate": result.rate}
        if not new_connection_each and result.latency_valid:
            figures |= {"p50": result.p50_us, "p99": result.p99_us}
        return LoadFigures(figures, result.client_cpu_s)

    return run


def _hold(count: int) -> ProbeRunner:
    def run(live: LivePath, settings: RunSettings, case: PodToPod) -> LoadFigures:
        del settings
        # relative to the proxies' memory when the path came up: allocators keep what
        # earlier probes used, so a reading just before this probe would hide the growth
        idle = case.idle_rss_bytes(live)
        result = load.hold_connections(
            live.client_netns,
            live.http.host,
            live.http.port,
            count=count,
            while_held=lambda: [p.usage() for p in live.proxies],
        )
        figures: dict[str, float] = {"held": float(result.held)}
        if live.proxies:
            held_rss = sum(u.rss_bytes for u in result.reading)
            figures["proxy_rss_held_mb"] = held_rss / 1e6
            figures["proxy_rss_largest_mb"] = max(u.largest_rss_bytes for u in result.reading) / 1e6
            figures["rss_per_conn_kb"] = (held_rss - idle) / 1024 / max(1, result.held)
        return LoadFigures(figures, result.client_cpu_s)

    return run


RUNNERS: Mapping[str, ProbeRunner] = {
    "bulk-1": _bulk(1),
    "bulk-4": _bulk(4),
    "rr-1": _requests(1, new_connection_each=False),
    "rr-16": _requests(16, new_connection_each=False),
    "connect": _requests(1, new_connection_each=True),
    f"hold-{HOLD_COUNT}": _hold(HOLD_COUNT),
}


def _cpu_delta(before: list[Usage], after: list[Usage]) -> float:
    return sum(a.cpu_s - b.cpu_s for a, b in zip(after, before, strict=True))


def cost_metrics(
    before: list[Usage],
    after: list[Usage],
    load_cpu_s: float,
    duration_s: float,
    *,
    server_cpu_s: float | None = None,
    machine_busy_s: float | None = None,
) -> dict[str, float]:
    """Proxy CPU during the measurement, peak RSS so far, and CPU shares of the load tool,
    the servers and everything else on the machine."""
    if duration_s <= 0:
        raise BenchError(f"a measurement lasted {duration_s} s; cannot compute CPU shares")
    metrics = {"load_cpu_pct": 100.0 * load_cpu_s / duration_s}
    if server_cpu_s is not None:
        metrics["server_cpu_pct"] = 100.0 * server_cpu_s / duration_s
    if machine_busy_s is not None:
        ours = load_cpu_s + (server_cpu_s or 0.0) + (_cpu_delta(before, after) if after else 0.0)
        metrics["other_cpu_pct"] = max(0.0, 100.0 * (machine_busy_s - ours) / duration_s)
    if after:
        metrics["proxy_cpu_s"] = _cpu_delta(before, after)
        metrics["proxy_rss_mb"] = sum(a.peak_rss_bytes for a in after) / 1e6
    return metrics


@register
class PodToPod(Case):
    """Client pod on node1, server pod on node2: no mesh vs. a sidecar Envoy pair."""

    name = "pod-to-pod"
    description = (
        "Bulk throughput (1 and 4 streams), request/response latency at 1 and 16 "
        "connections, new connections per second, and proxy memory with 1,000 open "
        "connections, between two pods on different "
        "lab nodes: direct (no mesh) as the baseline, and through a pair of Envoy 1.40 "
        "proxies doing an mTLS tunnel (TLS 1.3, SPIFFE identities verified both ways), "
        "one in each pod, the sidecar-style reference later cases are compared with."
    )
    data_path = (
        "client pod -> veth -> node1 -> fabric bridge -> node2 -> veth -> server pod; "
        "envoy-mtls adds 127.0.0.1 -> client Envoy at the start and server Envoy -> "
        "127.0.0.1 at the end, with TLS on the wire between the pods"
    )
    variants: ClassVar[tuple[Variant, ...]] = (
        Variant("direct", "client dials the server pod's IP; no proxy", baseline=True),
        Variant(
            "envoy-mtls",
            "client dials its pod's Envoy on 127.0.0.1; mTLS to the server pod's Envoy, "
            "which forwards to the app on 127.0.0.1 (2 workers each)",
        ),
    )
    probes: ClassVar[tuple[Probe, ...]] = PROBES
    paths: ClassVar[Mapping[str, PathFactory]] = {"direct": direct, "envoy-mtls": envoy_pair()}
    """How each variant's path is built (subclasses add theirs)."""
    lab_suffix: ClassVar[str] = "p2p"
    """Appended to the run's lab prefix to name this case's lab."""

    def __init__(self) -> None:
        self._live: dict[str, LivePath] = {}
        self._settings: RunSettings | None = None
        self._proxies: dict[str, list[ProxyProcess]] = {}
        self._path_notes: list[str] = []
        self._apps: list[NetnsProcess] = []
        self._idle_rss: dict[str, int] = {}

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """A 2-node lab, the apps in the server pod, and every variant's path, all live."""
        from lab import Lab, LabSpec

        name = settings.lab_prefix + self.lab_suffix
        with Lab.create(LabSpec(name=name, nodes=2, outside=False)) as lab:
            client = lab.add_pod(
                "client",
                namespace="bench",
                node="node1",
                labels={"app": "client"},
                service_account="client",
            )
            server = lab.add_pod(
                "server",
                namespace="bench",
                node="node2",
                labels={"app": "server"},
                service_account="server",
            )
            pair = PodPair(lab, client, server)
            for pod in (client, server):
                tune_pod(pod)
            with contextlib.ExitStack() as stack:
                self._apps = start_apps(server, settings.work_dir)
                for app in self._apps:
                    stack.callback(app.stop)
                for variant in self.variants:
                    factory = self.paths[variant.name]
                    live = stack.enter_context(factory(pair, settings))
                    self._live[variant.name] = live
                    self._idle_rss[variant.name] = sum(p.usage().rss_bytes for p in live.proxies)
                    self._proxies[variant.name] = list(live.proxies)
                self._settings = settings
                try:
                    yield
                finally:
                    self._collect_path_notes()
                    self._live.clear()
                    self._settings = None

    def _collect_path_notes(self) -> None:
        """Ask every live path for its whole-run facts before it is torn down."""
        for name, live in self._live.items():
            try:
                self._path_notes += [f"`{name}`: {line}" for line in live.summary()]
            except BenchError as err:
                self._path_notes.append(f"`{name}`: no summary ({err.message})")

    def idle_rss_bytes(self, live: LivePath) -> int:
        """The resident memory of ``live``'s proxies right after the path came up."""
        for name, candidate in self._live.items():
            if candidate is live:
                return self._idle_rss[name]
        raise BenchError(f"case {self.name}: unknown path")

    def notes(self) -> tuple[str, ...]:
        """Each proxy's CPU seconds and peak RSS over the whole run (read before it stopped)."""
        lines = []
        for variant, proxies in self._proxies.items():
            for proxy in proxies:
                usage = proxy.usage()
                lines.append(
                    f"`{variant}`: {proxy.name} (pid {proxy.pid}, in {proxy.netns}) used "
                    f"{usage.cpu_s:.2f} CPU s over the run, peak RSS "
                    f"{usage.peak_rss_bytes / 1e6:.1f} MB"
                )
        return (*lines, *self._path_notes)

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """Run ``probe``'s load tool through ``variant``'s path; add proxy costs."""
        del round_index
        if self._settings is None:
            raise BenchError(f"case {self.name}: measure() called outside environment()")
        live = self._live[variant.name]
        before = [p.usage() for p in live.proxies]
        apps_before = [a.usage() for a in self._apps]
        busy_before = machine_busy_seconds()
        started = time.monotonic()
        figures = RUNNERS[probe.name](live, self._settings, self)
        # CPU shares are over the tool's whole run (wall time), like the CPU they divide
        wall = time.monotonic() - started
        busy = machine_busy_seconds() - busy_before
        for process in (*live.proxies, *self._apps):
            process.check_alive()
        after = [p.usage() for p in live.proxies]
        server_cpu = _cpu_delta(apps_before, [a.usage() for a in self._apps])
        return {
            **figures.metrics,
            **cost_metrics(
                before,
                after,
                figures.load_cpu_s,
                wall,
                server_cpu_s=server_cpu,
                machine_busy_s=busy,
            ),
        }
