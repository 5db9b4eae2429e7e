"""ztunnel in a two-node lab with the real capture programs: HBONE between nodes.

    node1: client, neighbor (http-echo :8080), intruder (all demo, enrolled);
           outsider (plain, not enrolled)
    node2: backend (demo; http-echo :8080 reporting the caller, tcp sink :9001, echo :9002)
    Service demo/backend 80 -> 8080; PeerAuthentication STRICT mesh-wide;
    backend ALLOWs only the client's principal on 8080/9001/9002, and DENYs 9002

Each node runs the agent (capture) and `ambient ztunnel run --cluster-folder` (its
state translated from the lab's cluster YAML as istiod would, certificates from one
local CA shared by both nodes).
"""

from __future__ import annotations

import datetime as dt
import json
import os
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
    log_with,
    start_agent,
    teardown_nodes,
    wait_for,
    wait_for_enrollment,
)
from ztunnel.app import load_or_create_ca

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(300)]

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status)
        print(r.read().decode())
except Exception as err:
    print("ERROR", err)
"""

# Sends N MiB of deterministic data, half-closes, prints the sink's JSON verdict and ours.
BULK = """
import hashlib, json, socket, sys
host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), 5)
s.settimeout(30)
digest = hashlib.sha256()
for i in range(mib * 16):
    block = hashlib.sha256(str(i).encode()).digest() * 2048
    s.sendall(block)
    digest.update(block)
s.shutdown(socket.SHUT_WR)
reply = b""
while chunk := s.recv(65536):
    reply += chunk
got = json.loads(reply.decode().strip().splitlines()[-1])
print(json.dumps({"sha256": digest.hexdigest(), "got": got}))
"""

POLICIES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-allow, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]
    to: [{operation: {ports: ["8080", "9001", "9002"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-deny-9002, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["9002"]}}]
"""


@dataclass
class Mesh:
    lab: Any
    pods: dict[str, Any]
    ztunnels: dict[str, Any]
    ca_dir: Path

    def get(self, pod: str, host: str, port: int) -> str:
        done = self.lab.exec(
            self.pods[pod], ["python", "-c", HTTP_GET, host, str(port)], timeout=20
        )
        return str(done.stdout)

    def fetch(self, node: str, url: str) -> str:
        done = self.lab.exec(self.lab.node(node), ["python", "-c", FETCH, url], timeout=20)
        return str(done.stdout)


def start_ztunnel(lab: Any, node: Any, ca_dir: Path) -> Any:
    """`ambient ztunnel run` in ``node``'s namespace, state from the lab's cluster folder."""
    argv = ["python", "-m", "ambient", "ztunnel", "run", "--node", node.name]
    argv += ["--cluster-folder", str(lab.config_dir), "--ca-dir", str(ca_dir)]
    argv += ["--access-log-format", "json"]
    return lab.spawn_in_node(node, argv, name=f"ztunnel-{node.name}-{time.monotonic_ns()}")


