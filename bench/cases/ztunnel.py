"""Pod to pod through a ztunnel pair, next to direct and the sidecar-style Envoy pair.

The ``pod-to-pod`` case's two variants (``direct``, ``envoy-mtls``) plus ``ztunnel``:
a client and a server pod of their own, in a namespace enrolled in the mesh
(``istio.io/dataplane-mode=ambient``), so the other variants' pods stay outside it.
Each lab node runs the agent (the eBPF capture programs) and ``ambient ztunnel run``
in local mode (state from the lab's cluster folder, certificates from a local CA
shared by both nodes), as ``tests/integration/test_ztunnel_lab.py`` starts them. The
client dials the server pod's IP; node1's capture steers the connection into its
ztunnel, which carries it over HBONE (HTTP/2 CONNECT over mTLS 1.3, pooled) to
node2's ztunnel, which connects to the pod from the client's own address.

The ztunnels' CPU and peak RSS are accounted over each process tree (the supervisor
and its forked workers); the server apps of the ztunnel pods count as server CPU.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from bench.case import RunSettings, Variant, register
from bench.cases.pod_to_pod import PodToPod
from bench.datapath import (
    BULK_PORT,
    HTTP_PORT,
    Endpoint,
    LivePath,
    PathFactory,
    PodPair,
    check_http,
    start_apps,
    tune_pod,
)
from bench.errors import BenchError, ToolError
from bench.procs import NetnsProcess, WatchedProcess, run_in_netns

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
MESH_NAMESPACE = "zt"
"""Kubernetes namespace of the enrolled pods (the other variants' pods are not in it)."""
READY_TIMEOUT_S = 60.0
READY_URL = "http://127.0.0.1:15021/healthz/ready"
METRICS_URL = "http://127.0.0.1:15020/metrics"
FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n"
    "    sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n"
    "except Exception as e:\n"
    "    sys.stdout.write('000 ' + str(e))\n"
)


def _fetch(netns: str, url: str) -> str:
    run = run_in_netns(netns, [sys.executable, "-c", FETCH, url], timeout_s=10)
    return run.stdout


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise ToolError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _enrolled(pin_dir: Path) -> set[str]:
    """Pod IPs in a node agent's pinned workload map (empty until the agent has pinned)."""
    from agent.errors import AgentError
    from agent.nodemaps import NodeMaps

    try:
        with NodeMaps(pin_dir) as maps:
            return {str(row["pod_ip"]) for row in maps.workload_rows()}
    except AgentError:
        return set()


def _metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus text exposition's samples of ``name`` with ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _remove_capture(lab: Any) -> None:
    """What the agents attached and pinned, removed by name (even if one was killed)."""
    from pyroute2 import IPRoute

    from agent.attach import LocalDelivery
    from agent.config import DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY
    from agent.daemon import cleanup
    from agent.pinned import BPFFS_ROOT, remove_pins

    for node in lab.nodes:
        pin_dir = BPFFS_ROOT / node.id
        delivery = LocalDelivery(0x539, 0xFFFFFFFF, DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY)
        with IPRoute(netns=node.netns) as ipr:
            cleanup(pin_dir, ipr, delivery)
        remove_pins(pin_dir)


def _wait_ready(node: Any, pod: Any, pin_dir: Path) -> None:
    """Until ``node``'s ztunnel is ready and its agent has enrolled ``pod``."""

    def ready() -> bool:
        return _fetch(node.netns, READY_URL).startswith("200")

    def enrolled() -> bool:
        return str(pod.ip) in _enrolled(pin_dir)

    _wait(ready, READY_TIMEOUT_S, f"the ztunnel on {node.name} to be ready")
    _wait(enrolled, READY_TIMEOUT_S, f"{node.name}'s agent to enroll {pod.name}")


