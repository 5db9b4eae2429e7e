"""Capture in a two-node lab: the real agent and programs, a transparent stand-in for ztunnel.

Pods (namespace ``mesh`` is enrolled, ``plain`` is not, ``flip`` changes at run time):

    node1: a (mesh), b (mesh), d (plain), f (flip)      stand-in for ztunnel on node1
    node2: c (plain: http-echo :8080, tcp echo :9000, tcp sink :9001)

``agent.standin`` listens on 15001/15006/15008 in node1's namespace with
``IP_TRANSPARENT``: in ``report`` mode it answers one JSON line naming the listener,
the original destination and the peer; in ``relay`` mode it connects to the original
destination from the client's address, as ztunnel does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from agent.pinned import BPFFS_ROOT
from tests.integration.meshlab import teardown_nodes, wait_for, workload_ips

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(300)]

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
AMBIENT_CLI = [sys.executable, "-m", "ambient"]

# One connection: print the first line the far end sends after we send "x\n".
FIRST_LINE = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))
s.settimeout(float(sys.argv[3]))
s.sendall(b"x\\n")
data = b""
while b"\\n" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\\n")[0].decode())
"""

# HTTP GET, prints the body.
HTTP_GET = """
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
c.request("GET", "/")
print(c.getresponse().read().decode())
"""

# A long-lived connection that exchanges a line every 50 ms for N seconds.
KEEPER = """
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)
s.settimeout(3)
end = time.time() + float(sys.argv[3])
ok, buf, n = 0, b"", 0
try:
    while time.time() < end:
        msg = f"ping-{n}\\n".encode()
        s.sendall(msg)
        while msg not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed by peer")
            buf += chunk
        buf = buf.split(msg, 1)[1]
        ok, n = ok + 1, n + 1
        time.sleep(0.05)
    print(json.dumps({"ok": ok, "error": None}), flush=True)
except OSError as err:
    print(json.dumps({"ok": ok, "error": repr(err)}), flush=True)
"""

# Polls until a connection is (or is no longer) answered by the stand-in; prints when.
UNTIL_CAPTURED = """
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
want, limit = sys.argv[3] == "captured", float(sys.argv[4])
end = time.time() + limit
while time.time() < end:
    try:
        s = socket.create_connection((host, port), 0.3)
        s.settimeout(0.5)
        s.sendall(b"x\\n")
        data = s.recv(200)
        s.close()
    except OSError:
        data = b""
    if data and data.startswith(b'{"listener"') == want:
        print(json.dumps({"at": time.time(), "first": data.decode(errors="replace")}), flush=True)
        break
    time.sleep(0.02)
else:
    print(json.dumps({"at": None}), flush=True)
"""

# Sends a deterministic stream at a bounded rate for N seconds to a sink; checks its sha256.
TRANSFER = """
import hashlib, json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), 5)
s.settimeout(20)
digest, sent, i = hashlib.sha256(), 0, 0
end = time.time() + seconds
while time.time() < end:
    block = hashlib.sha256(str(i).encode()).digest() * 2048  # 64 KiB
    s.sendall(block)
    digest.update(block)
    sent += len(block)
    i += 1
    time.sleep(0.02)
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
got = json.loads(reply.decode().strip().splitlines()[-1])
print(json.dumps({"sent": sent, "sha256": digest.hexdigest(), "got": got}), flush=True)
"""


