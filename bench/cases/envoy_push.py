"""Envoy push: a VirtualService edit -> the waypoint Envoy's ACK, at 10 and 1,000 services.

Each variant is a control plane (:class:`controlplane.server.ControlPlane`, in a
background event loop of the bench process) serving a folder of generated YAML: a
namespace bound to the waypoint ``wp`` (its pod on node1), N services each with a pod,
and, for ``s0``, a DestinationRule with subsets v1/v2 and a VirtualService splitting
between them. A real Envoy 1.40 (``.venv/bin/envoy``) is bootstrapped to it with the
waypoint's own bootstrap (``waypoint.bootstrap``: state-of-the-world ADS over TLS,
node1's token, the waypoint's node metadata) and holds the waypoint's
full configuration (per service: an internal filter chain, a route configuration, EDS
clusters). No root, no lab: the one listener bound to an address (HBONE on 15008) is
moved to a free port on 127.0.0.1, nothing else changes.

Probe ``push``: :data:`CHANGES` edits of ``s0``'s VirtualService weights (file written
and renamed into place, as the lab writes). The figure is the time from just before
the rename to the control plane receiving Envoy's ACK of the route configuration that
carries the new weights (the ACK's arrival time as the stream core records it). Also:
the control plane's mean push-to-ACK time (its histogram: response queued -> ACK) and
its mean rebuild time of the proxy's resources, over the same changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import stats
from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, register
from bench.errors import MeasurementError, ToolError

CHANGES = {"10-services": 20, "1000-services": 6}
"""VirtualService edits per measurement (at most 6 in quick mode): 1,000 services take
seconds per edit (the translation), so fewer samples there."""
CHANGE_TIMEOUT_S = 60.0
"""An edit Envoy has not ACKed by then fails the measurement."""
START_TIMEOUT_S = 120.0
"""Bound on a variant coming up (Envoy holding every resource of 1,000 services)."""
SERVICES = {"10-services": 10, "1000-services": 1000}
NAMESPACE = "benchwp"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ROUTE_NAME = f"inbound-vip|80|http|s0.{NAMESPACE}.svc.cluster.local"

T = TypeVar("T")


def config_yaml(services: int) -> str:
    """The namespace, the waypoint (Gateway, Service, pod), ``services`` services with one
    pod each, and v1/v2 pods plus a DestinationRule for ``s0``."""
    docs = [
        "apiVersion: v1\nkind: Namespace\n"
        f"metadata: {{name: {NAMESPACE}, labels: {{istio.io/dataplane-mode: ambient, "
        "istio.io/use-waypoint: wp}}",
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: wp, namespace: {NAMESPACE}, uid: uid-wp, labels: "
        "{gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}\n"
        "spec: {nodeName: node1, serviceAccountName: wp, containers: [{name: envoy}]}\n"
        'status: {phase: Running, podIP: 10.250.0.9, conditions: [{type: Ready, status: "True"}]}',
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
        f"metadata: {{name: wp, namespace: {NAMESPACE}, "
        "labels: {istio.io/waypoint-for: service}}\n"
        "spec: {gatewayClassName: istio-waypoint, "
        "listeners: [{name: mesh, port: 15008, protocol: HBONE}]}",
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: wp, namespace: {NAMESPACE}, "
        "labels: {gateway.networking.k8s.io/gateway-name: wp}}\n"
        "spec: {clusterIP: 10.97.250.9, selector: {gateway.networking.k8s.io/gateway-name: wp}, "
        "ports: [{name: mesh, port: 15008}]}",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: s0, namespace: {NAMESPACE}}}\n"
        "spec: {host: s0, subsets: [{name: v1, labels: {version: v1}}, "
        "{name: v2, labels: {version: v2}}]}",
    ]
    for i in range(services):
        docs.append(
            "apiVersion: v1\nkind: Service\n"
            f"metadata: {{name: s{i}, namespace: {NAMESPACE}}}\n"
            f"spec: {{clusterIP: 10.97.{i // 250}.{i % 250 + 1}, selector: {{app: app{i}}}, "
            "ports: [{name: http, port: 80, targetPort: 8080}]}"
        )
        versions = ("v1", "v2") if i == 0 else ("v1",)
        for k, version in enumerate(versions):
            ip = f"10.251.{(2 * i + k) // 250}.{(2 * i + k) % 250 + 1}"
            docs.append(
                "apiVersion: v1\nkind: Pod\n"
                f"metadata: {{name: p{i}-{version}, namespace: {NAMESPACE}, "
                f"uid: uid-p{i}-{version}, labels: {{app: app{i}, version: {version}}}}}\n"
                f"spec: {{nodeName: node2, serviceAccountName: sa{i % 20}, "
                "containers: [{name: app}]}\n"
                f"status: {{phase: Running, podIP: {ip}, "
                'conditions: [{type: Ready, status: "True"}]}'
            )
    return "\n---\n".join(docs) + "\n"


def virtual_service_yaml(v1: int) -> str:
    """``s0``'s VirtualService: ``v1`` percent to subset v1, the rest to v2."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: s0, namespace: {NAMESPACE}}}\n"
        "spec:\n  hosts: [s0]\n  http:\n  - route:\n"
        f"    - {{destination: {{host: s0, subset: v1}}, weight: {v1}}}\n"
        f"    - {{destination: {{host: s0, subset: v2}}, weight: {100 - v1}}}\n"
    )


