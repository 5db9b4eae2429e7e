"""``ambient controlplane run | node-credential | status`` as real processes on 127.0.0.1.

No root needed. A node credential printed by the CLI lets a CA client get a
certificate for a pod on that node; ``status -o json`` shows the CA's counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ztunnel.errors import IdentityError
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.xds.client import ControlPlaneEndpoint

pytestmark = pytest.mark.timeout(90)

AMBIENT = [sys.executable, "-m", "ambient"]
CONFIG = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo}
spec: {nodeName: node1, serviceAccountName: web, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.1.9}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ambient(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AMBIENT, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_run_credential_status(tmp_path: Path) -> None:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    (config / "all.yaml").write_text(CONFIG)
    xds, admin = free_port(), free_port()
    log = (tmp_path / "cp.log").open("w")
    process = subprocess.Popen(
        [
            *AMBIENT,
            "controlplane",
            "run",
            "--config-dir",
            str(config),
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{xds}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            status = ambient(
                "controlplane", "status", "--admin", f"127.0.0.1:{admin}", "-o", "json"
            )
            if status.returncode == 0:
                break
            assert process.poll() is None, (tmp_path / "cp.log").read_text()
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.2)
        assert stat_mode(state / "ca-key.pem") == 0o600
        token_file = tmp_path / "node1.token"
        issued = ambient(
            "controlplane",
            "node-credential",
            "node1",
            "--state-dir",
            str(state),
            "--out",
            str(token_file),
        )
        assert issued.returncode == 0, issued.stderr
        assert stat_mode(token_file) == 0o600
        endpoint = ControlPlaneEndpoint(
            f"127.0.0.1:{xds}", state / "root-cert.pem", token_file, server_name="localhost"
        )

        async def certificates() -> None:
            client = CaClient(endpoint)
            try:
                cert = await client.issue(SpiffeId("cluster.local", "demo", "web"))
                assert str(cert.identity) == "spiffe://cluster.local/ns/demo/sa/web"
                with pytest.raises(IdentityError, match="UNAUTHENTICATED"):
                    await client.issue(SpiffeId("cluster.local", "demo", "db"))
            finally:
                await client.close()

        asyncio.run(asyncio.wait_for(certificates(), 30))
        status = ambient("controlplane", "status", "--admin", f"127.0.0.1:{admin}", "-o", "json")
        ca = json.loads(status.stdout)["ca"]
        assert ca["issued"] == 1 and ca["refusedImpersonation"] == 1
        table = ambient("controlplane", "status", "--admin", f"127.0.0.1:{admin}")
        assert "issued 1" in table.stdout
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
    gone = ambient("controlplane", "status", "--admin", f"127.0.0.1:{admin}")
    assert gone.returncode == 1 and "no control plane status" in gone.stderr


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_run_refuses_without_a_source(tmp_path: Path) -> None:
    result = ambient("controlplane", "run", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert "one source" in result.stderr and "Traceback" not in result.stderr
