"""What the lab-based integration suites share: waiting, the agents' maps, node teardown.

The capture, ztunnel and control-plane suites each build a lab with an agent per node;
they wait for conditions the same way, read the same pinned workload map, and must
leave every node exactly as clean (programs detached, rule and route gone, pins gone).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.attach import LocalDelivery
from agent.config import DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY
from agent.daemon import cleanup
from agent.pinned import remove_pins

REPO = Path(__file__).resolve().parents[2]
AGENT_MARK = 0x539
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
"""The namespace label that enrolls a namespace's pods in the mesh."""

# Run in a pod as `python -c HTTP_GET HOST PORT`: one GET, the body or "ERROR <kind>".
HTTP_GET = """
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
try:
    c.request("GET", "/")
    print(c.getresponse().read().decode())
except OSError as err:
    print("ERROR", type(err).__name__, err)
"""


@contextlib.contextmanager
def two_node_lab(prefix: str, run_root: Path) -> Iterator[Any]:
    """A 2-node lab named ``<prefix><8 hex digits>`` in the run folder ``run_root``,
    removed on the way out whatever happened."""
    from lab import Lab, LabSpec

    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    try:
        with Lab.create(LabSpec(name=name, nodes=2, run_root=run_root)) as built:
            yield built
    finally:
        Lab.destroy_by_name(name, run_root)


def ambient(lab: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``ambient lab COMMAND --name <lab> ARGS`` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ambient", "lab", args[0], "--name", lab.name, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "AMBIENT_LAB_RUN_ROOT": str(lab.run_dir.parent),
        },
    )


def add_backend(lab: Any) -> Any:
    """Pod ``demo/backend`` on node2 (account ``backend``) answering ``Hello from backend``
    on 8080 (http-echo), behind the Service ``demo/backend`` 80 -> 8080; the pod."""
    from lab import ServicePort

    pod = lab.add_pod(
        "backend",
        namespace="demo",
        node="node2",
        labels={"app": "backend"},
        service_account="backend",
    )
    lab.add_service(
        "backend",
        namespace="demo",
        selector={"app": "backend"},
        ports=[ServicePort(port=80, target_port=8080)],
    )
    lab.start_workload(
        "backend", "http-echo", ["--text", "Hello from backend", "--listen", ":8080"]
    )
    return pod


def start_ztunnel(lab: Any, node: Any, ca_dir: Path) -> Any:
    """``ambient ztunnel run`` in ``node``'s namespace, its state from the lab's cluster
    folder, certificates from the local CA in ``ca_dir``, JSON access records."""
    argv = ["python", "-m", "ambient", "ztunnel", "run", "--node", node.name]
    argv += ["--cluster-folder", str(lab.config_dir), "--ca-dir", str(ca_dir)]
    argv += ["--access-log-format", "json"]
    return lab.spawn_in_node(node, argv, name=f"ztunnel-{node.name}-{time.monotonic_ns()}")


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.2) -> float:
    """Polls ``predicate`` until it is truthy; returns the seconds it took, or fails the test."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def log_with(log_path: Path, *needles: str, timeout: float = 5.0) -> str:
    """A process's log once it holds every one of ``needles`` (ztunnel writes its lines
    in batches, up to 50 ms late), or as it is after ``timeout``: the caller's assertion
    then shows what is missing."""
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text()
        if all(needle in text for needle in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def workload_ips(pin_dir: Path) -> set[str]:
    """The pod IPs the agent has put into a node's pinned workload map (none if unpinned)."""
    from agent.errors import AgentError
    from agent.nodemaps import NodeMaps

    try:
        with NodeMaps(pin_dir) as maps:
            return {row["pod_ip"] for row in maps.workload_rows()}
    except AgentError:
        return set()


def start_agent(lab: Any, node: Any) -> Any:
    """``ambient agent run`` in ``node``'s namespace, reading the lab's config folder."""
    argv = ["python", "-m", "ambient", "agent", "run", "--node", node.name, "--node-id", node.id]
    argv += ["--config-dir", str(lab.config_dir), "--uplink", node.uplink]
    return lab.spawn_in_node(node, argv, name=f"agent-{node.name}")


def wait_for_enrollment(node: Any, pin_dir: Path, pods: Any, timeout: float = 30) -> None:
    """Until ``node``'s agent has every one of its ``pods`` (a mapping) in its map.

    Capture must know every pod of the node before traffic starts, or a first
    connection could leave a not-yet-enrolled pod untouched.
    """
    want = {p.ip for p in pods.values() if p.node == node.name}
    wait_for(lambda: want <= workload_ips(pin_dir), timeout, f"{node.name}'s agent")


def teardown_nodes(lab: Any, pin_dirs: list[Path]) -> None:
    """Stops every lab process, then detaches and unpins each node's capture state."""
    from pyroute2 import IPRoute

    for proc in list(lab.processes):
        lab.stop(proc)
    for node, pin_dir in zip(lab.nodes, pin_dirs, strict=True):
        delivery = LocalDelivery(AGENT_MARK, 0xFFFFFFFF, DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY)
        with IPRoute(netns=node.netns) as ipr:
            cleanup(pin_dir, ipr, delivery)
        remove_pins(pin_dir)
