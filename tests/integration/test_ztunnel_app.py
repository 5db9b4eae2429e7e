"""A whole ztunnel process on loopback (no root): readiness, metrics, admin, reload, drain."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ztunnel.app import Ztunnel
from ztunnel.cli import config_cli
from ztunnel.config import ZtunnelConfig

STATE = """
workloads:
- {name: backend-1, namespace: demo, serviceAccount: backend, workloadIps: [127.0.0.3],
   protocol: HBONE, node: n1}
- {name: elsewhere, namespace: demo, serviceAccount: remote, workloadIps: [127.0.0.9],
   protocol: HBONE, node: n2}
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def loopback_config(ports: list[int], **extra: Any) -> ZtunnelConfig:
    """A non-transparent ztunnel of node n1 on 127.0.0.1 with the given listener ports."""
    return ZtunnelConfig(
        node_name="n1",
        transparent=False,
        proxy_address="127.0.0.1",
        outbound_port=ports[0],
        inbound_plaintext_port=ports[1],
        hbone_port=ports[2],
        metrics_port=ports[3],
        readiness_port=ports[4],
        admin_port=ports[5],
        workers=1,
        **extra,
    )


def http(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def scenario(tmp_path: Path) -> None:
    state_file = tmp_path / "state.yaml"
    state_file.write_text(STATE)
    ports = free_ports(6)
    config = loopback_config(
        ports, state_file=state_file, ca_dir=tmp_path / "ca", drain_timeout=1.0
    )
    ztunnel = Ztunnel(config)
    await ztunnel.start()
    try:
        base = f"http://127.0.0.1:{ports[5]}"
        assert await asyncio.to_thread(http, f"http://127.0.0.1:{ports[4]}/healthz/ready") == (
            200,
            "ready\n",
        )
        status, metrics = await asyncio.to_thread(
            http, f"http://127.0.0.1:{ports[3]}/stats/prometheus"
        )
        assert status == 200 and 'istio_build{component="ztunnel"' in metrics
        status, body = await asyncio.to_thread(http, f"{base}/config_dump")
        dump = json.loads(body)
        assert [w["name"] for w in dump["workloads"]] == ["backend-1", "elsewhere"]
        # Only the local workload's identity gets a certificate.
        (cert,) = dump["certificates"]
        assert cert["identity"] == "spiffe://cluster.local/ns/demo/sa/backend"
        assert cert["state"] == "Available" and cert["certChain"][0]["serialNumber"]
        leaf_pem = base64.b64decode(cert["certChain"][0]["pem"])
        assert b"BEGIN CERTIFICATE" in leaf_pem
        root_pem = (tmp_path / "ca" / "root-cert.pem").read_bytes()
        assert base64.b64decode(cert["rootCerts"][0]["pem"]).strip() == root_pem.strip()
        assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777 == 0o600

        runner = CliRunner()
        result = await asyncio.to_thread(
            runner.invoke, config_cli, ["workloads", "--admin-url", base]
        )
        assert result.exit_code == 0, result.output
        assert "backend-1" in result.output and "127.0.0.3" in result.output
        result = await asyncio.to_thread(
            runner.invoke, config_cli, ["certificates", "--admin-url", base, "-o", "json"]
        )
        assert json.loads(result.output)[0]["state"] == "Available"

        # A broken state file keeps the last good state; a fixed one is taken.
        state_file.write_text("workloads: [{name: x}]\n")
        os.utime(state_file, (1, 1))
        assert not ztunnel.reload_state()
        assert len(ztunnel.state.workloads) == 2
        state_file.write_text(STATE.split("- {name: elsewhere", maxsplit=1)[0])
        os.utime(state_file, (2, 2))
        assert ztunnel.reload_state() and len(ztunnel.state.workloads) == 1

        assert (await asyncio.to_thread(http, f"{base}/logging?level=debug", "POST"))[0] == 200
        # `ambient ztunnel-config log`, as istioctl's: read, set, reset; a bad level is a
        # clear error naming the levels, and the level stays.
        result = await asyncio.to_thread(runner.invoke, config_cli, ["log", "--admin-url", base])
        assert (result.exit_code, result.output) == (0, "current log level is debug\n")
        result = await asyncio.to_thread(
            runner.invoke, config_cli, ["log", "--admin-url", base, "--level", "warn", "-o", "json"]
        )
        assert result.exit_code == 0 and json.loads(result.output) == {"level": "warn"}
        result = await asyncio.to_thread(
            runner.invoke, config_cli, ["log", "--admin-url", base, "--level", "loud"]
        )
        assert result.exit_code != 0
        assert "unknown level 'loud'" in str(result.exception) and "levels: error" in str(
            getattr(result.exception, "hint", "")
        )
        result = await asyncio.to_thread(
            runner.invoke, config_cli, ["log", "--admin-url", base, "--reset", "-o", "yaml"]
        )
        assert result.exit_code == 0 and result.output == "level: info\n"
        result = await asyncio.to_thread(
            runner.invoke, config_cli, ["workloads", "--admin-url", base, "--level", "info"]
        )
        assert result.exit_code == 2 and "log section only" in result.output
        assert (await asyncio.to_thread(http, f"{base}/logging"))[0] == 405
        assert (await asyncio.to_thread(http, f"{base}/nothing"))[0] == 404
        assert await asyncio.to_thread(http, f"{base}/quitquitquit", "POST") == (200, "draining\n")
        await asyncio.wait_for(ztunnel.wait(), 5)
        assert not ztunnel.ready()
    finally:
        await ztunnel.stop()
    # Drained: the proxy listeners no longer accept.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", ports[2])) != 0


def test_ztunnel_process_on_loopback(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 60))


CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-v1, namespace: demo, labels: {app: backend}}
spec: {nodeName: n1, serviceAccountName: backend}
status: {podIP: 127.0.0.3, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: demo, labels: {app: frontend}}
spec: {nodeName: n2, serviceAccountName: frontend}
status: {podIP: 127.0.0.7, conditions: [{type: Ready, status: "True"}]}
"""


async def cluster_scenario(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    folder.mkdir()
    (folder / "pods.yaml").write_text(CLUSTER)
    ports = free_ports(6)
    config = loopback_config(ports, cluster_folder=folder)
    ztunnel = Ztunnel(config)
    await ztunnel.start()
    try:
        status, body = await asyncio.to_thread(http, f"http://127.0.0.1:{ports[5]}/config_dump")
        assert status == 200
        dump = json.loads(body)
        assert sorted(w["name"] for w in dump["workloads"]) == ["backend-v1", "frontend"]
        assert all(w["protocol"] == "HBONE" for w in dump["workloads"])
        assert [c["identity"] for c in dump["certificates"]] == [
            "spiffe://cluster.local/ns/demo/sa/backend"
        ]
        # A new pod in the folder shows up without a restart.
        pod = CLUSTER.split("---\n")[1]
        (folder / "more.yaml").write_text(
            pod.replace("backend-v1", "backend-v2").replace("127.0.0.3", "127.0.0.4")
        )
        for _ in range(50):
            if len(ztunnel.state.workloads) == 3:
                break
            await asyncio.sleep(0.1)
        assert ztunnel.state.workload_by_ip("127.0.0.4") is not None
    finally:
        await ztunnel.stop()


def test_ztunnel_from_a_cluster_folder(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(cluster_scenario(tmp_path), 60))


async def control_plane_scenario(tmp_path: Path) -> None:
    from controlplane.ca.credentials import NodeTokens
    from controlplane.server import ControlPlane, ControlPlaneConfig

    config_dir, state_dir = tmp_path / "config", tmp_path / "state"
    config_dir.mkdir()
    (config_dir / "pods.yaml").write_text(CLUSTER)
    plane = ControlPlane(
        ControlPlaneConfig(
            state_dir=state_dir,
            config_dir=config_dir,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            watch_interval=0.05,
        )
    )
    await plane.start()
    try:
        token = tmp_path / "n1.token"
        token.write_text(NodeTokens.load_or_create(state_dir).issue("n1", dt.datetime.now(dt.UTC)))
        ports = free_ports(6)
        config = loopback_config(
            ports,
            xds_address=f"127.0.0.1:{plane.xds_port}",
            xds_root_cert=state_dir / "root-cert.pem",
            auth_token_file=token,
            xds_server_name="localhost",
        )
        ztunnel = Ztunnel(config)
        await ztunnel.start()
        try:
            ready = f"http://127.0.0.1:{ports[4]}/healthz/ready"
            for _ in range(100):
                if (await asyncio.to_thread(http, ready))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            status, body = await asyncio.to_thread(http, f"http://127.0.0.1:{ports[5]}/config_dump")
            assert status == 200
            dump = json.loads(body)
            assert sorted(w["name"] for w in dump["workloads"]) == ["backend-v1", "frontend"]
            # The node's own workload got its certificate from the control plane's CA.
            (cert,) = dump["certificates"]
            assert cert["identity"] == "spiffe://cluster.local/ns/demo/sa/backend"
            assert cert["state"] == "Available"
            root = (state_dir / "root-cert.pem").read_bytes()
            assert base64.b64decode(cert["rootCerts"][0]["pem"]).strip() == root.strip()
        finally:
            await ztunnel.stop()
    finally:
        await plane.stop(0.2)


def test_ztunnel_from_the_control_plane(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(control_plane_scenario(tmp_path), 60))
