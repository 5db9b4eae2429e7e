"""`ambient ztunnel run --workers 2` on loopback (no root): shared listeners, summed metrics,
one log level."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ztunnel.workers import FOLLOW_INTERVAL_S

STATE = """
workloads:
- {{name: client, namespace: demo, serviceAccount: client, workloadIps: [127.0.0.2],
   protocol: HBONE, node: n1}}
- {{name: server, namespace: demo, serviceAccount: server, workloadIps: [127.0.0.1],
   protocol: HBONE, node: n1,
   services: {{demo/echo.demo.svc.cluster.local: {{{vip_port}: {echo_port}}}}}}}
services:
- {{name: echo, namespace: demo, vips: [127.0.0.1], ports: {{{vip_port}: {echo_port}}}}}
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_two_workers_share_listeners_and_sum_metrics(tmp_path: Path) -> None:
    outbound, plaintext, hbone, metrics, ready, admin, echo_port = free_ports(7)
    state = tmp_path / "state.yaml"
    state.write_text(STATE.format(vip_port=outbound, echo_port=echo_port))
    echo = subprocess.Popen(
        [sys.executable, "-m", "lab.workloads.tcp_echo", "--listen", f"127.0.0.1:{echo_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    argv = [sys.executable, "-m", "ambient", "ztunnel", "run", "--no-transparent"]
    argv += ["--workers", "2", "--state-file", str(state), "--ca-dir", str(tmp_path / "ca")]
    argv += ["--proxy-address", "127.0.0.1", "--outbound-port", str(outbound)]
    argv += ["--inbound-plaintext-port", str(plaintext), "--hbone-port", str(hbone)]
    argv += ["--metrics-port", str(metrics), "--readiness-port", str(ready)]
    argv += ["--admin-port", str(admin)]
    # The kernel's hash: no eBPF program on sockets of this machine's own namespace (the
    # steering program has its tests inside a namespace, test_ztunnel_steering.py).
    argv += ["--worker-balance", "kernel"]
    log = (tmp_path / "ztunnel.log").open("w")
    ztunnel = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while http(f"http://127.0.0.1:{ready}/healthz/ready")[0] != 200:
            assert time.monotonic() < deadline, (tmp_path / "ztunnel.log").read_text()[-2000:]
            assert ztunnel.poll() is None, (tmp_path / "ztunnel.log").read_text()[-2000:]
            time.sleep(0.2)
        assert len(children(ztunnel.pid)) == 2
        for i in range(20):
            payload = f"hello {i}".encode() * 100
            assert echo_once(outbound, payload) == payload
        time.sleep(0.3)
        status, text = http(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200
        opened: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "istio_tcp_connections_opened_total":
                    reporter = sample.labels["reporter"]
                    opened[reporter] = opened.get(reporter, 0) + sample.value
        # Whichever worker answered the scrape, the counts are the sum over workers.
        assert opened == {"source": 20.0, "destination": 20.0}
        status, body = http(f"http://127.0.0.1:{admin}/config_dump")
        assert status == 200 and len(json.loads(body)["workloads"]) == 2
        # /logging reaches one worker; the other follows within its interval. Thirty
        # reads, each from a new client port, meet both workers (all on one: 2**-29).
        status, text = http(f"http://127.0.0.1:{admin}/logging?level=debug", "POST")
        assert (status, text) == (200, "current log level is debug\n")
        time.sleep(FOLLOW_INTERVAL_S * 2 + 0.2)
        answers = {http(f"http://127.0.0.1:{admin}/logging", "POST") for _ in range(30)}
        assert answers == {(200, "current log level is debug\n")}
        assert http(f"http://127.0.0.1:{admin}/logging?reset", "POST")[0] == 200
        time.sleep(FOLLOW_INTERVAL_S * 2 + 0.2)
        answers = {http(f"http://127.0.0.1:{admin}/logging", "POST") for _ in range(30)}
        assert answers == {(200, "current log level is info\n")}
        # /quitquitquit reaches one worker; the supervisor stops the other and exits.
        assert http(f"http://127.0.0.1:{admin}/quitquitquit", "POST")[0] == 200
        assert ztunnel.wait(timeout=20) == 0
    finally:
        for proc in (ztunnel, echo):
            if proc.poll() is None:
                for child in children(proc.pid):
                    os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.wait(timeout=10)
        log.close()
