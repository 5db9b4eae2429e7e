"""HTTP through a waypoint: direct, two ztunnels, two ztunnels and a waypoint, sidecar Envoys.

One three-node lab, every path live at once, the variants alternating within each round:

- ``direct``: ``client`` (node1) dials ``server`` (node2) by pod IP; no proxy.
- ``envoy-mtls``: the same pods through the sidecar-style Envoy pair
  (:func:`bench.envoy.pair.envoy_pair`, L4 mTLS tunnel, 2 workers each).
- ``ztunnel``: ``zclient`` (node1, enrolled) dials Service ``zserver`` (no waypoint):
  node1's ztunnel -> HBONE -> node2's ztunnel -> pod ``zserver``.
- ``waypoint``: ``zclient`` dials Service ``wserver``, bound to the waypoint with
  ``istio.io/use-waypoint``: node1's ztunnel -> HBONE to the waypoint pod on node3
  (Envoy configured over ADS by the control plane: HBONE termination, the HTTP
  connection manager with the service's routes, access log to the telemetry exporter)
  -> HBONE originated by Envoy -> node2's ztunnel -> pod ``wserver``.

The mesh half is brought up as ``ambient demo`` does it, with its code: the control
plane on the fabric (:meth:`lab.demo.DemoWorld.start_controlplane`), node tokens and
ztunnels over xDS (:meth:`~lab.demo.DemoWorld.start_ztunnel`), the lab's registration
(:mod:`lab.mesh`) and ``ambient waypoint run`` in the waypoint pod as
:mod:`lab.manifests.proxies` starts it, but without a trace collector (Envoy's tracer
samples every request here; Istio's default is 1%). The agents are started as the
``ztunnel`` case starts them. Node3 runs neither: it only hosts the waypoint pod,
which is never captured.

CPU and peak RSS are read per proxy: the source proxy (node1's ztunnel or the client
Envoy), the waypoint (``ambient waypoint run``: Envoy and its Python telemetry exporter)
and the destination proxy. The ztunnels of node1 and node2 serve both ambient variants
(their peak RSS is the run's). Ratios to ``direct`` are the report's; ratios to
``envoy-mtls`` are in the notes (:func:`ratio_lines`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

from bench import stats
from bench.case import Measurement, Metric, Probe, RunSettings, Variant, register
from bench.cases.pod_to_pod import COSTS, P50, P99, RPS, PodToPod
from bench.cases.ztunnel import AMBIENT, _remove_capture, _wait, _wait_ready
from bench.datapath import (
    BULK_PORT,
    HTTP_PORT,
    Endpoint,
    LivePath,
    PathFactory,
    PodPair,
    check_http,
    direct,
    start_apps,
    tune_pod,
)
from bench.envoy.pair import envoy_pair
from bench.errors import BenchError
from bench.procs import (
    NetnsProcess,
    ProxyProcess,
    WatchedProcess,
    descendants,
    parse_cpu_seconds,
    parse_peak_rss_bytes,
    parse_ppid,
)

MESH_NAMESPACE = "wpb"
"""Kubernetes namespace of the enrolled pods and the waypoint."""
WAYPOINT = "waypoint"
SERVICE_PORT = 80
USE_WAYPOINT = "istio.io/use-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
READY_TIMEOUT_S = 90.0
"""Bound on the mesh (control plane, ztunnels, the waypoint's Envoy) coming up."""
SOURCE, WAYPOINT_ROLE, DESTINATION = "src", "waypoint", "dst"
WAYPOINT_ENVOY = "waypoint_envoy"
"""The Envoy process alone inside the waypoint's tree (without the Python exporter)."""
ROLES = (SOURCE, WAYPOINT_ROLE, WAYPOINT_ENVOY, DESTINATION)
REFERENCE = "envoy-mtls"
"""The variant the notes' second set of ratios divides by (the sidecar reference)."""


def _role_metrics() -> tuple[Metric, ...]:
    where = {
        SOURCE: "the source proxy (node1's ztunnel, or the client pod's Envoy)",
        WAYPOINT_ROLE: "the waypoint (ambient waypoint run: Envoy and its telemetry exporter)",
        WAYPOINT_ENVOY: "the waypoint's Envoy process alone",
        DESTINATION: "the destination proxy (node2's ztunnel, or the server pod's Envoy)",
    }
    metrics = []
    for role in ROLES:
        metrics.append(
            Metric(
                f"{role}_cpu_s",
                "s",
                higher_is_better=False,
                description=f"CPU seconds of {where[role]} during the measurement",
                cost=True,
            )
        )
        metrics.append(
            Metric(
                f"{role}_rss_mb",
                "MB",
                higher_is_better=False,
                description=f"peak RSS (VmHWM) of {where[role]} so far in the run",
                cost=True,
            )
        )
    return tuple(metrics)


ROLE_METRICS = _role_metrics()
PER_REQUEST = (
    Metric(
        "proxy_cpu_us_per_req",
        "us",
        higher_is_better=False,
        description="CPU of all the path's proxies per completed request (proxy_cpu_s / "
        "requests): what each path costs for the same work, whatever rate it reached",
        cost=True,
    ),
    Metric(
        "waypoint_cpu_us_per_req",
        "us",
        higher_is_better=False,
        description="CPU of the waypoint (Envoy and its telemetry exporter) per request",
        cost=True,
    ),
)
PROBES = (
    Probe(
        "rr-1",
        "wrk, 1 thread, 1 keep-alive connection, closed loop of small HTTP/1.1 GETs to an "
        "Envoy direct_response origin: round-trip latency of the path",
        (P50, P99, RPS, *COSTS, *PER_REQUEST, *ROLE_METRICS),
    ),
    Probe(
        "rr-16",
        "wrk, 1 thread, 16 keep-alive connections (closed loop): latency and rate under "
        "load, bounded by the 2 CPUs shared by wrk, origin and proxies",
        (P50, P99, RPS, *COSTS, *PER_REQUEST, *ROLE_METRICS),
    ),
)


def roles(proxies: Sequence[ProxyProcess]) -> dict[str, ProxyProcess]:
    """A path's proxies by role: the first is the source, the last the destination, one
    in between the waypoint. No proxies (direct): none."""
    if not proxies:
        return {}
    if len(proxies) == 1 or len(proxies) > 3:
        raise BenchError(f"a path has {len(proxies)} proxies; expected 0, 2 or 3")
    named = {SOURCE: proxies[0], DESTINATION: proxies[-1]}
    if len(proxies) == 3:
        named[WAYPOINT_ROLE] = proxies[1]
    return named


def per_request(figures: Mapping[str, float], duration_s: float) -> dict[str, float]:
    """CPU microseconds per request of the path's proxies and of the waypoint, from a
    measurement's ``rate`` (req/s over ``duration_s``) and CPU seconds; none without
    requests."""
    requests = figures.get("rate", 0.0) * duration_s
    if requests <= 0:
        return {}
    out = {}
    for cpu, name in (("proxy_cpu_s", "proxy"), (f"{WAYPOINT_ROLE}_cpu_s", WAYPOINT_ROLE)):
        if cpu in figures:
            out[f"{name}_cpu_us_per_req"] = figures[cpu] * 1e6 / requests
    return out


def role_costs(
    before: Mapping[str, tuple[float, int]], after: Mapping[str, tuple[float, int]]
) -> dict[str, float]:
    """Per role: CPU seconds between two readings (cpu_s, peak_rss_bytes) and peak RSS."""
    figures = {}
    for role, (cpu_after, peak_after) in after.items():
        figures[f"{role}_cpu_s"] = cpu_after - before[role][0]
        figures[f"{role}_rss_mb"] = peak_after / 1e6
    return figures


def ratio_lines(
    samples: Mapping[tuple[str, str, str], Sequence[float]],
    reference: str,
    metrics: Sequence[str] = ("rate", "p50", "p99", "proxy_cpu_us_per_req"),
) -> list[str]:
    """``variant / reference`` ratios of medians, per probe and metric, from samples
    keyed (variant, probe, metric); pairs without a usable reference figure are skipped."""
    lines = []
    probes = sorted({probe for _, probe, _ in samples})
    variants = sorted({v for v, _, _ in samples if v != reference})
    for probe in probes:
        parts = []
        for metric in metrics:
            base = samples.get((reference, probe, metric))
            if not base:
                continue
            cells = []
            for variant in variants:
                values = samples.get((variant, probe, metric))
                got = stats.ratio(stats.median(values), stats.median(base)) if values else None
                if got is not None:
                    cells.append(f"{variant} {got:.2f}")
            if cells:
                parts.append(f"{metric}: {', '.join(cells)}")
        if parts:
            lines.append(f"{probe} vs `{reference}` (median ratios): " + "; ".join(parts))
    return lines


def _process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                parents[int(entry.name)] = parse_ppid((entry / "stat").read_text())
    return descendants(root, parents)


def find_in_tree(root: int, comm: str) -> int | None:
    """The first process of ``root``'s tree whose command name is ``comm``."""
    for pid in _process_tree(root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                return pid
    return None


def tree_breakdown(root: int) -> list[tuple[str, float, int]]:
    """(command name, own CPU seconds, peak RSS bytes) of ``root`` and each descendant."""
    rows = []
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in _process_tree(root):
        with contextlib.suppress(OSError, ValueError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            if pid == root:
                name = "ambient waypoint run (Python: supervisor + telemetry exporter)"
            stat = Path(f"/proc/{pid}/stat").read_text()
            status = Path(f"/proc/{pid}/status").read_text()
            rows.append((name, parse_cpu_seconds(stat, ticks), parse_peak_rss_bytes(status)))
    return rows


def declare_mesh(lab: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The mesh namespace, its pods, Services and the waypoint's Gateway in the lab's
    folder; returns the client pod, the server pods and their Services by name."""
    from controlplane.workloadapi.waypoints import TrafficType
    from lab import ServicePort
    from waypoint.cli import waypoint_gateway

    node1, node2, node3 = lab.nodes[:3]
    lab.add_namespace(MESH_NAMESPACE, labels=AMBIENT)
    client = lab.add_pod(
        "zclient", namespace=MESH_NAMESPACE, node=node1.name, service_account="zclient"
    )
    servers = {}
    for name in ("zserver", "wserver"):
        servers[name] = lab.add_pod(
            name,
            namespace=MESH_NAMESPACE,
            node=node2.name,
            labels={"app": name},
            service_account=name,
        )
    lab.add_pod(
        WAYPOINT,
        namespace=MESH_NAMESPACE,
        node=node3.name,
        labels={GATEWAY_NAME_LABEL: WAYPOINT, "istio.io/dataplane-mode": "none"},
        service_account=WAYPOINT,
    )
    port = [ServicePort(port=SERVICE_PORT, target_port=HTTP_PORT, name="http")]
    services = {
        "zserver": lab.add_service(
            "zserver", namespace=MESH_NAMESPACE, selector={"app": "zserver"}, ports=port
        ),
        "wserver": lab.add_service(
            "wserver",
            namespace=MESH_NAMESPACE,
            selector={"app": "wserver"},
            ports=port,
            labels={USE_WAYPOINT: WAYPOINT},
        ),
    }
    lab.add_service(
        WAYPOINT,
        namespace=MESH_NAMESPACE,
        selector={GATEWAY_NAME_LABEL: WAYPOINT},
        ports=[ServicePort(port=15008, target_port=15008, name="mesh")],
        labels={GATEWAY_NAME_LABEL: WAYPOINT},
    )
    gateway = waypoint_gateway(MESH_NAMESPACE, WAYPOINT, TrafficType.SERVICE)
    (Path(lab.config_dir) / f"zz-bench-{WAYPOINT}.yaml").write_text(yaml.safe_dump(gateway))
    return client, servers, services


class AmbientMesh:
    """The control plane, agents, ztunnels and the waypoint of the case's lab, with the
    ``ztunnel`` and ``waypoint`` paths; :meth:`up` builds it, :meth:`path` hands out
    the live paths."""

    def __init__(self) -> None:
        self.apps: list[NetnsProcess] = []
        self.live: dict[str, LivePath] = {}
        self.waypoint_pid = 0
        self.extra_roles: dict[str, dict[str, ProxyProcess]] = {}
        """Per variant, proxies accounted by role but not part of the path's sum."""

    @contextlib.contextmanager
    def up(self, lab: Any, settings: RunSettings) -> Iterator[None]:
        """Pods, Services, the Gateway, control plane, agents, ztunnels, the waypoint."""
        from agent.pinned import BPFFS_ROOT
        from lab import mesh
        from lab.demo import TRUST_DOMAIN, XDS_SERVER_NAME, DemoConfig, DemoWorld
        from lab.manifests.proxies import proxy_pods

        node1, node2 = lab.nodes[:2]
        client, servers, services = declare_mesh(lab)
        self.apps = []
        for pod in (client, *servers.values()):
            tune_pod(pod)
        world = DemoWorld(lab, DemoConfig(name=lab.name), settings.work_dir / "controlplane")
        with contextlib.ExitStack() as stack:
            for pod in servers.values():
                apps = start_apps(pod, settings.work_dir)
                for app in apps:
                    stack.callback(app.stop)
                self.apps += apps
            world.start_controlplane()
            if world.controlplane is not None:
                stack.callback(lab.stop, world.controlplane)
            stack.callback(_remove_capture, lab)
            for node in (node1, node2):
                agent = lab.spawn_in_node(
                    node,
                    [
                        *("python", "-m", "ambient", "agent", "run", "--node", node.name),
                        *("--node-id", node.id, "--config-dir", str(lab.config_dir)),
                        *("--uplink", node.uplink, "--metrics-port", "0", "--detach-on-exit"),
                    ],
                    name=f"bench-agent-{node.name}",
                )
                stack.callback(lab.stop, agent)
            ztunnels = {}
            for node in (node1, node2):
                ztunnels[node.name] = world.start_ztunnel(node)
                stack.callback(lab.stop, ztunnels[node.name])
            endpoint = mesh.MeshEndpoint(
                xds_address=world.xds_address,
                xds_server_name=XDS_SERVER_NAME,
                root_cert=str(world.state_dir / "root-cert.pem"),
                trust_domain=TRUST_DOMAIN,
                tokens={n.name: str(world.node_token(n)) for n in lab.nodes},
            )
            mesh.register(lab.run_dir, endpoint)
            proxy = next(p for p in proxy_pods(lab) if p.pod.name == WAYPOINT)
            argv = mesh.proxy_argv(
                endpoint,
                kind=proxy.kind,
                namespace=proxy.pod.namespace,
                service_account=proxy.pod.service_account,
                gateway_name=proxy.gateway_name,
                ip=proxy.pod.ip,
                node=proxy.pod.node,
                cluster_folder=lab.config_dir,
                work_dir=lab.run_dir / "proxies" / f"{proxy.pod.namespace}.{proxy.pod.name}",
            )
            waypoint = lab.spawn(proxy.pod, argv, name=proxy.process_name)
            stack.callback(lab.stop, waypoint)
            self.waypoint_pid = waypoint.pid
            for node, pod in ((node1, client), (node2, servers["zserver"])):
                _wait_ready(node, pod, BPFFS_ROOT / node.id)
            _wait_ready(node2, servers["wserver"], BPFFS_ROOT / node2.id)
            _wait(
                lambda: "LIVE" in _admin_ready(lab, proxy.pod),
                READY_TIMEOUT_S,
                "the waypoint's Envoy to be LIVE (admin /ready)",
            )
            envoy = find_in_tree(waypoint.pid, "envoy")
            if envoy is None:
                raise BenchError("the waypoint runs no envoy process")
            self.extra_roles = {
                "waypoint": {
                    WAYPOINT_ENVOY: WatchedProcess("waypoint-envoy", proxy.pod.netns, envoy)
                }
            }
            zt1 = WatchedProcess(f"ztunnel-{node1.name}", node1.netns, ztunnels[node1.name].pid)
            zt2 = WatchedProcess(f"ztunnel-{node2.name}", node2.netns, ztunnels[node2.name].pid)
            wp = WatchedProcess(f"waypoint-{proxy.pod.node}", proxy.pod.netns, waypoint.pid)
            self.live = {
                "ztunnel": LivePath(
                    client_netns=client.netns,
                    http=Endpoint(services["zserver"].vip, SERVICE_PORT),
                    bulk=Endpoint(servers["zserver"].ip, BULK_PORT),
                    proxies=(zt1, zt2),
                ),
                "waypoint": LivePath(
                    client_netns=client.netns,
                    http=Endpoint(services["wserver"].vip, SERVICE_PORT),
                    bulk=Endpoint(servers["wserver"].ip, BULK_PORT),
                    proxies=(zt1, wp, zt2),
                    summary=lambda: _waypoint_summary(lab, proxy.pod, self.waypoint_pid),
                ),
            }
            for live in self.live.values():
                check_http(live.client_netns, live.http, timeout_s=READY_TIMEOUT_S)
            try:
                yield
            finally:
                self.live = {}

    def path(self, name: str) -> PathFactory:
        """The factory of the live ``ztunnel`` or ``waypoint`` path (after :meth:`up`)."""

        @contextlib.contextmanager
        def build(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
            del pair, settings
            if name not in self.live:
                raise BenchError(f"the ambient mesh is not up; no {name} path")
            yield self.live[name]

        return build


def _admin(lab: Any, pod: Any, path: str) -> str:
    """Envoy's admin answer at ``path`` in the waypoint pod ('' if it did not answer)."""
    argv = ["curl", "-s", "-m", "3", f"http://127.0.0.1:15000{path}"]
    done = lab.exec(pod, argv, timeout=20)
    return str(done.stdout) if done.returncode == 0 else ""


def _admin_ready(lab: Any, pod: Any) -> str:
    return _admin(lab, pod, "/ready")


def stat_sum(stats_text: str, suffix: str) -> int:
    """Sum of the counters in Envoy's admin ``/stats`` text whose name ends in ``suffix``."""
    total = 0
    for line in stats_text.splitlines():
        name, _, value = line.partition(": ")
        if name.endswith(suffix) and value.strip().isdigit():
            total += int(value)
    return total


def _waypoint_summary(lab: Any, pod: Any, pid: int) -> list[str]:
    rows = tree_breakdown(pid)
    if not rows:
        raise BenchError("the waypoint's process tree is gone")
    stats_text = _admin(lab, pod, "/stats?filter=downstream_rq_completed")
    return [
        "waypoint tree over the run: "
        + ", ".join(f"{name} {cpu:.2f} CPU s / {rss / 1e6:.0f} MB peak" for name, cpu, rss in rows),
        f"the waypoint's Envoy completed {stat_sum(stats_text, '.downstream_rq_completed')} "
        "HTTP streams (admin /stats, every connection manager: requests and HBONE CONNECTs)",
    ]


MESH = AmbientMesh()


@register
class WaypointCase(PodToPod):
    """Direct, sidecar Envoy pair, ztunnel pair, ztunnel pair + waypoint: HTTP rr."""

    name = "waypoint"
    description = (
        "HTTP request/response at 1 and 16 connections (rate, p50, p99) between pods on "
        "different lab nodes: direct, the sidecar-style Envoy 1.40 mTLS pair, two ztunnels "
        "(HBONE), and two ztunnels with the Service bound to a waypoint "
        "(istio.io/use-waypoint; Envoy configured over ADS by the control plane, on a third "
        "node); CPU and peak RSS per proxy; ratios to direct and to the Envoy pair."
    )
    data_path = (
        "direct/envoy-mtls as in pod-to-pod; ztunnel: zclient (node1) -> Service VIP -> "
        "node1 ztunnel -> HBONE -> node2 ztunnel -> zserver; waypoint: zclient -> Service "
        "VIP -> node1 ztunnel -> HBONE -> waypoint Envoy on node3 (HCM, routes) -> HBONE -> "
        "node2 ztunnel -> wserver"
    )
    variants: ClassVar[tuple[Variant, ...]] = (
        Variant("direct", "client dials the server pod's IP; no proxy", baseline=True),
        Variant(
            "envoy-mtls",
            "client dials its pod's Envoy on 127.0.0.1; mTLS to the server pod's Envoy "
            "(the sidecar reference, L4 tunnel, 2 workers each)",
        ),
        Variant(
            "ztunnel",
            "enrolled client dials a Service's VIP; node1's ztunnel, HBONE, node2's ztunnel",
        ),
        Variant(
            "waypoint",
            "enrolled client dials a waypoint-bound Service's VIP; node1's ztunnel, HBONE to "
            "the waypoint's Envoy (node3), HBONE to node2's ztunnel",
        ),
    )
    probes: ClassVar[tuple[Probe, ...]] = PROBES
    paths: ClassVar[Mapping[str, PathFactory]] = {
        "direct": direct,
        "envoy-mtls": envoy_pair(),
        "ztunnel": MESH.path("ztunnel"),
        "waypoint": MESH.path("waypoint"),
    }
    lab_suffix = "wp"

    def __init__(self) -> None:
        super().__init__()
        self._samples: dict[tuple[str, str, str], list[float]] = {}

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """A 3-node lab, the plain pod pair with its apps, the ambient mesh, every path."""
        from lab import Lab, LabSpec

        name = settings.lab_prefix + self.lab_suffix
        with Lab.create(LabSpec(name=name, nodes=3, outside=False)) as lab:
            client = lab.add_pod(
                "client", namespace="bench", node="node1", service_account="client"
            )
            server = lab.add_pod(
                "server", namespace="bench", node="node2", service_account="server"
            )
            pair = PodPair(lab, client, server)
            for pod in (client, server):
                tune_pod(pod)
            with contextlib.ExitStack() as stack:
                self._apps = start_apps(server, settings.work_dir)
                for app in self._apps:
                    stack.callback(app.stop)
                stack.enter_context(MESH.up(lab, settings))
                self._apps = [*self._apps, *MESH.apps]
                for variant in self.variants:
                    live = stack.enter_context(self.paths[variant.name](pair, settings))
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

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """The pod-to-pod measurement, plus CPU and peak RSS per proxy role."""
        live = self._live.get(variant.name)
        if live is None:
            raise BenchError(f"case {self.name}: measure() called outside environment()")
        by_role = {**roles(live.proxies), **MESH.extra_roles.get(variant.name, {})}
        before = {r: (p.usage().cpu_s, p.usage().peak_rss_bytes) for r, p in by_role.items()}
        figures = dict(super().measure(variant, probe, round_index))
        after = {r: (p.usage().cpu_s, p.usage().peak_rss_bytes) for r, p in by_role.items()}
        figures |= role_costs(before, after)
        if self._settings is not None:
            figures |= per_request(figures, self._settings.duration_s)
        for metric, value in figures.items():
            self._samples.setdefault((variant.name, probe.name, metric), []).append(value)
        return figures

    def notes(self) -> tuple[str, ...]:
        """The pod-to-pod notes and the ratios to the sidecar reference."""
        return (*super().notes(), *ratio_lines(self._samples, REFERENCE))
