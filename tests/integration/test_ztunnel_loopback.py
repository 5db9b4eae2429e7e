"""ztunnel's asyncio shell end to end on loopback (no root): outbound -> HBONE -> inbound.

Workload "pods" are 127.0.0.x addresses; the outbound listener's own address stands
for a service VIP (no capture here), the HBONE listener sits on the server pod's
address, and the upstream is an echo server on the same address.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ztunnel.config import ZtunnelConfig
from ztunnel.identity.certs import LocalCA
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.store import IdentityStore, local_issuer
from ztunnel.identity.tls import client_context
from ztunnel.metrics import TcpMetrics, new_registry, render
from ztunnel.proxy.connector import HboneConnector
from ztunnel.proxy.hbone import HboneSettings
from ztunnel.proxy.pool import ConnectionPool
from ztunnel.proxy.proxy import Proxy
from ztunnel.proxy.sockets import SocketFactory, accept_loop
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


class Mesh:
    """Two loopback "pods" with a ztunnel's listeners in front of them."""

    def __init__(
        self,
        ttl: dt.timedelta = dt.timedelta(hours=24),
        app: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] = echo,
    ) -> None:
        self.ttl = ttl
        self.app = app

    async def __aenter__(self) -> Mesh:
        factory = SocketFactory(transparent=False, connect_timeout=5.0)
        hbone_sock = factory.listener(SERVER, 0)
        outbound_sock = factory.listener(VIP, 0)
        self.hbone_port = hbone_sock.getsockname()[1]
        self.vip_port = outbound_sock.getsockname()[1]
        self.echo_server = await asyncio.start_server(self.app, SERVER, 0)
        echo_port = self.echo_server.sockets[0].getsockname()[1]
        self.echo_port = echo_port
        self.state = parse_state(
            yaml.safe_load(state_yaml(echo_port, self.vip_port))
        ).to_proxy_state()
        # No node name: this one process plays both ztunnels, so the same-node short cut
        # (which would skip HBONE) must not apply.
        config = ZtunnelConfig(
            node_name="", hbone_port=self.hbone_port, workers=1, access_log_format="json"
        )
        self.ca = LocalCA.create(dt.datetime.now(dt.UTC))
        issuer = local_issuer(self.ca, ttl=self.ttl, backdate=dt.timedelta(0))
        self.identities = IdentityStore(self.ca.root_pem, issuer)
        self.identities.track(w.identity for w in self.state.workloads.values())
        await self.identities.refresh_due()
        assert self.identities.ready()
        self.registry = new_registry()
        self.connector = HboneConnector(
            self.identities, factory, ConnectionPool(max_streams=100), HboneSettings()
        )
        proxy = Proxy(
            config,
            state=lambda: self.state,
            identities=self.identities,
            metrics=TcpMetrics(self.registry),
            sockets=factory,
            connector=self.connector,
            rng=random.Random(1),
        )
        self.hbone_server = asyncio.create_task(accept_loop(hbone_sock, proxy.handle_hbone))
        self.outbound_server = asyncio.create_task(
            accept_loop(outbound_sock, proxy.handle_outbound)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.outbound_server.cancel()
        self.hbone_server.cancel()
        self.echo_server.close()
        await self.connector.close()


async def scenario(caplog: pytest.LogCaptureFixture) -> None:
    async with Mesh() as mesh:
        vip_port = mesh.vip_port
        payload = random.Random(2).randbytes(3 * 1024 * 1024)
        assert await talk(CLIENT, vip_port, payload) == payload
        # Ten more, concurrently, share the one pooled HBONE connection.
        small = [bytes([i]) * 10_000 for i in range(10)]
        answers = await asyncio.gather(*(talk(CLIENT, vip_port, p) for p in small))
        assert answers == small
        assert len(mesh.connector.pool) == 1
        # "other" is not allowed by policy: the destination answers 401 and the
        # source ztunnel resets the client's connection.
        assert await talk(OTHER, vip_port, b"let me in") == b""
        await asyncio.sleep(0.1)
    registry = mesh.registry
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


async def handshake_with(mesh: Mesh, context: ssl.SSLContext) -> bool:
    """Connect to the HBONE listener with ``context``; whether TLS completed and h2 works."""
    try:
        reader, writer = await asyncio.open_connection(
            SERVER, mesh.hbone_port, ssl=context, server_hostname=None, ssl_handshake_timeout=5
        )
    except (ssl.SSLError, ConnectionError):
        return False
    try:
        # TLS 1.3: a refused client certificate shows up on the first read.
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = await asyncio.wait_for(reader.read(100), 5)
        return bool(data)
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        writer.close()


async def bad_peers() -> None:
    async with Mesh() as mesh:
        now = dt.datetime.now(dt.UTC)
        client_id = SpiffeId("cluster.local", "demo", "client")
        good = client_context(mesh.ca.issue(client_id, now), mesh.ca.root_pem)
        assert await handshake_with(mesh, good)
        stranger = LocalCA.create(now)
        foreign_root = client_context(stranger.issue(client_id, now), mesh.ca.root_pem)
        assert not await handshake_with(mesh, foreign_root)
        other_domain = SpiffeId("evil.example", "demo", "client")
        wrong_td = client_context(mesh.ca.issue(other_domain, now), mesh.ca.root_pem)
        assert not await handshake_with(mesh, wrong_td)
        await asyncio.sleep(0.1)
    failed = counter(mesh.registry, "istio_tcp_connections_failed_total")
    assert failed == {"destination/TLS_FAILURE": 1.0, "destination/IDENTITY_ERROR": 1.0}


def test_foreign_root_and_trust_domain_are_refused_and_counted() -> None:
    asyncio.run(asyncio.wait_for(bad_peers(), 60))


async def hostile(mesh: Mesh, rng: random.Random, kind: int, good: ssl.SSLContext) -> None:
    """One hostile connection to 15008: garbage, a truncated TLS record, or bad HTTP/2."""
    if kind == 1:
        reader, writer = await asyncio.open_connection(
            SERVER, mesh.hbone_port, ssl=good, server_hostname=None, ssl_handshake_timeout=5
        )
        junk = rng.randbytes(rng.randint(1, 400))
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + junk[: rng.randint(0, len(junk))])
    else:
        reader, writer = await asyncio.open_connection(SERVER, mesh.hbone_port)
        if kind == 0:
            writer.write(rng.randbytes(rng.randint(1, 2000)))
        else:  # a TLS handshake record header promising more than is sent
            writer.write(b"\x16\x03\x01\x02\x00" + rng.randbytes(rng.randint(0, 100)))
    try:
        await asyncio.wait_for(reader.read(65536), 0.2)
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def fuzz() -> None:
    async with Mesh() as mesh:
        rng = random.Random(7)
        now = dt.datetime.now(dt.UTC)
        good = client_context(
            mesh.ca.issue(SpiffeId("cluster.local", "demo", "client"), now), mesh.ca.root_pem
        )
        # A tunnel that lives through the whole fuzz run must be unaffected by it.
        long_lived = asyncio.create_task(talk(CLIENT, mesh.vip_port, b"x" * 5_000_000))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4.0
        count = 0
        while loop.time() < deadline and count < 150:
            await asyncio.gather(*(hostile(mesh, rng, (count + i) % 3, good) for i in range(5)))
            count += 5
        assert await long_lived == b"x" * 5_000_000
        payload = rng.randbytes(100_000)
        assert await talk(CLIENT, mesh.vip_port, payload) == payload
        assert count >= 30