def wait_ready(mesh: Mesh, node: str) -> None:
    url = "http://127.0.0.1:15021/healthz/ready"
    wait_for(lambda: mesh.fetch(node, url).startswith("200"), 60, f"ztunnel on {node}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:

    from lab import Lab, LabSpec

    ca_dir = tmp_path_factory.mktemp("ztunnel-ca")
    load_or_create_ca(ca_dir, "cluster.local", dt.datetime.now(dt.UTC))
    name = f"zt{os.getpid() % 100000}"
    with Lab.create(LabSpec(name=name, nodes=2, outside=False)) as lab:
        pin_dirs = [BPFFS_ROOT / n.id for n in lab.nodes]
        try:
            lab.add_namespace("demo", labels=AMBIENT)
            lab.add_namespace("plain")
            pods = {
                "client": lab.add_pod(
                    "client", namespace="demo", node="node1", service_account="client"
                ),
                "outsider": lab.add_pod("outsider", namespace="plain", node="node1"),
                "neighbor": lab.add_pod(
                    "neighbor", namespace="demo", node="node1", service_account="neighbor"
                ),
                "intruder": lab.add_pod(
                    "intruder", namespace="demo", node="node1", service_account="intruder"
                ),
                "backend": add_backend(lab),
            }
            (Path(lab.config_dir) / "zz-policies.yaml").write_text(POLICIES)
            lab.start_workload("backend", "tcp-echo", ["--listen", ":9001", "--mode", "sink"])
            lab.start_workload("backend", "tcp-echo", ["--listen", ":9002"])
            lab.start_workload("neighbor", "http-echo", ["--listen", ":8080"])
            ztunnels = {}
            for node in lab.nodes:
                start_agent(lab, node)
                ztunnels[node.name] = start_ztunnel(lab, node, ca_dir)
            result = Mesh(lab, pods, ztunnels, ca_dir)
            for node, pin_dir in zip(lab.nodes, pin_dirs, strict=True):
                wait_ready(result, node.name)
                wait_for_enrollment(node, pin_dir, pods)
            yield result
        finally:
            teardown_nodes(lab, pin_dirs)


def test_service_call_crosses_nodes_over_hbone_with_the_real_client_ip(mesh: Mesh) -> None:
    vip = mesh.lab.service("backend", namespace="demo").vip
    answer = ""
    for _ in range(20):
        answer = mesh.get("client", vip, 80)
        if "Hello from backend" in answer:
            break
        time.sleep(0.5)
    logs = {n: p.log_path.read_text()[-3000:] for n, p in mesh.ztunnels.items()}
    assert "Hello from backend" in answer, (answer, logs)
    assert f"client: {mesh.pods['client'].ip}:" in answer
    dest = log_with(mesh.ztunnels["node2"].log_path, '"direction": "inbound-hbone"')
    assert '"direction": "inbound-hbone"' in dest and '"result": "ok"' in dest


def test_bulk_transfer_arrives_intact(mesh: Mesh) -> None:
    done = mesh.lab.exec(
        mesh.pods["client"],
        ["python", "-c", BULK, mesh.pods["backend"].ip, "9001", "100"],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-1000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["got"]["bytes"] == 100 * 1024 * 1024
    assert result["got"]["sha256"] == result["sha256"]
    assert result["got"]["client"].startswith(f"{mesh.pods['client'].ip}:")


def test_strict_refuses_a_caller_outside_the_mesh(mesh: Mesh) -> None:
    answer = mesh.get("outsider", mesh.pods["backend"].ip, 8080)
    assert "Hello from backend" not in answer and answer.startswith("ERROR")


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    body = text.split("\n", 1)[1]  # after the status line FETCH prints
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    ]


def test_both_reporters_count_the_same_connection_and_bytes(mesh: Mesh) -> None:
    source = mesh.fetch("node1", "http://127.0.0.1:15020/metrics")
    dest = mesh.fetch("node2", "http://127.0.0.1:15020/stats/prometheus")
    src_opened = samples(source, "istio_tcp_connections_opened_total")
    dst_opened = samples(dest, "istio_tcp_connections_opened_total")
    assert src_opened and all(labels["reporter"] == "source" for labels, _ in src_opened)
    assert dst_opened and all(labels["reporter"] == "destination" for labels, _ in dst_opened)
    hostname = "backend.demo.svc.cluster.local"
    # The service call as each side labelled it (pod-IP calls carry no service).
    src_labels = next(lbl for lbl, _ in src_opened if lbl["destination_service"] == hostname)
    dst_labels = next(lbl for lbl, _ in dst_opened if lbl["destination_service"] == hostname)
    for key in ("source_principal", "destination_principal", "source_workload"):
        assert src_labels[key] == dst_labels[key] != "unknown"
    assert src_labels["connection_security_policy"] == "mutual_tls"
    # Both sides saw the same bytes each way.
    for metric in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"):
        assert sum(v for _, v in samples(source, metric)) == sum(
            v for _, v in samples(dest, metric)
        )
    # The STRICT refusal of the outsider is counted by the destination with DENY.
    failed = samples(dest, "istio_tcp_connections_failed_total")
    assert any(labels["response_flags"] == "DENY" for labels, _ in failed)
    dump = json.loads(mesh.fetch("node2", "http://127.0.0.1:15000/config_dump").split("\n", 1)[1])
    assert [c["identity"] for c in dump["certificates"]] == [
        "spiffe://cluster.local/ns/demo/sa/backend"
    ]
    assert dump["certificates"][0]["state"] == "Available"


def test_same_node_call_goes_through_the_local_ztunnel(mesh: Mesh) -> None:
    answer = mesh.get("client", mesh.pods["neighbor"].ip, 8080)
    assert "Hello from neighbor" in answer, answer
    assert f"client: {mesh.pods['client'].ip}:" in answer
    log = log_with(mesh.ztunnels["node1"].log_path, '"dst_workload": "neighbor"')
    assert '"dst_workload": "neighbor"' in log


def test_allow_and_deny_policies_per_principal_and_port(mesh: Mesh) -> None:
    vip = mesh.lab.service("backend", namespace="demo").vip
    assert "Hello from backend" in mesh.get("client", vip, 80)
    assert mesh.get("intruder", vip, 80).startswith("ERROR")
    echoed = mesh.lab.exec(
        mesh.pods["client"],
        [
            "python",
            "-c",
            "import socket,sys; s=socket.create_connection((sys.argv[1], 9002), 5);"
            "s.settimeout(5); s.sendall(b'ping'); print(s.recv(10))",
            mesh.pods["backend"].ip,
        ],
        timeout=20,
    )
    assert "ping" not in echoed.stdout
    log = log_with(
        mesh.ztunnels["node2"].log_path,
        "denied by DENY policy demo/backend-deny-9002",
        "no ALLOW policy matched",
    )
    assert "denied by DENY policy demo/backend-deny-9002" in log
    assert "no ALLOW policy matched" in log and "sa/intruder" in log


def test_ztunnel_down_fails_closed_and_restart_resumes(mesh: Mesh) -> None:
    vip = mesh.lab.service("backend", namespace="demo").vip
    mesh.lab.stop(mesh.ztunnels["node1"])
    answer = mesh.get("client", vip, 80)
    assert answer.startswith("ERROR") and "Hello" not in answer
    node1 = mesh.lab.node("node1")
    mesh.ztunnels["node1"] = start_ztunnel(mesh.lab, node1, mesh.ca_dir)
    wait_ready(mesh, "node1")
    assert "Hello from backend" in mesh.get("client", vip, 80)


MARKER = b"plaintext-marker-8d1e5b"


def test_between_nodes_only_tls13_and_no_plaintext(mesh: Mesh) -> None:
    node2 = mesh.lab.node("node2")
    pcap = Path(mesh.lab.run_dir) / "uplink2.pcap"
    dump = mesh.lab.spawn_in_node(
        node2,
        [
            "tcpdump",
            "-i",
            node2.uplink,
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
            str(pcap),
            "tcp",
        ],
        name="tcpdump",
    )
    try:
        wait_for(lambda: "listening on" in dump.log_path.read_text(), 10, "tcpdump to start")
        # A new identity means a new HBONE connection (a full handshake on the wire)...
        mesh.get("neighbor", mesh.pods["backend"].ip, 8080)
        # ... and the client's payload carries a marker that must never appear in clear.
        sender = (
            "import socket,sys; s=socket.create_connection((sys.argv[1], 9001), 5);"
            f"s.sendall({MARKER!r} * 1000); s.shutdown(socket.SHUT_WR); print(s.recv(4096))"
        )
        done = mesh.lab.exec(mesh.pods["client"], ["python", "-c", sender, mesh.pods["backend"].ip])
        assert "bytes" in done.stdout, done.stderr
        time.sleep(0.5)
    finally:
        mesh.lab.stop(dump)
    raw = pcap.read_bytes()
    assert len(raw) > 1000, (dump.log_path.read_text()[-2000:], done.stdout)
    assert MARKER not in raw
    # A ServerHello that selected TLS 1.3 (supported_versions = 0x0304).
    assert b"\x00\x2b\x00\x02\x03\x04" in raw
    listing = mesh.lab.exec(node2, ["tcpdump", "-nn", "-r", str(pcap)]).stdout
    packets = [line for line in listing.splitlines() if " IP " in line and " > " in line]
    assert packets
    for line in packets:
        src, dst = line.split(" IP ", 1)[1].split(":", 1)[0].split(" > ")
        # Every TCP segment between the nodes belongs to an HBONE connection.
        assert "15008" in (src.rsplit(".", 1)[1], dst.rsplit(".", 1)[1]), line
