"""Traffic through ztunnel's proxy with state from delta xDS and certificates from the CA.

Loopback, no root (as ``test_ztunnel_loopback``): "pods" are 127.0.0.x addresses, the
outbound listener's own address stands for the service VIP. The control plane serves
a folder; the proxy's state comes from an :class:`XdsClient`, its certificates from a
:class:`CaClient`. Checked: HBONE traffic with the control plane's certificates; an
AuthorizationPolicy added to the folder refuses new connections of a caller while an
open tunnel keeps flowing; restarting the control plane during traffic drops nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.ca.credentials import NodeTokens
from controlplane.server import ControlPlane, ControlPlaneConfig
from ztunnel.config import ZtunnelConfig
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.store import IdentityStore
from ztunnel.metrics import TcpMetrics, new_registry
from ztunnel.proxy.connector import HboneConnector
from ztunnel.proxy.hbone import HboneSettings
from ztunnel.proxy.pool import ConnectionPool
from ztunnel.proxy.proxy import Proxy
from ztunnel.proxy.sockets import SocketFactory, accept_loop
from ztunnel.state.proxy_state import ProxyState
from ztunnel.xds.client import Backoff, ControlPlaneEndpoint, XdsClient, node_id

pytestmark = pytest.mark.timeout(90)

CLIENT, SERVER, VIP, OTHER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


def cluster_yaml(vip_port: int, echo_port: int) -> str:
    def pod(name: str, ip: str) -> str:
        return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, labels: {{app: {name}}}}}
spec: {{nodeName: n1, serviceAccountName: {name}, containers: [{{name: app}}]}}
status: {{podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
---
"""

    return (
        """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
"""
        + pod("client", CLIENT)
        + pod("other", OTHER)
        + pod("server", SERVER)
        + f"""\
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: demo}}
spec:
  selector: {{app: server}}
  clusterIP: {VIP}
  ports: [{{name: tcp, port: {vip_port}, targetPort: {echo_port}}}]
"""
    )


POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
"""


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def connect(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (VIP, port))
    return await asyncio.open_connection(sock=sock)


async def talk(source: str, port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read everything back ("" when refused)."""
    reader, writer = await connect(source, port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    received = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            received += chunk
    except ConnectionResetError:
        pass
    writer.close()
    return bytes(received)


async def slow_talk(source: str, port: int, chunks: int, pause: float) -> bytes:
    """One long connection: a chunk every ``pause`` seconds, each echo read back."""
    reader, writer = await connect(source, port)
    received = bytearray()
    for i in range(chunks):
        writer.write(bytes([i]) * 1000)
        await writer.drain()
        received += await asyncio.wait_for(reader.readexactly(1000), 10)
        await asyncio.sleep(pause)
    writer.close()
    return bytes(received)


async def until(check: Callable[[], object], timeout: float, what: str) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def scenario(tmp_path: Path) -> None:
    factory = SocketFactory(transparent=False, connect_timeout=5.0)
    hbone_sock = factory.listener(SERVER, 0)
    outbound_sock = factory.listener(VIP, 0)
    hbone_port, vip_port = hbone_sock.getsockname()[1], outbound_sock.getsockname()[1]
    echo_server = await asyncio.start_server(echo, SERVER, 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    config_dir, state_dir = tmp_path / "config", tmp_path / "state"
    config_dir.mkdir()
    (config_dir / "cluster.yaml").write_text(cluster_yaml(vip_port, echo_port))
    plane_config = ControlPlaneConfig(
        state_dir=state_dir,
        config_dir=config_dir,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        watch_interval=0.05,
    )
    plane = ControlPlane(plane_config)
    await plane.start()
    xds_port = plane.xds_port
    token = tmp_path / "n1.token"
    token.write_text(NodeTokens.load_or_create(state_dir).issue("n1", dt.datetime.now(dt.UTC)))
    endpoint = ControlPlaneEndpoint(
        f"127.0.0.1:{xds_port}", state_dir / "root-cert.pem", token, "localhost"
    )
    ca = CaClient(endpoint)
    identities = IdentityStore((state_dir / "root-cert.pem").read_bytes(), ca.issue)
    current: list[ProxyState] = [ProxyState()]

    def apply(state: ProxyState) -> None:
        current[0] = state
        identities.track(w.identity for w in state.workloads.values())

    xds = XdsClient(endpoint, node_id(), apply, backoff=Backoff(initial=0.05, maximum=0.3))
    tasks = [asyncio.create_task(xds.run()), asyncio.create_task(identities.run())]
    # No node name: this one proxy plays both ztunnels, so traffic really takes HBONE.
    proxy_config = ZtunnelConfig(node_name="", hbone_port=hbone_port, workers=1)
    connector = HboneConnector(
        identities, factory, ConnectionPool(max_streams=100), HboneSettings()
    )
    proxy = Proxy(
        proxy_config,
        state=lambda: current[0],
        identities=identities,
        metrics=TcpMetrics(new_registry()),
        sockets=factory,
        connector=connector,
        rng=random.Random(1),
    )
    hbone_server = asyncio.create_task(accept_loop(hbone_sock, proxy.handle_hbone))
    outbound_server = asyncio.create_task(accept_loop(outbound_sock, proxy.handle_outbound))
    try:
        await asyncio.wait_for(xds.first_state.wait(), 10)
        await until(identities.ready, 10, "certificates from the control plane's CA")
        assert len(identities.rotations) == 3
        payload = random.Random(2).randbytes(512 * 1024)
        assert await talk(CLIENT, vip_port, payload) == payload
        assert await talk(OTHER, vip_port, b"before the policy") == b"before the policy"

        # A tunnel that lives through the policy change and a control-plane restart.
        long_lived = asyncio.create_task(slow_talk(CLIENT, vip_port, 30, 0.1))
        (config_dir / "policy.yaml").write_text(POLICY)
        await until(lambda: current[0].policies, 2.0, "policy delivered")
        assert await talk(OTHER, vip_port, b"after the policy") == b""  # refused (401)
        assert await talk(CLIENT, vip_port, b"still allowed") == b"still allowed"

        await plane.stop(0.2)
        await until(lambda: not xds.connected, 5.0, "xDS disconnected")
        assert await talk(CLIENT, vip_port, b"control plane down") == b"control plane down"
        plane = ControlPlane(
            ControlPlaneConfig(
                state_dir=state_dir,
                config_dir=config_dir,
                listen=f"127.0.0.1:{xds_port}",
                admin_listen="127.0.0.1:0",
                watch_interval=0.05,
            )
        )
        await plane.start()
        await until(lambda: xds.connected, 5.0, "xDS reconnected")
        assert await long_lived == b"".join(bytes([i]) * 1000 for i in range(30))
        assert await talk(CLIENT, vip_port, b"after restart") == b"after restart"
        assert xds.core.types[next(iter(xds.core.types))].nacks == 0
    finally:
        outbound_server.cancel()
        hbone_server.cancel()
        echo_server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, hbone_server, outbound_server, return_exceptions=True)
        await connector.close()
        await ca.close()
        await plane.stop(0.2)


def test_traffic_with_xds_state_and_ca_certificates(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 60))
