"""ztunnel's asyncio shell end to end on loopback (no root): outbound -> HBONE -> inbound.

Workload "pods" are 127.0.0.x addresses; the outbound listener's own address stands
for a service VIP (no capture here), the HBONE listener sits on the server pod's
address, and the upstream is an echo server on the same address.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import socket

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ztunnel.config import ZtunnelConfig
from ztunnel.identity.certs import LocalCA
from ztunnel.identity.store import IdentityStore, local_issuer
from ztunnel.metrics import TcpMetrics, new_registry, render
from ztunnel.proxy.connector import HboneConnector
from ztunnel.proxy.hbone import HboneSettings
from ztunnel.proxy.pool import ConnectionPool
from ztunnel.proxy.proxy import Proxy
from ztunnel.proxy.sockets import SocketFactory
from ztunnel.state.local_file import parse_state

CLIENT, SERVER, VIP, OTHER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


def state_yaml(echo_port: int, vip_port: int) -> str:
    return f"""
workloads:
- {{name: client, namespace: demo, serviceAccount: client, workloadIps: [{CLIENT}],
    protocol: HBONE, node: n1}}
- {{name: other, namespace: demo, serviceAccount: other, workloadIps: [{OTHER}],
    protocol: HBONE, node: n1}}
- {{name: server, namespace: demo, serviceAccount: server, workloadIps: [{SERVER}],
    protocol: HBONE, node: n1,
    services: {{demo/backend.demo.svc.cluster.local: {{{vip_port}: {echo_port}}}}}}}
services:
- {{name: backend, namespace: demo, vips: [{VIP}], ports: {{{vip_port}: {echo_port}}}}}
policies:
- name: only-client
  namespace: demo
  scope: Namespace
  action: Allow
  rules: [[[{{principals: [cluster.local/ns/demo/sa/client]}}]]]
"""


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def counter(registry, name: str) -> dict[str, float]:
    text = render(registry, None)[0].decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                key = f"{sample.labels['reporter']}/{sample.labels['response_flags']}"
                out[key] = out.get(key, 0) + sample.value
    return out


async def talk(source: str, port: int, payload: bytes) -> bytes:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (VIP, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    received = bytearray()

    async def send() -> None:
        for i in range(0, len(payload), 65536):
            writer.write(payload[i : i + 65536])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(65536):
            received += chunk
        await sender
    except ConnectionResetError:
        sender.cancel()
    writer.close()
    return bytes(received)


async def scenario(caplog: pytest.LogCaptureFixture) -> None:
    factory = SocketFactory(transparent=False, connect_timeout=5.0)
    hbone_sock = factory.listener(SERVER, 0)
    outbound_sock = factory.listener(VIP, 0)
    hbone_port = hbone_sock.getsockname()[1]
    vip_port = outbound_sock.getsockname()[1]
    echo_server = await asyncio.start_server(echo, SERVER, 0)
    echo_port = echo_server.sockets[0].getsockname()[1]

    state = parse_state(yaml.safe_load(state_yaml(echo_port, vip_port))).to_proxy_state()
    config = ZtunnelConfig(
        node_name="n1", hbone_port=hbone_port, workers=1, access_log_format="json"
    )
    ca = LocalCA.create(dt.datetime.now(dt.UTC))
    identities = IdentityStore(ca.root_pem, local_issuer(ca))
    identities.track(w.identity for w in state.workloads.values())
    await identities.refresh_due()
    assert identities.ready()
    registry = new_registry()
    metrics = TcpMetrics(registry)
    connector = HboneConnector(
        identities, factory, ConnectionPool(max_streams=100), HboneSettings()
    )
    proxy = Proxy(
        config,
        state=lambda: state,
        identities=identities,
        metrics=metrics,
        sockets=factory,
        connector=connector,
        rng=random.Random(1),
    )
    hbone_server = await asyncio.start_server(proxy.handle_hbone, sock=hbone_sock)
    outbound_server = await asyncio.start_server(proxy.handle_outbound, sock=outbound_sock)
    try:
        payload = random.Random(2).randbytes(3 * 1024 * 1024)
        assert await talk(CLIENT, vip_port, payload) == payload
        # Ten more, concurrently, share the one pooled HBONE connection.
        small = [bytes([i]) * 10_000 for i in range(10)]
        answers = await asyncio.gather(*(talk(CLIENT, vip_port, p) for p in small))
        assert answers == small
        assert len(connector.pool) == 1
        # "other" is not allowed by policy: the destination answers 401 and the
        # source ztunnel resets the client's connection.
        assert await talk(OTHER, vip_port, b"let me in") == b""
        await asyncio.sleep(0.1)
    finally:
        outbound_server.close()
        hbone_server.close()
        echo_server.close()
        await connector.close()

    opened = counter(registry, "istio_tcp_connections_opened_total")
    assert opened == {"source/-": 11.0, "destination/-": 11.0}
    received = counter(registry, "istio_tcp_received_bytes_total")
    assert received["source/-"] == received["destination/-"] == len(payload) + 100_000
    sent = counter(registry, "istio_tcp_sent_bytes_total")
    assert sent["source/-"] == sent["destination/-"] == len(payload) + 100_000
    failed = counter(registry, "istio_tcp_connections_failed_total")
    assert failed.get("destination/DENY") == 1.0 and failed.get("source/DENY") == 1.0
    records = [r.getMessage() for r in caplog.records if r.name == "ztunnel.access"]
    assert len(records) == 2 * 11 + 2  # one per connection per side, plus the denied pair


def test_outbound_to_inbound_over_hbone_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ztunnel.access")
    asyncio.run(asyncio.wait_for(scenario(caplog), 60))
