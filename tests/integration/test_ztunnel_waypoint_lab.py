"""Waypoints in a two-node lab: the source ztunnel sends to the waypoint, bypasses are refused.

    node1: client (demo, enrolled), outsider (plain, not enrolled)
    node2: backend (demo; http-echo :8080)
    Service demo/backend 80 -> 8080
    ambient waypoint apply -n demo --enroll-namespace: Gateway demo/waypoint, the lab's
    waypoint pod and Service demo/waypoint (its address), namespace label use-waypoint

Each node runs the agent and ``ambient ztunnel run --cluster-folder`` (the control
plane's translation of the lab's folder). No Envoy runs in the waypoint pod: the test
asserts what the source ztunnel did (its access log names the waypoint's identity and
workload as the tunnel's end), and that the destination ztunnel refuses a tunnel and a
plaintext connection that bypass the waypoint, with the bypass reason, counted as DENY.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from agent.pinned import BPFFS_ROOT
from ambient.cli import root
from tests.integration.meshlab import (
    AMBIENT,
    HTTP_GET,
    add_backend,
    start_agent,
    start_ztunnel,
    teardown_nodes,
    wait_for,
    wait_for_enrollment,
)
from ztunnel.app import load_or_create_ca

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(120)]

WAYPOINT_ID = "spiffe://cluster.local/ns/demo/sa/waypoint"
CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"


class Mesh:
    def __init__(self, lab: Any, pods: dict[str, Any], ztunnels: dict[str, Any]) -> None:
        self.lab, self.pods, self.ztunnels = lab, pods, ztunnels

    def get(self, pod: str, host: str, port: int) -> str:
        done = self.lab.exec(
            self.pods[pod], ["python", "-c", HTTP_GET, host, str(port)], timeout=20
        )
        return str(done.stdout)

    def records(self, node: str, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The JSON access records of a node's ztunnel that are ``wanted``, waiting up to 5 s
        for one (ztunnel writes its log lines in batches, up to 50 ms late)."""
        deadline = time.monotonic() + 5
        while True:
            out = []
            for line in self.ztunnels[node].log_path.read_text().splitlines():
                start = line.find('{"')
                if start >= 0 and '"direction"' in line:
                    record = json.loads(line[start:])
                    if wanted(record):
                        out.append(record)
            if out or time.monotonic() > deadline:
                return out
            time.sleep(0.1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from lab import Lab, LabSpec

    ca_dir = tmp_path_factory.mktemp("waypoint-ca")
    load_or_create_ca(ca_dir, "cluster.local", dt.datetime.now(dt.UTC))
    with Lab.create(LabSpec(name=f"wp{os.getpid() % 100000}", nodes=2, outside=False)) as lab:
        pin_dirs = [BPFFS_ROOT / n.id for n in lab.nodes]
        try:
            lab.add_namespace("demo", labels=AMBIENT)
            lab.add_namespace("plain")
            pods = {
                "client": lab.add_pod(
                    "client", namespace="demo", node="node1", service_account="client"
                ),
                "outsider": lab.add_pod("outsider", namespace="plain", node="node1"),
                "backend": add_backend(lab),
            }
            # As a user would: the lab makes the waypoint's pod and Service (its proxy
            # stays idle: no control plane is registered with this lab).
            applied = CliRunner().invoke(
                root,
                ["waypoint", "apply", "-n", "demo", "--enroll-namespace", "--lab", lab.name],
                catch_exceptions=False,
            )
            assert applied.exit_code == 0, applied.output
            pods["waypoint"] = lab.pod("demo/waypoint")
            ztunnels = {}
            for node in lab.nodes:
                start_agent(lab, node)
                ztunnels[node.name] = start_ztunnel(lab, node, ca_dir)
            result = Mesh(lab, pods, ztunnels)
            enrolled = {k: v for k, v in pods.items() if k in ("client", "backend")}
            for node, pin_dir in zip(lab.nodes, pin_dirs, strict=True):
                wait_for(lambda n=node.name: _ready(lab, n), 60, f"ztunnel on {node.name}")
                wait_for_enrollment(node, pin_dir, enrolled)
            yield result
        finally:
            teardown_nodes(lab, pin_dirs)


READY = (
    "import urllib.request as u\n"
    "print(u.urlopen('http://127.0.0.1:15021/healthz/ready', timeout=2).status)"
)


def _ready(lab: Any, node: str) -> bool:
    done = lab.exec(lab.node(node), ["python", "-c", READY], timeout=10, check=False)
    return str(done.stdout).strip() == "200"


def test_the_source_ztunnel_sends_service_traffic_to_the_waypoint(mesh: Mesh) -> None:
    vip = mesh.lab.service("backend", namespace="demo").vip
    waypoint_ip = mesh.pods["waypoint"].ip
    answer = mesh.get("client", vip, 80)
    # Nothing serves the waypoint here: the call fails, but it went to the waypoint.
    assert "Hello from backend" not in answer
    outbound = mesh.records(
        "node1", lambda r: r["direction"] == "outbound" and r["dst"] == f"{vip}:80"
    )
    assert outbound, mesh.ztunnels["node1"].log_path.read_text()[-3000:]
    record = outbound[-1]
    assert (record["dst_identity"], record["dst_workload"]) == (WAYPOINT_ID, "waypoint")
    assert record["src_identity"] == CLIENT_ID
    assert record["result"] == "CONNECT" and str(waypoint_ip) in record["reason"]


def test_a_direct_tunnel_to_a_waypoint_served_pod_is_refused_as_a_bypass(mesh: Mesh) -> None:
    answer = mesh.get("client", mesh.pods["backend"].ip, 8080)
    assert "Hello from backend" not in answer and answer.startswith("ERROR")
    refused = mesh.records(
        "node2", lambda r: r["direction"] == "inbound-hbone" and r["result"] == "DENY"
    )
    assert refused, mesh.ztunnels["node2"].log_path.read_text()[-3000:]
    assert refused[-1]["reason"].startswith("bypassed waypoint")
    assert CLIENT_ID in refused[-1]["reason"] and WAYPOINT_ID in refused[-1]["reason"]


def test_a_plaintext_bypass_from_outside_the_mesh_is_refused(mesh: Mesh) -> None:
    answer = mesh.get("outsider", mesh.pods["backend"].ip, 8080)
    assert "Hello from backend" not in answer and answer.startswith("ERROR")
    refused = mesh.records("node2", lambda r: r["direction"] == "inbound-plaintext")
    assert refused and refused[-1]["result"] == "DENY"
    assert refused[-1]["reason"].startswith("bypassed waypoint")
