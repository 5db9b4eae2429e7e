"""``ambient waypoint run`` against the real control plane: live config, restarts.

In one network namespace: ``ambient controlplane run`` serving a config folder (a
namespace bound to waypoint ``wp``, backend v1/v2 behind a VirtualService), ``ambient
waypoint run`` for ``wp`` (its own bootstrap, node token, ADS over TLS), and two pods'
HBONE servers from ztunnel's code. A client opens HBONE tunnels to the waypoint as a
source ztunnel does. Checked: traffic follows the VirtualService; an edit of its
weights changes where requests go without restarting Envoy; the process stops cleanly
on SIGTERM and a new one gets its whole configuration back from the control plane;
an Envoy killed under it ends ``waypoint run`` with a clear error.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.ca.credentials import NodeTokens
from tests.integration.waypoint_envoy_peers import (
    NetnsLoop,
    Seen,
    issue,
    netns_with,
    open_tunnel,
    request,
    start_pod,
    wait_for,
)
from tests.waypoint_envoy_fixtures import virtual_service
from ztunnel.errors import ZtunnelError
from ztunnel.identity.certs import CertifiedKey, LocalCA
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.proxy.hbone import Authority

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.timeout(120),
]

NETNS = f"wplive-{os.getpid()}"
WAYPOINT_IP = "10.244.1.9"
PODS = {"10.244.2.11": "v1", "10.244.2.12": "v2"}
BACKEND_VIP = "10.96.0.20"
TD = "cluster.local"
WAYPOINT_ID = SpiffeId(TD, "demo", "wp")

CONFIG = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: demo}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: wp, namespace: demo, labels: {{gateway.networking.k8s.io/gateway-name: wp}}}}
spec:
  clusterIP: 10.96.0.9
  selector: {{gateway.networking.k8s.io/gateway-name: wp}}
  ports: [{{name: mesh, port: 15008}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp
  namespace: demo
  labels: {{gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}}
spec: {{nodeName: node1, serviceAccountName: wp, containers: [{{name: envoy}}]}}
status: {{phase: Running, podIP: {WAYPOINT_IP}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-v1, namespace: demo, labels: {{app: backend, version: v1}}}}
spec: {{nodeName: node2, serviceAccountName: backend, containers: [{{name: app}}]}}
status: {{phase: Running, podIP: 10.244.2.11, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-v2, namespace: demo, labels: {{app: backend, version: v2}}}}
spec: {{nodeName: node2, serviceAccountName: backend, containers: [{{name: app}}]}}
status: {{phase: Running, podIP: 10.244.2.12, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: demo}}
spec:
  clusterIP: {BACKEND_VIP}
  selector: {{app: backend}}
  ports: [{{name: http, port: 80, targetPort: 5678}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: demo}}
spec:
  host: backend
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def _in_netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, sys.executable, "-m", "ambient", *argv]


@dataclass
class Mesh:
    loop: NetnsLoop
    seen: Seen
    client: CertifiedKey
    roots: bytes
    config: Path
    work: Path
    token: Path


class Waypoint:
    """One ``ambient waypoint run`` process in the namespace."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        self.log_path = mesh.work / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            _in_netns(
                "waypoint",
                "run",
                "--namespace",
                "demo",
                "--gateway-name",
                "wp",
                "--instance-ip",
                WAYPOINT_IP,
                "--xds-address",
                "127.0.0.1:15012",
                "--xds-root-cert",
                str(mesh.work / "state" / "root-cert.pem"),
                "--auth-token-file",
                str(mesh.token),
                "--no-telemetry",
                "--concurrency",
                "1",
                "--work-dir",
                str(mesh.work / name),
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def envoy_pid(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        (pid,) = children.read_text().split()
        return int(pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("live")
    config, state = work / "config", work / "state"
    config.mkdir()
    (config / "demo.yaml").write_text(CONFIG)
    (config / "vs.yaml").write_text(virtual_service(80, 20))
    ca = LocalCA.create(dt.datetime.now(dt.UTC))
    (work / "ca.pem").write_bytes(ca.root_pem)
    (work / "ca-key.pem").write_bytes(ca.key_pem)
    (work / "ca-key.pem").chmod(0o600)
    token = work / "token"
    token.write_text(NodeTokens.load_or_create(state).issue("node1", dt.datetime.now(dt.UTC)))
    with netns_with(NETNS, (WAYPOINT_IP, *PODS)):
        log = (work / "controlplane.log").open("wb")
        plane = subprocess.Popen(
            _in_netns(
                "controlplane",
                "run",
                "--config-dir",
                str(config),
                "--state-dir",
                str(state),
                "--listen",
                "127.0.0.1:15012",
                "--admin-listen",
                "127.0.0.1:15014",
                "--ca-cert",
                str(work / "ca.pem"),
                "--ca-key",
                str(work / "ca-key.pem"),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        loop = NetnsLoop(NETNS)
        try:
            wait_for((state / "root-cert.pem").exists, 20, "the control plane's root")
            seen = Seen()
            backend = issue(ca, SpiffeId(TD, "demo", "backend"))
            servers = [
                loop.run(start_pod(ip, backend, ca.root_pem, seen, waypoint=WAYPOINT_ID, answer=v))
                for ip, v in PODS.items()
            ]
            client = issue(ca, SpiffeId(TD, "demo", "frontend"))
            yield Mesh(loop, seen, client, ca.root_pem, config, work, token)
            for server in servers:
                server.close()
        finally:
            loop.stop()
            plane.send_signal(signal.SIGTERM)
            try:
                plane.wait(10)
            except subprocess.TimeoutExpired:
                plane.kill()
                plane.wait(5)
            log.close()


def _versions(mesh: Mesh, count: int) -> dict[str, int]:
    """Where ``count`` GETs through one tunnel to the backend VIP went."""

    async def scenario() -> dict[str, int]:
        tunnel = await open_tunnel(
            (WAYPOINT_IP, WAYPOINT_ID), mesh.client, mesh.roots, Authority(BACKEND_VIP, 80)
        )
        found: dict[str, int] = {}
        try:
            for _ in range(count):
                status, body = await request(tunnel)
                assert status == "HTTP/1.1 200 OK", status
                found[body] = found.get(body, 0) + 1
        finally:
            tunnel.channel.close()
        return found

    return mesh.loop.run(scenario())


def _eventually_versions(mesh: Mesh, waypoint: Waypoint, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if waypoint.process.poll() is not None:
            raise AssertionError(f"waypoint run exited:\n{waypoint.output()[-2000:]}")
        try:
            return _versions(mesh, 20)
        except (AssertionError, OSError, TimeoutError, ZtunnelError) as err:
            last = err
        time.sleep(0.2)
    raise AssertionError(f"no traffic through the waypoint in {timeout}s: {last!r}")


def _write_vs(mesh: Mesh, v1: int, v2: int) -> None:
    (mesh.config / ".vs.tmp").write_text(virtual_service(v1, v2))
    os.replace(mesh.config / ".vs.tmp", mesh.config / "vs.yaml")


def test_live_config_restart_and_failure(mesh: Mesh) -> None:
    first = Waypoint(mesh, "first")
    try:
        _eventually_versions(mesh, first, 40)
        split = _versions(mesh, 200)
        assert 135 <= split.get("v1", 0) <= 182, split  # 80/20, binomial 99.9%
        assert mesh.seen.peers == {str(WAYPOINT_ID)}
        envoy = first.envoy_pid()

        _write_vs(mesh, 0, 100)
        started = time.monotonic()
        while _versions(mesh, 20) != {"v2": 20}:
            assert time.monotonic() - started < 10, "the weight edit did not reach the traffic"
            time.sleep(0.1)
        assert first.envoy_pid() == envoy, "Envoy was restarted for an edit"
    finally:
        assert first.stop() == 0, first.output()[-2000:]

    second = Waypoint(mesh, "second")
    try:
        # A new process, nothing carried over: the configuration comes back over xDS.
        assert _eventually_versions(mesh, second, 40) == {"v2": 20}
        os.kill(second.envoy_pid(), signal.SIGKILL)
        assert second.process.wait(15) != 0
        assert "error: envoy was killed by SIGKILL" in second.output()
    finally:
        second.stop()
        _write_vs(mesh, 80, 20)