def write_atomically(path: Path, text: str) -> None:
    """Write a hidden temporary file next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def free_port() -> int:
    """A port on 127.0.0.1 below the ephemeral range that nobody listens on now."""
    start = 21000 + random.randrange(8000)
    for port in range(start, start + 500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ToolError("no free port on 127.0.0.1 for the waypoint's HBONE listener")


def on_loopback(port: int) -> Callable[[Any, Any, Any], Any]:
    """``proxy_resources``, with every listener bound to an address moved to 127.0.0.1:port."""
    from controlplane.envoy.proxy import EnvoyResources, proxy_resources

    def resources(state: Any, proxy: Any, mesh: Any) -> Any:
        real = proxy_resources(state, proxy, mesh)
        listeners = {}
        for name, original in real.listeners.items():
            listener = original
            if original.address.HasField("socket_address"):
                listener = type(original).FromString(original.SerializeToString())
                listener.address.socket_address.address = "127.0.0.1"
                listener.address.socket_address.port_value = port
            listeners[name] = listener
        return EnvoyResources(
            listeners=listeners,
            routes=real.routes,
            clusters=real.clusters,
            endpoints=real.endpoints,
            issues=real.issues,
        )

    return resources


def waypoint_bootstrap(xds_port: int, root_cert: Path, token: str, admin_port: int) -> Any:
    """The waypoint's own bootstrap (``waypoint.bootstrap``: SotW ADS over TLS, token)."""
    from waypoint.bootstrap import WaypointConfig, render_bootstrap

    config = WaypointConfig(
        namespace=NAMESPACE,
        service_account="wp",
        gateway_name="wp",
        kind="waypoint",
        instance_ips=("10.250.0.9",),
        xds_address=f"127.0.0.1:{xds_port}",
        root_cert=root_cert,
        admin_port=admin_port,
    )
    return render_bootstrap(config, token)


