"""Two whole ztunnel processes (loopback, no root) fed by the control plane over xDS and its CA.

Each ztunnel gets its state from an :class:`~ztunnel.xds.client.XdsClient` (applied
with ``Ztunnel.apply_state``, as local mode applies a file) and its certificates from a
:class:`~ztunnel.identity.caclient.CaClient` (its ``Issuer``). Checked through each
ztunnel's own ``/config_dump``: a pod added to the control plane's folder appears in
both within 1 s and a deleted one disappears; each ztunnel holds certificates only for
its node's identities, signed by the control plane's root; with the control plane
stopped both keep their workloads and certificates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.ca.credentials import NodeTokens
from controlplane.server import ControlPlane, ControlPlaneConfig
from ztunnel.app import Ztunnel
from ztunnel.config import ZtunnelConfig
from ztunnel.identity.caclient import CaClient
from ztunnel.xds.client import Backoff, ControlPlaneEndpoint, XdsClient, node_id

pytestmark = pytest.mark.timeout(90)

CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
"""


def pod(name: str, node: str, ip: str, sa: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo}}
spec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: app}}]}}
status: {{podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if body.startswith("{") else body
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@dataclass
class Node:
    name: str
    ztunnel: Ztunnel
    xds: XdsClient
    ca: CaClient
    admin: int
    readiness: int
    task: asyncio.Task[None]

    async def dump(self) -> dict[str, Any]:
        status, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{self.admin}/config_dump")
        assert status == 200
        data: dict[str, Any] = body
        return data

    async def workload_names(self) -> set[str]:
        return {w["name"] for w in (await self.dump())["workloads"]}


async def until(check: Callable[[], Any], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, list[Node], Path]]:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    (config / "ns.yaml").write_text(CLUSTER)
    (config / "a.yaml").write_text(pod("a", "n1", "127.0.0.3", "alice"))
    (config / "b.yaml").write_text(pod("b", "n2", "127.0.0.4", "bob"))
    plane = ControlPlane(
        ControlPlaneConfig(
            state_dir=state,
            config_dir=config,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            watch_interval=0.05,
        )
    )
    await plane.start()
    tokens = NodeTokens.load_or_create(state)
    nodes: list[Node] = []
    try:
        for name in ("n1", "n2"):
            token = tmp_path / f"{name}.token"
            token.write_text(tokens.issue(name, dt.datetime.now(dt.UTC)))
            endpoint = ControlPlaneEndpoint(
                f"127.0.0.1:{plane.xds_port}", state / "root-cert.pem", token, "localhost"
            )
            ports = free_ports(6)
            ztunnel_config = ZtunnelConfig(
                node_name=name,
                transparent=False,
                proxy_address="127.0.0.1",
                outbound_port=ports[0],
                inbound_plaintext_port=ports[1],
                hbone_port=ports[2],
                metrics_port=ports[3],
                readiness_port=ports[4],
                admin_port=ports[5],
                workers=1,
            )
            ca = CaClient(endpoint)
            ztunnel = Ztunnel(
                ztunnel_config, issuer=ca.issue, roots_pem=(state / "root-cert.pem").read_bytes()
            )
            xds = XdsClient(
                endpoint,
                node_id(pod=f"ztunnel-{name}"),
                ztunnel.apply_state,
                node_metadata={"NODE_NAME": name},
                backoff=Backoff(initial=0.05, maximum=0.3),
            )
            task = asyncio.create_task(xds.run())
            await asyncio.wait_for(xds.first_state.wait(), 10)
            await ztunnel.start()
            nodes.append(Node(name, ztunnel, xds, ca, ports[5], ports[4], task))
        yield plane, nodes, config
    finally:
        for node in nodes:
            node.task.cancel()
            with contextlib.suppress(BaseException):
                await node.task
            await node.ztunnel.stop()
            await node.ca.close()
        await plane.stop(0.2)


async def scenario(tmp_path: Path) -> None:
    async with mesh(tmp_path) as (plane, nodes, config):
        root_pem = (tmp_path / "state" / "root-cert.pem").read_bytes()
        for node in nodes:
            assert await node.workload_names() == {"a", "b"}

            async def ready(node: Node = node) -> bool:
                url = f"http://127.0.0.1:{node.readiness}/healthz/ready"
                return (await asyncio.to_thread(fetch, url))[0] == 200

            await until(ready, 5.0, f"{node.name} ready")
            (cert,) = (await node.dump())["certificates"]
            sa = {"n1": "alice", "n2": "bob"}[node.name]
            assert cert["identity"] == f"spiffe://cluster.local/ns/demo/sa/{sa}"
            assert cert["state"] == "Available"
            assert base64.b64decode(cert["rootCerts"][0]["pem"]).strip() == root_pem.strip()

        (config / "c.yaml").write_text(pod("c", "n1", "127.0.0.5", "carol"))
        for node in nodes:

            async def has_c(node: Node = node) -> bool:
                return "c" in await node.workload_names()

            assert await until(has_c, 1.0, f"pod c in {node.name}'s config_dump") < 1.0
        n1 = nodes[0]

        async def carol_certified() -> bool:
            identities = {c["identity"] for c in (await n1.dump())["certificates"]}
            return "spiffe://cluster.local/ns/demo/sa/carol" in identities

        await until(carol_certified, 5.0, "n1 got carol's certificate")
        (config / "a.yaml").unlink()
        for node in nodes:

            async def no_a(node: Node = node) -> bool:
                return "a" not in await node.workload_names()

            await until(no_a, 1.0, f"pod a gone from {node.name}")

        await plane.stop(0.2)
        await asyncio.sleep(0.5)
        for node in nodes:
            assert not node.xds.connected
            assert await node.workload_names() == {"b", "c"}  # the last state keeps serving
            assert all(c["state"] == "Available" for c in (await node.dump())["certificates"])


def test_two_ztunnels_follow_the_control_plane(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 60))
