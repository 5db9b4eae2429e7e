"""The control plane in a two-node lab: agents and ztunnels on delta xDS and its CA.

    node1: the control plane (listening on node1's fabric address :15012), client pod
    node2: backend (http-echo :8080, tcp-echo :9001); Service demo/backend 80 -> 8080

Each node runs the agent (capture) and `ambient ztunnel run --xds-address ...` with
its node credential from `ambient controlplane node-credential`. Checked: a service
call crosses nodes over HBONE with certificates from the control plane's CA; a pod
added to the lab appears in both ztunnels' /config_dump within 1 s and a removed one
disappears; restarting the control plane during a transfer drops nothing and the
ztunnels converge after it returns; `controlplane status` lists both nodes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.pinned import BPFFS_ROOT
from tests.integration.meshlab import (
    AMBIENT,
    HTTP_GET,
    add_backend,
    start_agent,
    teardown_nodes,
    wait_for,
    wait_for_enrollment,
)

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(300)]

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.read().decode())
except Exception as err:
    print("ERROR", err)
"""

READY = "http://127.0.0.1:15021/healthz/ready"

# Asks the CA for an identity with a node's token; prints the outcome.
ASK_CA = """
import asyncio, sys
from pathlib import Path
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.xds.client import ControlPlaneEndpoint
address, root, token, sa = sys.argv[1:5]
async def main():
    client = CaClient(ControlPlaneEndpoint(address, Path(root), Path(token) if token else None))
    try:
        cert = await client.issue(SpiffeId("cluster.local", "demo", sa))
        print("ISSUED", cert.identity)
    except Exception as err:
        print("REFUSED", err)
    finally:
        await client.close()
asyncio.run(main())
"""

DENY_CLIENT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
"""

# A slow transfer: N blocks of 64 KiB, one every `pause` seconds, to a sink that
# answers with the byte count and digest when the sender half-closes.
SLOW_BULK = """
import hashlib, json, socket, sys, time
host, port, blocks, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), 5)
s.settimeout(30)
digest = hashlib.sha256()
for i in range(blocks):
    block = hashlib.sha256(str(i).encode()).digest() * 2048
    s.sendall(block)
    digest.update(block)
    time.sleep(pause)
s.shutdown(socket.SHUT_WR)
reply = b""
while chunk := s.recv(65536):
    reply += chunk
