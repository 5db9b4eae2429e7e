"""A tunnel's early bytes written straight to a fresh upstream socket (``send_queued``).

Two real HBONE channels (h2 cores, the channel's protocol-driven transport) over a
loopback TCP connection, as the proxy runs them, without TLS (it is not what is
tested here). The client sends its bytes right after the CONNECT; the server side,
like ztunnel's inbound handler, connects to a "pod" listener, writes what is queued
with one ``sendmsg`` before the relay starts, then relays the rest from the socket's
readiness callbacks (``relay``: no transport, what a full socket does not take waits
for the next writable event).
Loopback sockets only, no privileges needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Awaitable, Callable

import uvloop

from ztunnel.proxy.hbone import Authority, HboneClient, HboneServer, TunnelRequest
from ztunnel.proxy.hbone_io import HboneChannel, HboneProtocol, TunnelStream, relay

MiB = 1024 * 1024


async def _channel(sock: socket.socket, core: HboneClient | HboneServer) -> HboneChannel:
    loop = asyncio.get_running_loop()
    protocol = HboneProtocol()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    writer = asyncio.StreamWriter(transport, protocol, protocol.reader, loop)
    return HboneChannel(core, protocol.reader, writer)


async def _pod(received: list[bytes], *, rcvbuf: int) -> tuple[asyncio.Server, int]:
    """A listener that reads everything, slowly at first (its small buffer fills)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # let the sender meet a full socket first
        received.append(await reader.read())
        writer.close()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(serve, sock=listener)
    return server, listener.getsockname()[1]


def _run(
    payload: bytes,
    *,
    piece: int,
    rcvbuf: int,
    sndbuf: int,
    on_queued: Callable[[TunnelStream, int], Awaitable[None]],
) -> tuple[list[bytes], list[int]]:
    received: list[bytes] = []
    sent_early: list[int] = []

    async def scenario() -> None:
        pod, pod_port = await _pod(received, rcvbuf=rcvbuf)
        a, b = socket.socketpair()
        client = await _channel(a, HboneClient())
        server_core = HboneServer()
        server = await _channel(b, server_core)
        done = asyncio.Event()

        async def on_request(stream: TunnelStream, _request: TunnelRequest) -> None:
            server_core.respond(stream.stream_id, 200)
            await on_queued(stream, len(payload))
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            sock.connect(("127.0.0.1", pod_port))
            sock.setblocking(False)
            sent_early.append(stream.send_queued(sock))
            await relay(stream, sock)
            sock.close()
            done.set()

        tasks = [asyncio.create_task(server.run(on_request)), asyncio.create_task(client.run())]
        await asyncio.sleep(0)  # both channels start (the client's preface goes first)
        stream = client.open_tunnel(TunnelRequest(Authority("127.0.0.1", pod_port)))
        for start in range(0, len(payload), piece):  # early: the answer is not awaited
            await stream.write(payload[start : start + piece])
        await stream.end()
        assert (await stream.response).established
        await asyncio.wait_for(done.wait(), 20)
        client.close()
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pod.close()

    uvloop.run(scenario())
    return received, sent_early


async def _until_queued(stream: TunnelStream, size: int) -> None:
    """Wait until all ``size`` early bytes are queued on the stream (no socket yet)."""
    for _ in range(2000):
        if sum(len(data) for data, _ in stream._chunks) >= size:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the early bytes never arrived")


def test_queued_early_bytes_go_to_the_socket_at_once_in_order() -> None:
    payload = hashlib.sha256(b"early").digest() * 512  # 16 KiB
    received, sent_early = _run(
        payload, piece=len(payload), rcvbuf=256 * 1024, sndbuf=256 * 1024, on_queued=_until_queued
    )
    assert sent_early == [len(payload)]  # all of it, in one sendmsg, before the relay
    assert received == [payload]


def test_what_the_socket_does_not_take_stays_queued_and_follows_in_order() -> None:
    # More than the socket's small buffers take at once, in more buffers (160 DATA
    # frames) than one sendmsg carries: the rest, a partial chunk first, goes through
    # the relay.
    block = bytes(range(256)) * 64  # 16 KiB
    payload = b"".join(block[i:] + block[:i] for i in range(160))  # 2.5 MiB, no period
    received, sent_early = _run(
        payload, piece=len(block), rcvbuf=16 * 1024, sndbuf=16 * 1024, on_queued=_until_queued
    )
    assert 0 < sent_early[0] < len(payload)
    assert received == [payload]