def test_hostile_input_on_15008_leaves_other_connections_alone() -> None:
    asyncio.run(asyncio.wait_for(fuzz(), 60))


async def slow_talk(port: int, chunks: int, pause: float) -> bytes:
    """One connection that sends a chunk every ``pause`` seconds and reads the echo."""
    sock = socket.socket()
    sock.bind((CLIENT, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (VIP, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    received = bytearray()
    for i in range(chunks):
        writer.write(bytes([i]) * 1000)
        await writer.drain()
        received += await reader.readexactly(1000)
        await asyncio.sleep(pause)
    writer.close()
    return bytes(received)


async def rotation() -> None:
    client = SpiffeId("cluster.local", "demo", "client")
    async with Mesh(ttl=dt.timedelta(seconds=3)) as mesh:
        refresher = asyncio.create_task(mesh.identities.run())
        try:
            first = mesh.identities.certificate(client)
            context = mesh.identities.context(client, server=False)
            # A tunnel that outlives its certificate's half-life and its expiry.
            long_lived = asyncio.create_task(slow_talk(mesh.vip_port, 16, 0.25))
            await asyncio.sleep(2.0)
            renewed = mesh.identities.certificate(client)
            assert renewed.serial != first.serial and renewed.not_before > first.not_before
            assert mesh.identities.context(client, server=False) is not context
            assert await long_lived == b"".join(bytes([i]) * 1000 for i in range(16))
            # New connections keep working on the renewed certificates.
            assert await talk(CLIENT, mesh.vip_port, b"after rotation") == b"after rotation"
        finally:
            refresher.cancel()


def test_rotation_at_half_life_drops_no_connection() -> None:
    asyncio.run(asyncio.wait_for(rotation(), 60))


async def churn() -> None:
    async with Mesh() as mesh:
        assert await talk(CLIENT, mesh.vip_port, b"warm") == b"warm"
        await asyncio.sleep(0.1)
        fds_before = len(os.listdir("/proc/self/fd"))
        tasks_before = len(asyncio.all_tasks())
        for _ in range(50):
            batch = await asyncio.gather(
                *(talk(CLIENT, mesh.vip_port, b"x" * 100) for _ in range(20))
            )
            assert batch == [b"x" * 100] * 20
        await asyncio.sleep(0.3)
        # 1,000 tunnels later: one pooled connection, no stream or socket left behind.
        assert len(mesh.connector.pool) == 1
        (conn,) = mesh.connector.pool.connections()
        assert conn.streams == 0
        channel = mesh.connector._channels[conn.id].result()
        assert channel.streams == {}
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
        assert len(asyncio.all_tasks()) <= tasks_before + 2


def test_a_thousand_short_connections_leave_nothing_behind() -> None:
    asyncio.run(asyncio.wait_for(churn(), 120))


async def reset_at_the_end() -> None:
    async with Mesh() as mesh:
        payload = random.Random(3).randbytes(300_000)
        sock = socket.socket()
        sock.bind((CLIENT, 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (VIP, mesh.vip_port))
        await loop.sock_sendall(sock, payload)
        echoed = bytearray()
        while len(echoed) < len(payload):
            echoed += await loop.sock_recv(sock, 65536)
        assert echoed == payload
        # End as wrk and iperf3 do: a reset instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        for _ in range(50):
            await asyncio.sleep(0.05)
            if counter(mesh.registry, "istio_tcp_connections_closed_total").get("destination/-"):
                break
    for name in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"):
        counted = counter(mesh.registry, name)
        assert counted == {"source/-": len(payload), "destination/-": len(payload)}, name
    # A tunnel that was up and then reset is closed, not failed.
    assert counter(mesh.registry, "istio_tcp_connections_failed_total") == {}
    assert counter(mesh.registry, "istio_tcp_connections_closed_total") == {
        "source/-": 1.0,
        "destination/-": 1.0,
    }


def test_a_client_reset_keeps_the_byte_counts() -> None:
    # wrk and iperf3 end their connections with a reset: the bytes they moved count.
    asyncio.run(asyncio.wait_for(reset_at_the_end(), 30))


async def refused_early_bytes() -> None:
    seen: list[str] = []

    async def recording_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername")[0])
        await echo(reader, writer)

    async with Mesh() as mesh:
        mesh.echo_server.close()
        await mesh.echo_server.wait_closed()
        mesh.echo_server = await asyncio.start_server(recording_echo, SERVER, mesh.echo_port)
        assert await talk(CLIENT, mesh.vip_port, b"warm up") == b"warm up"
        # The source sends a caller's first bytes with the CONNECT, before the answer:
        # a denied caller's bytes reach no upstream, and the pooled connections go on
        # carrying tunnels.
        blob = bytes(6 * 1024 * 1024)
        for _ in range(5):
            assert await talk(OTHER, mesh.vip_port, blob) == b""
        payload = random.Random(5).randbytes(2 * 1024 * 1024)
        assert await asyncio.wait_for(talk(CLIENT, mesh.vip_port, payload), 15) == payload
        assert len(mesh.connector.pool) == 2  # one per source identity
        await asyncio.sleep(0.1)
    assert len(seen) == 2  # the warm-up and the payload; never the denied caller
    opened = counter(mesh.registry, "istio_tcp_connections_opened_total")
    assert opened == {"source/-": 2.0, "destination/-": 2.0}
    failed = counter(mesh.registry, "istio_tcp_connections_failed_total")
    assert failed == {"source/DENY": 5.0, "destination/DENY": 5.0}


def test_early_bytes_of_a_refused_tunnel_reach_nobody() -> None:
    asyncio.run(asyncio.wait_for(refused_early_bytes(), 60))


BANNER = b"220 server.demo ready\r\n"


async def banner_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that speaks first (SMTP-like), then echoes."""
    writer.write(BANNER)
    await writer.drain()
    await echo(reader, writer)


async def server_speaks_first() -> None:
    async with Mesh(app=banner_then_echo) as mesh:
        for _ in range(20):
            sock = socket.socket()
            sock.bind((CLIENT, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (VIP, mesh.vip_port))
            reader, writer = await asyncio.open_connection(sock=sock)
            # Nothing sent yet: the banner must come through the tunnel on its own (the
            # 200 and the banner often leave the destination in one record).
            assert await asyncio.wait_for(reader.readexactly(len(BANNER)), 5) == BANNER
            writer.write(b"HELO client\r\n")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"HELO client\r\n"
            writer.close()
        await asyncio.sleep(0.2)
    opened = counter(mesh.registry, "istio_tcp_connections_opened_total")
    assert opened == {"source/-": 20.0, "destination/-": 20.0}
    received = counter(mesh.registry, "istio_tcp_received_bytes_total")
    sent = counter(mesh.registry, "istio_tcp_sent_bytes_total")
    to_client = 20.0 * (len(BANNER) + 13)
    assert received == {"source/-": 20.0 * 13, "destination/-": 20.0 * 13}
    assert sent == {"source/-": to_client, "destination/-": to_client}


def test_a_server_that_speaks_first_is_heard_through_the_tunnel() -> None:
    asyncio.run(asyncio.wait_for(server_speaks_first(), 60))