got = json.loads(reply.decode().strip().splitlines()[-1])
print(json.dumps({"sha256": digest.hexdigest(), "got": got}))
"""


@dataclass
class Mesh:
    lab: Any
    pods: dict[str, Any]
    state_dir: Path
    plane: list[Any]

    def config_dump(self, node: str) -> dict[str, Any]:
        done = self.lab.exec(
            self.lab.node(node), ["python", "-c", FETCH, "http://127.0.0.1:15000/config_dump"]
        )
        try:
            data: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            return {"workloads": [], "certificates": []}
        return data

    def workload_names(self, node: str) -> set[str]:
        return {w["name"] for w in self.config_dump(node)["workloads"]}


def start_control_plane(lab: Any, state_dir: Path) -> Any:
    node1 = lab.node("node1")
    argv = ["python", "-m", "ambient", "controlplane", "run", "--config-dir", str(lab.config_dir)]
    argv += ["--state-dir", str(state_dir), "--listen", f"{node1.ip}:15012"]
    argv += ["--admin-listen", "127.0.0.1:15014"]
    return lab.spawn_in_node(node1, argv, name=f"controlplane-{time.monotonic_ns()}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:

    from lab import Lab, LabSpec

    state_dir = tmp_path_factory.mktemp("controlplane-state")
    name = f"cx{os.getpid() % 100000}"
    with Lab.create(LabSpec(name=name, nodes=2, outside=False)) as lab:
        pin_dirs = [BPFFS_ROOT / n.id for n in lab.nodes]
        try:
            lab.add_namespace("demo", labels=AMBIENT)
            pods = {
                "client": lab.add_pod(
                    "client", namespace="demo", node="node1", service_account="client"
                ),
                "backend": add_backend(lab),
            }
            lab.start_workload("backend", "tcp-echo", ["--listen", ":9001", "--mode", "sink"])
            plane = [start_control_plane(lab, state_dir)]
            wait_for((state_dir / "root-cert.pem").exists, 30, "the control plane's CA")
            node1_ip = lab.node("node1").ip
            for node in lab.nodes:
                token = state_dir.parent / f"{name}-{node.name}.token"
                subprocess.run(
                    [sys.executable, "-m", "ambient", "controlplane", "node-credential",
                     node.name, "--state-dir", str(state_dir), "--out", str(token)],
                    check=True, timeout=30, capture_output=True,
                )  # fmt: skip
                start_agent(lab, node)
                lab.spawn_in_node(
                    node,
                    ["python", "-m", "ambient", "ztunnel", "run", "--node", node.name,
                     "--workers", "1", "--access-log-format", "json",
                     "--xds-address", f"{node1_ip}:15012",
                     "--xds-root-cert", str(state_dir / "root-cert.pem"),
                     "--auth-token-file", str(token)],
                    name=f"ztunnel-{node.name}",
                )  # fmt: skip
            result = Mesh(lab, pods, state_dir, plane)
            for node, pin_dir in zip(lab.nodes, pin_dirs, strict=True):
                wait_for(
                    lambda n=node: "ready" in lab.exec(n, ["python", "-c", FETCH, READY]).stdout,
                    60,
                    f"ztunnel on {node.name}",
                    step=0.3,
                )
                wait_for_enrollment(node, pin_dir, pods)
            yield result
        finally:
            teardown_nodes(lab, pin_dirs)


def test_service_call_with_control_plane_certificates(mesh: Mesh) -> None:
    vip = mesh.lab.service("backend", namespace="demo").vip
    answer = ""
    for _ in range(20):
        done = mesh.lab.exec(mesh.pods["client"], ["python", "-c", HTTP_GET, vip, "80"])
        answer = done.stdout
        if "Hello from backend" in answer:
            break
        time.sleep(0.5)
    assert "Hello from backend" in answer
    root = (mesh.state_dir / "root-cert.pem").read_text().strip()
    for node, sa in (("node1", "client"), ("node2", "backend")):
        certs = mesh.config_dump(node)["certificates"]
        assert [c["identity"] for c in certs] == [f"spiffe://cluster.local/ns/demo/sa/{sa}"]
        assert certs[0]["state"] == "Available"
        assert base64.b64decode(certs[0]["rootCerts"][0]["pem"]).decode().strip() == root


def test_pod_added_and_removed_reach_both_ztunnels_within_a_second(mesh: Mesh) -> None:
    mesh.lab.add_pod("late", namespace="demo", node="node2", service_account="late")
    for node in ("node1", "node2"):
        elapsed = wait_for(lambda n=node: "late" in mesh.workload_names(n), 1.0, f"late on {node}")
        assert elapsed < 1.0
    mesh.lab.remove_pod("demo/late")
    for node in ("node1", "node2"):
        wait_for(lambda n=node: "late" not in mesh.workload_names(n), 1.0, f"late gone on {node}")


def test_ca_refuses_other_nodes_identities_and_callers_without_credentials(mesh: Mesh) -> None:
    address = f"{mesh.lab.node('node1').ip}:15012"
    root = str(mesh.state_dir / "root-cert.pem")
    token = str(mesh.state_dir.parent / f"{mesh.lab.name}-node2.token")

    def ask(token: str, sa: str) -> str:
        argv = ["python", "-c", ASK_CA, address, root, token, sa]
        return str(mesh.lab.exec(mesh.lab.node("node2"), argv, timeout=30).stdout)

    assert "ISSUED spiffe://cluster.local/ns/demo/sa/backend" in ask(token, "backend")
    refused = ask(token, "client")  # client runs on node1
    assert "REFUSED" in refused and "no pod with that identity" in refused
    anonymous = ask("", "backend")
    assert "REFUSED" in anonymous and "no credential" in anonymous
    done = mesh.lab.exec(
        mesh.lab.node("node1"), ["python", "-m", "ambient", "controlplane", "status", "-o", "json"]
    )
    ca = json.loads(done.stdout)["ca"]
    assert ca["refusedImpersonation"] >= 1 and ca["refusedUnauthenticated"] >= 1


def test_policy_change_applies_to_new_connections(mesh: Mesh) -> None:
    vip = mesh.lab.service("backend", namespace="demo").vip

    def call() -> str:
        argv = ["python", "-c", HTTP_GET, vip, "80"]
        return str(mesh.lab.exec(mesh.pods["client"], argv).stdout)

    assert "Hello from backend" in call()
    policy = Path(mesh.lab.config_dir) / "zz-deny-client.yaml"
    policy.write_text(DENY_CLIENT)
    try:
        wait_for(lambda: "Hello from backend" not in call(), 10, "the DENY policy", step=0.2)
    finally:
        policy.unlink()
    wait_for(lambda: "Hello from backend" in call(), 10, "the policy removed", step=0.2)


def test_status_lists_both_nodes(mesh: Mesh) -> None:
    done = mesh.lab.exec(
        mesh.lab.node("node1"), ["python", "-m", "ambient", "controlplane", "status", "-o", "json"]
    )
    data = json.loads(done.stdout)
    assert sorted(p["node"] for p in data["proxies"]) == ["node1", "node2"]
    assert data["ca"]["issued"] >= 2  # one certificate per node at least


def test_control_plane_restart_during_a_transfer_drops_nothing(mesh: Mesh) -> None:
    result: dict[str, str] = {}

    def transfer() -> None:
        done = mesh.lab.exec(
            mesh.pods["client"],
            ["python", "-c", SLOW_BULK, mesh.pods["backend"].ip, "9001", "60", "0.05"],
            timeout=60,
        )
        result["out"] = done.stdout + done.stderr

    thread = threading.Thread(target=transfer)
    thread.start()
    time.sleep(0.5)
    mesh.lab.stop(mesh.plane[0])
    time.sleep(1.0)
    mesh.lab.add_pod("while-down", namespace="demo", node="node1", service_account="late")
    assert "while-down" not in mesh.workload_names("node2")
    mesh.plane[0] = start_control_plane(mesh.lab, mesh.state_dir)
    thread.join(60)
    verdict = json.loads(result["out"].strip().splitlines()[-1])
    assert verdict["got"]["bytes"] == 60 * 65536 and verdict["got"]["sha256"] == verdict["sha256"]
    for node in ("node1", "node2"):
        wait_for(lambda n=node: "while-down" in mesh.workload_names(n), 20, f"converged {node}")