class ZtunnelPath:
    """The ``ztunnel`` variant's path factory: enrolled pods, agents and ztunnels.

    ``apps`` holds the server apps it started (for the case's server-CPU figure).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        """Worker processes per ztunnel (its default: the CPUs, as Envoy has 2 workers)."""
        self.apps: list[NetnsProcess] = []

    @contextlib.contextmanager
    def __call__(self, pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
        """Build the mesh half of the lab, yield the live path, tear it all down."""
        from ztunnel.app import load_or_create_ca

        lab = pair.lab
        work = settings.work_dir / "ztunnel"
        ca_dir = work / "ca"
        ca_dir.mkdir(parents=True, exist_ok=True)
        load_or_create_ca(ca_dir, "cluster.local", dt.datetime.now(dt.UTC))
        lab.add_namespace(MESH_NAMESPACE, labels=AMBIENT)
        client = lab.add_pod(
            "zclient", namespace=MESH_NAMESPACE, node="node1", service_account="zclient"
        )
        server = lab.add_pod(
            "zserver", namespace=MESH_NAMESPACE, node="node2", service_account="zserver"
        )
        for pod in (client, server):
            tune_pod(pod)
        self.apps = []
        with contextlib.ExitStack() as stack:
            self.apps = start_apps(server, settings.work_dir)
            for app in self.apps:
                stack.callback(app.stop)
            stack.callback(_remove_capture, lab)
            ztunnels = []
            for node in lab.nodes:
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
            for node in lab.nodes:
                zt = lab.spawn_in_node(
                    node,
                    [
                        *("python", "-m", "ambient", "ztunnel", "run", "--node", node.name),
                        *("--cluster-folder", str(lab.config_dir), "--ca-dir", str(ca_dir)),
                        *("--workers", str(self.workers)),
                    ],
                    name=f"bench-ztunnel-{node.name}",
                )
                stack.callback(lab.stop, zt)
                ztunnels.append((node, zt))
            from agent.pinned import BPFFS_ROOT

            for node, pod in ((lab.nodes[0], client), (lab.nodes[1], server)):
                _wait_ready(node, pod, BPFFS_ROOT / node.id)
            source_netns = lab.nodes[0].netns

            def summary() -> list[str]:
                text = _fetch(source_netns, METRICS_URL)
                if not text.startswith("200"):
                    raise BenchError(f"node1's ztunnel metrics did not answer: {text[:80]}")
                body = text.split("\n", 1)[1]
                opened = _metric_sum(body, "istio_tcp_connections_opened_total", reporter="source")
                sent = _metric_sum(body, "istio_tcp_received_bytes_total", reporter="source")
                return [
                    f"node1's ztunnel (source reporter) counted {opened:.0f} connections "
                    f"and {sent / 1e9:.2f} GB sent by the client through HBONE; "
                    f"{self.workers} workers per ztunnel"
                ]

            live = LivePath(
                client_netns=client.netns,
                http=Endpoint(server.ip, HTTP_PORT),
                bulk=Endpoint(server.ip, BULK_PORT),
                proxies=tuple(
                    WatchedProcess(f"ztunnel-{node.name}", node.netns, zt.pid)
                    for node, zt in ztunnels
                ),
                summary=summary,
            )
            check_http(live.client_netns, live.http, timeout_s=20)
            yield live


ZTUNNEL_PATH = ZtunnelPath()


@register
class ZtunnelPair(PodToPod):
    """``pod-to-pod``'s direct and Envoy-pair variants, plus a ztunnel pair (ambient)."""

    name = "ztunnel"
    description = (
        "The pod-to-pod probes (bulk 1 and 4 streams, request/response at 1 and 16 "
        "connections, new connections per second, memory with 1,000 open connections) "
        "through a pair of ztunnels (eBPF capture on both nodes, HBONE: pooled HTTP/2 "
        "CONNECT over mTLS 1.3 between the node proxies), next to direct and the "
        "sidecar-style Envoy 1.40 mTLS pair."
    )
    data_path = (
        "direct/envoy-mtls as in pod-to-pod; ztunnel: client pod -> veth -> node1 (TC "
        "capture -> ztunnel 15001) -> HBONE over the fabric -> node2 ztunnel 15008 -> "
        "veth -> server pod, connecting from the client pod's IP"
    )
    variants: ClassVar[tuple[Variant, ...]] = (
        *PodToPod.variants,
        Variant(
            "ztunnel",
            "client pod dials the server pod's IP; captured by eBPF into node1's ztunnel, "
            "HBONE (mTLS 1.3, pooled HTTP/2) to node2's ztunnel, which dials the pod",
        ),
    )
    paths: ClassVar[Mapping[str, PathFactory]] = {**PodToPod.paths, "ztunnel": ZTUNNEL_PATH}
    lab_suffix = "zt"

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """``pod-to-pod``'s environment; the ztunnel pods' apps count as server CPU."""
        with super().environment(settings):
            self._apps = [*self._apps, *ZTUNNEL_PATH.apps]
            yield