@dataclass
class Capture:
    """The lab, its pods and the processes these tests start."""

    lab: Any
    pods: dict[str, Any]
    agents: dict[str, Any] = field(default_factory=dict)
    standin: Any = None
    starts: int = 0

    def start_agent(self, node: str) -> Any:
        the_node = self.lab.node(node)
        self.starts += 1
        proc = self.lab.spawn_in_node(
            the_node,
            [
                "python",
                "-m",
                "ambient",
                "agent",
                "run",
                "--node",
                the_node.name,
                "--node-id",
                the_node.id,
                "--config-dir",
                str(self.lab.config_dir),
                "--uplink",
                the_node.uplink,
                "--exclude-port",
                "2222",
                "--exclude-cidr",
                "192.0.2.0/24",
            ],
            name=f"agent-{node}-{self.starts}",
        )
        self.agents[node] = proc
        return proc

    def use_standin(self, modes: str) -> None:
        """(Re)starts the stand-in on node1 with ``modes`` (e.g. ``15001=relay``)."""
        self.stop_standin()
        self.starts += 1
        argv = ["python", "-m", "agent.standin"]
        for spec in modes.split():
            argv += ["--port", spec]
        self.standin = self.lab.spawn_in_node("node1", argv, name=f"standin-{self.starts}")
        wait_for(lambda: '"listening"' in self.standin.log_path.read_text(), 10, "stand-in")

    def stop_standin(self) -> None:
        if self.standin is not None:
            self.lab.stop(self.standin)
            self.standin = None

    def standin_records(self) -> list[dict[str, Any]]:
        if self.standin is None:
            return []
        lines = self.standin.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"listener"')]

    def first_line(self, src: str, ip: str, port: int, timeout: float = 3.0) -> str:
        done = self.lab.exec(
            self.pods[src] if src in self.pods else self.lab.node(src),
            ["python", "-c", FIRST_LINE, ip, str(port), str(timeout)],
            timeout=timeout + 10,
        )
        assert done.returncode == 0, done.stderr[-800:]
        return str(done.stdout.strip())

    def report(self, src: str, ip: str, port: int) -> dict[str, Any]:
        line = self.first_line(src, ip, port)
        assert line.startswith('{"listener"'), f"not captured: {line!r}"
        return dict(json.loads(line))

    def maps(self, what: str, node: str, *extra: str) -> Any:
        done = subprocess.run(
            [*AMBIENT_CLI, "maps", what, "--node-id", self.lab.node(node).id, "-o", "json", *extra],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:

    from lab import Lab, LabSpec

    name = f"cap{os.getpid() % 100000}"
    with Lab.create(LabSpec(name=name, nodes=2, outside=False)) as lab:
        pin_dirs = [BPFFS_ROOT / n.id for n in lab.nodes]
        try:
            lab.add_namespace("mesh", labels=AMBIENT)
            lab.add_namespace("plain")
            lab.add_namespace("flip")
            pods = {
                "a": lab.add_pod("a", namespace="mesh", node="node1"),
                "b": lab.add_pod("b", namespace="mesh", node="node1"),
                "d": lab.add_pod("d", namespace="plain", node="node1"),
                "f": lab.add_pod("f", namespace="flip", node="node1"),
                "c": lab.add_pod("c", namespace="plain", node="node2"),
            }
            lab.start_workload("b", "http-echo", ["--text", "Hello from b", "--listen", ":8080"])
            lab.start_workload("c", "http-echo", ["--text", "Hello from c", "--listen", ":8080"])
            lab.start_workload("c", "tcp-echo", ["--listen", ":9000"])
            lab.start_workload("c", "tcp-echo", ["--listen", ":9001", "--mode", "sink"])
            cap = Capture(lab=lab, pods=pods)
            for node in ("node1", "node2"):
                cap.start_agent(node)
            wait_for(
                lambda: workload_ips(pin_dirs[0]) == {pods[p].ip for p in "abdf"},
                30,
                "node1's agent to know a, b, d, f",
            )
            wait_for(lambda: workload_ips(pin_dirs[1]) == {pods["c"].ip}, 30, "node2's agent")
            cap.use_standin("15001=report 15006=report 15008=report")
            yield cap
        finally:
            teardown_nodes(lab, pin_dirs)
    for pin_dir in pin_dirs:
        assert not pin_dir.exists()


def test_enrolled_pod_reaches_outbound_listener_with_original_destination(
    capture: Capture,
) -> None:
    a, b, c = (capture.pods[p] for p in "abc")
    same_node = capture.report("a", b.ip, 8080)
    assert same_node["listener"] == 15001
    assert same_node["original_dst"] == f"{b.ip}:8080"
    assert same_node["peer"].startswith(f"{a.ip}:")
    other_node = capture.report("a", c.ip, 9000)
    assert other_node["listener"] == 15001
    assert other_node["original_dst"] == f"{c.ip}:9000"


def test_non_enrolled_pod_traffic_is_untouched(capture: Capture) -> None:
    c, d = capture.pods["c"], capture.pods["d"]
    before = len(capture.standin_records())
    assert capture.first_line("d", c.ip, 9000) == "x"  # the real echo server answered
    done = capture.lab.exec("d", ["python", "-c", HTTP_GET, c.ip, "8080"], timeout=15)
    assert "Hello from c" in done.stdout
    assert f"client: {d.ip}:" in done.stdout
    assert len(capture.standin_records()) == before


def test_exclusions_pass_untouched(capture: Capture) -> None:
    # --exclude-port 2222 and the default 15008: an enrolled pod reaches c directly,
    # where nothing listens, so the real stack refuses (no stand-in answer).
    before = len(capture.standin_records())
    for port in (2222, 15008):
        done = capture.lab.exec(
            "a", ["python", "-c", FIRST_LINE, capture.pods["c"].ip, str(port), "2"], timeout=15
        )
        assert "ConnectionRefusedError" in done.stderr
    assert len(capture.standin_records()) == before


def test_non_mesh_syn_to_enrolled_pod_reaches_inbound_listener(capture: Capture) -> None:
    a, b, d = (capture.pods[p] for p in "abd")
    same_node = capture.report("d", b.ip, 8080)  # pod egress of d
    assert same_node["listener"] == 15006
    assert same_node["original_dst"] == f"{b.ip}:8080"
    assert same_node["peer"].startswith(f"{d.ip}:")
    from_other_node = capture.report("c", a.ip, 8080)  # node ingress of node1
    assert from_other_node["listener"] == 15006
    assert from_other_node["original_dst"] == f"{a.ip}:8080"
    assert from_other_node["peer"].startswith(f"{capture.pods['c'].ip}:")


def test_hbone_syn_from_another_node_reaches_hbone_listener(capture: Capture) -> None:
    a = capture.pods["a"]
    node2 = capture.lab.node("node2")
    hbone = capture.report("node2", a.ip, 15008)  # as node2's ztunnel would connect
    assert hbone["listener"] == 15008
    assert hbone["original_dst"] == f"{a.ip}:15008"
    assert hbone["peer"].startswith(f"{node2.ip}:")


def test_replies_to_spoofed_upstream_connections_come_back_same_and_other_node(
    capture: Capture,
) -> None:
    a, b, c = (capture.pods[p] for p in "abc")
    capture.use_standin("15001=relay 15006=report 15008=report")
    try:
        for dst, text in ((b, "Hello from b"), (c, "Hello from c")):
            done = capture.lab.exec("a", ["python", "-c", HTTP_GET, dst.ip, "8080"], timeout=15)
            assert text in done.stdout, done.stderr[-500:]
            # the server saw pod a's own address: the relay connected from it, and the
            # server's replies found the relay's socket through the programs
            assert f"client: {a.ip}:" in done.stdout
        relayed = [r for r in capture.standin_records() if r.get("mode") == "relay"]
        assert [r["original_dst"] for r in relayed] == [f"{b.ip}:8080", f"{c.ip}:8080"]
        assert all(r["upstream_local"].startswith(f"{a.ip}:") for r in relayed)
        assert all("error" not in r for r in relayed)
    finally:
        capture.use_standin("15001=report 15006=report 15008=report")


def test_listener_gone_refuses_and_counts(capture: Capture) -> None:
    a, c = capture.pods["a"], capture.pods["c"]
    sink_log = next(p for p in capture.lab.processes if "tcp-echo" in p.name and ":9001" in p.argv)
    conns_before = sink_log.log_path.read_text().count("conn from")
    rows = capture.maps("stats", "node1", "--pod-ip", a.ip)
    drops_before = rows[0]["dropped_no_listener"] if rows else 0
    capture.stop_standin()
    try:
        done = capture.lab.exec("a", ["python", "-c", FIRST_LINE, c.ip, "9001", "2"], timeout=15)
        assert done.returncode != 0
        assert "ConnectionRefusedError" in done.stderr, done.stderr[-500:]
        stats = capture.maps("stats", "node1", "--pod-ip", a.ip)
        assert stats[0]["dropped_no_listener"] > drops_before
        time.sleep(0.5)
        assert sink_log.log_path.read_text().count("conn from") == conns_before
    finally:
        capture.use_standin("15001=report 15006=report 15008=report")


def relabel_and_time(capture: Capture, labels: dict[str, str | None], want: str) -> float:
    """Seconds from relabelling ``flip`` until pod f's connections are ``want``."""
    c = capture.pods["c"]
    watcher = capture.lab.spawn(
        "f", ["python", "-c", UNTIL_CAPTURED, c.ip, "9000", want, "10"], name=f"watch-{want}"
    )
    time.sleep(0.3)
    changed_at = time.time()
    capture.lab.set_namespace_labels("flip", labels)
    wait_for(lambda: watcher.poll() is not None, 15, f"{want} after relabelling")
    seen = json.loads(watcher.log_path.read_text().strip().splitlines()[-1])
    assert seen["at"] is not None, f"never {want} after relabelling to {labels}"
    return float(seen["at"] - changed_at)


def test_enrolling_and_unenrolling_at_run_time_within_a_second(capture: Capture) -> None:
    c = capture.pods["c"]
    lab = capture.lab
    # a connection opened before enrollment (direct to c's echo server)...
    keeper_direct = lab.spawn("f", ["python", "-c", KEEPER, c.ip, "9000", "6"], name="keep-1")
    time.sleep(0.5)
    assert relabel_and_time(capture, dict(AMBIENT), "captured") < 1.0
    # ...keeps flowing; a connection opened while enrolled (to the stand-in) as well
    keeper_captured = lab.spawn("f", ["python", "-c", KEEPER, c.ip, "9000", "4"], name="keep-2")
    time.sleep(0.5)
    assert relabel_and_time(capture, {"istio.io/dataplane-mode": None}, "direct") < 1.0
    for keeper in (keeper_direct, keeper_captured):
        wait_for(lambda k=keeper: k.poll() is not None, 20, keeper.name)
        result = json.loads(keeper.log_path.read_text().strip().splitlines()[-1])
        assert result["error"] is None, result
        assert result["ok"] > 20
    captured_keeper = [
        r for r in capture.standin_records() if r["peer"].startswith(capture.pods["f"].ip)
    ]
    assert captured_keeper, "the connection opened while enrolled did not go to the stand-in"


def test_pods_added_and_removed_at_run_time_within_a_second(capture: Capture) -> None:
    lab = capture.lab
    pin_dir = BPFFS_ROOT / lab.node("node1").id
    started = time.monotonic()
    g = capture.pods["g"] = lab.add_pod("g", namespace="mesh", node="node1")
    wait_for(lambda: g.ip in workload_ips(pin_dir), 5, "the new pod in the workloads map")
    assert time.monotonic() - started < 1.0 + 0.5  # + the lab's own pod creation
    assert capture.report("g", capture.pods["c"].ip, 9000)["listener"] == 15001
    programs = {r["ifname"] for r in capture.maps("programs", "node1", "--pod-ip", g.ip)}
    assert programs == {g.host_ifname}
    started = time.monotonic()
    lab.remove_pod(g)
    wait_for(lambda: g.ip not in workload_ips(pin_dir), 5, "the pod gone from the map")
    assert time.monotonic() - started < 1.0 + 0.5
    assert capture.maps("programs", "node1", "--pod-ip", g.ip) == []
    assert capture.maps("stats", "node1", "--pod-ip", g.ip) == []
    # the same pod again: likely the same address, surely a new veth
    g2 = capture.pods["g"] = lab.add_pod("g", namespace="mesh", node="node1")
    try:
        wait_for(lambda: g2.ip in workload_ips(pin_dir), 5, "the re-created pod")
        assert capture.report("g", capture.pods["c"].ip, 9000)["listener"] == 15001
        rows = capture.maps("programs", "node1", "--pod-ip", g2.ip)
        assert [r["ifname"] for r in rows] == [g2.host_ifname]
    finally:
        lab.remove_pod(g2)
        del capture.pods["g"]
    wait_for(lambda: g2.ip not in workload_ips(pin_dir), 5, "the pod gone again")


def test_agent_kill_9_and_restart_during_a_30s_transfer(capture: Capture) -> None:
    c = capture.pods["c"]
    lab = capture.lab
    capture.use_standin("15001=relay 15006=report 15008=report")
    try:
        transfer = lab.spawn("a", ["python", "-c", TRANSFER, c.ip, "9001", "30"], name="xfer")
        time.sleep(5)
        for node in ("node1", "node2"):
            os.kill(capture.agents[node].pid, signal.SIGKILL)
        for node in ("node1", "node2"):
            wait_for(lambda n=node: capture.agents[n].poll() is not None, 10, "agent death")
        # with no agent at all: capture goes on (through the relay), the maps read as before
        relayed_before = len(capture.standin_records())
        assert capture.first_line("a", c.ip, 9000) == "x"
        wait_for(lambda: len(capture.standin_records()) > relayed_before, 5, "a relay record")
        assert capture.standin_records()[-1]["original_dst"] == f"{c.ip}:9000"
        rows = capture.maps("workloads", "node1")
        assert {r["pod"] for r in rows} == {"a", "b", "d", "f"}
        time.sleep(1)
        for node in ("node1", "node2"):
            capture.start_agent(node)
        wait_for(
            lambda: "adopted=4" in capture.agents["node1"].log_path.read_text(), 30, "adoption"
        )
        wait_for(lambda: transfer.poll() is not None, 60, "the transfer to finish")
        result = json.loads(transfer.log_path.read_text().strip().splitlines()[-1])
        assert result["got"]["bytes"] == result["sent"]
        assert result["got"]["sha256"] == result["sha256"]
        assert result["sent"] > 10_000_000
        relayed = [r for r in capture.standin_records() if r.get("original_dst") == f"{c.ip}:9001"]
        assert relayed and relayed[-1]["sent"] == result["sent"]
    finally:
        capture.use_standin("15001=report 15006=report 15008=report")
    assert capture.report("a", c.ip, 9000)["listener"] == 15001


def test_maps_cli_json_matches_the_lab(capture: Capture) -> None:
    pods = capture.pods
    # traffic of each kind, so the counters below do not depend on other tests
    capture.report("a", pods["b"].ip, 8080)
    capture.report("d", pods["b"].ip, 8080)
    capture.report("node2", pods["a"].ip, 15008)
    rows = capture.maps("workloads", "node1")
    assert {r["pod_ip"]: (r["namespace"], r["pod"], r["enrolled"], r["ifname"]) for r in rows} == {
        pods[p].ip: (pods[p].namespace, p, pods[p].namespace == "mesh", pods[p].host_ifname)
        for p in "abdf"
    }
    assert [r["pod"] for r in capture.maps("workloads", "node1", "--namespace", "mesh")] == [
        "a",
        "b",
    ]
    assert [r["pod"] for r in capture.maps("workloads", "node1", "--pod-ip", pods["d"].ip)] == ["d"]
    settings = capture.maps("settings", "node1")
    assert settings == {
        "mark": "0x539",
        "outbound_port": 15001,
        "inbound_port": 15006,
        "hbone_port": 15008,
        "outbound_excluded_ports": [15008, 2222],
        "inbound_excluded_ports": [],
        "excluded_cidrs": ["192.0.2.0/24"],
    }
    as_yaml = subprocess.run(
        [*AMBIENT_CLI, "maps", "settings", "--node-id", capture.lab.node("node1").id, "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert yaml.safe_load(as_yaml.stdout) == settings
    programs = capture.maps("programs", "node1")
    attached = {(r["program"], r["ifname"]) for r in programs}
    assert attached == {("pod_egress", pods[p].host_ifname) for p in "abdf"} | {
        ("node_ingress", capture.lab.node("node1").uplink)
    }
    assert all(r["prog_id"] for r in programs)
    stats = {r["pod_ip"]: r for r in capture.maps("stats", "node1")}
    assert stats[pods["a"].ip]["redirected_outbound"] >= 1
    assert stats[pods["b"].ip]["redirected_inbound"] >= 1
    assert stats[pods["a"].ip]["redirected_hbone"] >= 1
    verdicts = {(r["kind"], r["name"]): r["packets"] for r in capture.maps("verdicts", "node1")}
    assert verdicts[("verdict", "redirect_outbound")] >= 1
    assert verdicts[("verdict", "redirect_inbound")] >= 1
    assert verdicts[("verdict", "redirect_hbone")] >= 1
    assert verdicts[("verdict", "assign_established")] > 0
    assert ("drop", "no_outbound_listener") in verdicts
    # the table renders the same rows
    done = subprocess.run(
        [*AMBIENT_CLI, "maps", "workloads", "--node-id", capture.lab.node("node1").id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "POD IP" in done.stdout and pods["a"].host_ifname in done.stdout


def test_agent_metrics_on_localhost(capture: Capture) -> None:
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:15029/metrics', timeout=5).read().decode())"
    )
    done = capture.lab.exec("node1", ["python", "-c", code], timeout=20)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert 'ambient_agent_workloads{enrolled="true",node="node1"} 2.0' in text
    assert 'ambient_agent_map_entries{map="workloads",node="node1"} 4.0' in text
    assert "ambient_agent_redirected_connections_total" in text
    assert "ambient_agent_dropped_packets_total" in text
    assert "ambient_agent_attach_failures_total" in text
    assert 'ambient_agent_verdicts_total{node="node1",verdict="redirect_outbound"}' in text
    assert 'ambient_agent_fail_closed_total{node="node1",reason="no_hbone_listener"}' in text


def test_a_malformed_pod_file_does_not_disturb_capture(capture: Capture) -> None:
    broken = capture.lab.config_dir / "pod.mesh.broken.yaml"
    broken.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: mesh}\n"
        "spec: {nodeName: [not, a, name]}\nstatus: {podIP: 10.244.1.250}\n"
    )
    try:
        time.sleep(1.0)  # several polls of the source
        assert capture.report("a", capture.pods["c"].ip, 9000)["listener"] == 15001
        assert "10.244.1.250" not in {r["pod_ip"] for r in capture.maps("workloads", "node1")}
    finally:
        broken.unlink()


def test_agents_survived_everything_above(capture: Capture) -> None:
    """Pods came and went, labels flipped, listeners vanished: no agent may have died."""
    for node, proc in capture.agents.items():
        log = proc.log_path.read_text()
        assert proc.poll() is None, f"the agent of {node} exited: {log[-1500:]}"
        assert "internal error" not in log and "Traceback" not in log


def test_cleanup_removes_everything_the_agent_put_in_place(capture: Capture) -> None:
    """Last: stops the agents, then `ambient agent cleanup` for each node."""
    for proc in capture.agents.values():
        capture.lab.stop(proc)
    for node_name in ("node1", "node2"):
        node = capture.lab.node(node_name)
        done = subprocess.run(
            [*AMBIENT_CLI, "agent", "cleanup", "--node", node.id, "--netns", node.netns],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report = done.stdout
        assert node.uplink in report
        assert not (BPFFS_ROOT / node.id).exists()
        rules = subprocess.run(
            ["ip", "-n", node.netns, "rule", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert "0x539" not in rules
        table = subprocess.run(
            ["ip", "-n", node.netns, "route", "show", "table", "133"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert table.strip() == ""
        qdiscs = subprocess.run(
            ["tc", "-n", node.netns, "qdisc", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert "clsact" not in qdiscs
    done = subprocess.run(
        [*AMBIENT_CLI, "maps", "workloads", "--node-id", capture.lab.node("node1").id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "nothing pinned for this node" in done.stderr