class EventLoopThread:
    """An asyncio loop on a daemon thread (the control plane runs there)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Waypoint:
    """One variant: its control plane, its Envoy, its config folder."""

    services: int
    config: Path
    plane: Any
    envoy: subprocess.Popen[bytes]
    weight: int = 80


@register
class EnvoyPushCase(Case):
    """VirtualService edit -> the waypoint Envoy's ACK, at 10 and 1,000 services."""

    name = "envoy-push"
    description = (
        "Time from a VirtualService weight edit (file renamed into the config folder) to "
        "the control plane receiving the waypoint Envoy's ACK of the new route "
        "configuration, with 10 and 1,000 services bound to the waypoint."
    )
    data_path = (
        "folder -> FolderSource poll -> debounce -> proxy_resources -> per-proxy snapshot "
        "-> SotW ADS over gRPC/TLS (127.0.0.1) -> Envoy 1.40 applies RDS -> ACK"
    )
    variants = (
        Variant("10-services", "10 services bound to the waypoint", baseline=True),
        Variant("1000-services", "1,000 services bound to the waypoint"),
    )
    probes = (
        Probe(
            "push",
            f"{CHANGES['10-services']} (10 services) or {CHANGES['1000-services']} (1,000) "
            "weight edits of one VirtualService, each awaited (ACK) before the next",
            (
                Metric("p50_ms", "ms", False, "edit -> Envoy's ACK of the new routes, median"),
                Metric("p99_ms", "ms", False, "edit -> Envoy's ACK of the new routes, p99"),
                Metric(
                    "push_to_ack_ms",
                    "ms",
                    False,
                    "response queued -> ACK, mean over every Envoy push meanwhile",
                ),
                Metric(
                    "rebuild_ms",
                    "ms",
                    False,
                    "translating the proxy's resources and its snapshot, mean per change",
                    cost=True,
                ),
            ),
        ),
    )

    def __init__(self) -> None:
        self._loop: EventLoopThread | None = None
        self._waypoints: dict[str, Waypoint] = {}
        self._quick = False
        self._rng = random.Random(7)

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """Start every variant's control plane and Envoy; stop them all on exit."""
        self._quick = settings.quick
        self._loop = EventLoopThread()
        try:
            for variant in self.variants:
                self._waypoints[variant.name] = self._start(
                    SERVICES[variant.name], settings.work_dir / f"envoy-push-{variant.name}"
                )
            yield
        finally:
            for waypoint in self._waypoints.values():
                _stop(waypoint.envoy)
                with contextlib.suppress(Exception):
                    self._loop.run(waypoint.plane.stop(0.2), 10)
            self._loop.close()

    def _start(self, services: int, work: Path) -> Waypoint:
        from bench.envoy.proxy import envoy_binary
        from controlplane.ca.credentials import NodeTokens
        from controlplane.server import ControlPlane, ControlPlaneConfig

        assert self._loop is not None
        config, state = work / "config", work / "state"
        config.mkdir(parents=True, exist_ok=True)
        (config / "cluster.yaml").write_text(config_yaml(services))
        (config / "vs.yaml").write_text(virtual_service_yaml(80))
        token = NodeTokens.load_or_create(state).issue("node1", dt.datetime.now(dt.UTC))
        plane = ControlPlane(
            ControlPlaneConfig(
                state_dir=state,
                config_dir=config,
                listen="127.0.0.1:0",
                admin_listen="127.0.0.1:0",
            ),
            envoy_resources=on_loopback(free_port()),
        )
        self._loop.run(plane.start(), START_TIMEOUT_S)
        bootstrap = work / "envoy.json"
        bootstrap.write_text(
            json.dumps(
                waypoint_bootstrap(plane.xds_port, state / "root-cert.pem", token, free_port())
            )
        )
        log = (work / "envoy.log").open("wb")
        envoy = subprocess.Popen(
            [
                str(envoy_binary()),
                *("-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart"),
                *("--log-level", "warning"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        waypoint = Waypoint(services, config, plane, envoy)
        try:
            self._wait_acked(waypoint, lambda routes: routes.get("acks", 0) > 0, START_TIMEOUT_S)
        except BaseException:
            _stop(envoy)
            self._loop.run(plane.stop(0.2), 10)
            raise
        return waypoint

    def _route_state(self, waypoint: Waypoint) -> dict[str, Any]:
        """The Envoy stream's RDS state (acks, ackedVersion, ackedAt), read in the loop."""
        assert self._loop is not None

        async def read() -> dict[str, Any]:
            for proxy in waypoint.plane.hub.envoy_status():
                routes = proxy.get("types", {}).get(ROUTE_TYPE)
                if routes is not None:
                    return dict(routes)
            return {}

        return self._loop.run(read(), 10)

    def _wait_acked(
        self, waypoint: Waypoint, done: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if waypoint.envoy.poll() is not None:
                raise ToolError(f"Envoy exited with {waypoint.envoy.returncode}")
            routes = self._route_state(waypoint)
            if routes and done(routes):
                return routes
            time.sleep(0.005)
        raise MeasurementError(
            f"{waypoint.services} services: Envoy did not ACK within {timeout} s",
            hint="see envoy.log in the case's work folder, and the NACKs in the control "
            "plane's status",
        )

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """``push``: edits of the VirtualService, each to its ACK."""
        waypoint = self._waypoints[variant.name]
        plane = waypoint.plane
        latencies: list[float] = []
        histogram = plane.hub.envoy_stats.push_to_ack
        count0, sum0 = histogram.count, histogram.total
        rebuilds0 = plane.envoy.stats.rebuilds
        seconds0 = plane.envoy.stats.rebuild_seconds
        changes = CHANGES[variant.name]
        for _ in range(min(changes, 6) if self._quick else changes):
            before = self._route_state(waypoint)
            waypoint.weight = 10 + (waypoint.weight + 7) % 80
            text = virtual_service_yaml(waypoint.weight)
            started = time.time()
            write_atomically(waypoint.config / "vs.yaml", text)

            def changed(routes: dict[str, Any], before: dict[str, Any] = before) -> bool:
                return routes.get("ackedVersion") != before.get("ackedVersion") and int(
                    routes.get("acks", 0)
                ) > int(before.get("acks", 0))

            acked = self._wait_acked(waypoint, changed, CHANGE_TIMEOUT_S)
            latencies.append(1000.0 * (float(acked["ackedAt"]) - started))
            time.sleep(0.1 + self._rng.uniform(0, 0.1))  # a random phase of the folder poll
        pushes = histogram.count - count0
        rebuilds = plane.envoy.stats.rebuilds - rebuilds0
        return {
            "p50_ms": stats.percentile(latencies, 50),
            "p99_ms": stats.percentile(latencies, 99),
            "push_to_ack_ms": 1000.0 * (histogram.total - sum0) / pushes if pushes else 0.0,
            "rebuild_ms": 1000.0 * (plane.envoy.stats.rebuild_seconds - seconds0) / rebuilds
            if rebuilds
            else 0.0,
        }


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
