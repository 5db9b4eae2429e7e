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
from typing import Any

import pytest
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


async def _pair() -> tuple[HboneChannel, HboneChannel, HboneServer]:
    """A client and a server channel over a socket pair, and the server's core."""
    a, b = socket.socketpair()
    server_core = HboneServer()
    return await _channel(a, HboneClient()), await _channel(b, server_core), server_core


async def _close(
    client: HboneChannel, server: HboneChannel, tasks: list[asyncio.Task[None]]
) -> None:
    client.close()
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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
        client, server, server_core = await _pair()
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
        await _close(client, server, tasks)
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


class _Recorder:
    """A channel's transport that remembers every buffer it was given (HTTP/2 frames:
    no TLS here), passing everything on."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._inner = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._inner.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))
        self._inner.writelines(chunks)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


HEADERS, DATA = 0x1, 0x0


def _flagged_frames(write: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each HTTP/2 frame in one write."""
    frames, at = [], 0
    while at + 9 <= len(write):
        length = int.from_bytes(write[at : at + 3], "big")
        stream = int.from_bytes(write[at + 5 : at + 9], "big") & 0x7FFFFFFF
        frames.append((write[at + 3], write[at + 4], stream, write[at + 9 : at + 9 + length]))
        at += 9 + length
    return frames


def _frames(write: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of each HTTP/2 frame in one write."""
    return [(kind, stream, payload) for kind, _, stream, payload in _flagged_frames(write)]


def _first_write_with(
    recorder: _Recorder, kind: int, stream_id: int
) -> list[tuple[int, int, bytes]]:
    for write in recorder.writes:
        frames = _frames(write)
        if any(k == kind and s == stream_id for k, s, _ in frames):
            return frames
    raise AssertionError(f"no frame of type {kind} on stream {stream_id} was written")


def _hold(pod_answers: bool, hold: float) -> tuple[list[tuple[int, int, bytes]], float]:
    """A tunnel whose server side holds its first flush; the write carrying the 200, and
    how long the client waited for the 200."""
    result: list[tuple[list[tuple[int, int, bytes]], float]] = []

    async def scenario() -> None:
        async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            if pod_answers:
                writer.write(b"answer")
            await reader.read()  # until the tunnel ends
            writer.close()

        server_app = await asyncio.start_server(pod, "127.0.0.1", 0)
        pod_port = server_app.sockets[0].getsockname()[1]
        client, server, server_core = await _pair()
        recorder = _Recorder(server._transport)
        server._transport = recorder  # type: ignore[assignment]

        async def on_request(stream: TunnelStream, _request: TunnelRequest) -> None:
            await _until_queued(stream, len(b"request"))
            sock = socket.create_connection(("127.0.0.1", pod_port))
            sock.setblocking(False)
            assert stream.send_queued(sock) == len(b"request")
            server_core.respond(stream.stream_id, 200)
            try:
                await relay(stream, sock, hold_first_flush=hold)
            finally:
                sock.close()

        tasks = [asyncio.create_task(server.run(on_request)), asyncio.create_task(client.run())]
        await asyncio.sleep(0)
        stream = client.open_tunnel(TunnelRequest(Authority("127.0.0.1", pod_port)))
        started = asyncio.get_running_loop().time()
        await stream.write(b"request")
        assert (await asyncio.wait_for(stream.response, 5)).established
        waited = asyncio.get_running_loop().time() - started
        await stream.end()
        result.append((_first_write_with(recorder, HEADERS, stream.stream_id), waited))
        await _close(client, server, tasks)
        server_app.close()

    uvloop.run(scenario())
    return result[0]


def test_the_200_waits_for_a_quick_answer_and_leaves_with_it() -> None:
    frames, waited = _hold(pod_answers=True, hold=2.0)
    on_stream = [(kind, data) for kind, stream, data in frames if stream]
    assert [kind for kind, _ in on_stream] == [HEADERS, DATA]
    assert on_stream[1][1] == b"answer"
    assert waited < 1.5  # the answer ended the hold, not the timer


def test_the_200_leaves_alone_once_the_hold_is_over_if_the_pod_says_nothing() -> None:
    frames, waited = _hold(pod_answers=False, hold=0.05)
    assert [kind for kind, stream, _ in frames if stream] == [HEADERS]
    assert 0.04 <= waited < 2.0


def test_bytes_a_client_already_sent_leave_with_its_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """...and the client's socket is registered with the loop only after that write."""
    from ztunnel.proxy import hbone_io

    written: list[list[tuple[int, int, bytes]]] = []
    connect_written_at_registration: list[bool] = []
    register = hbone_io._SocketRelay.start_reading

    async def scenario() -> None:
        app, proxy_side = socket.socketpair()
        app.sendall(b"GET / HTTP/1.1\r\n\r\n")  # the client spoke before the proxy read
        proxy_side.setblocking(False)
        a, b = socket.socketpair()
        client = await _channel(a, HboneClient())
        recorder = _Recorder(client._transport)
        client._transport = recorder  # type: ignore[assignment]
        server = await _channel(b, HboneServer())
        tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
        await asyncio.sleep(0.05)  # the channels have exchanged their settings
        opened: list[TunnelStream] = []

        def start_reading(relayed: hbone_io._SocketRelay) -> None:
            if relayed.sock is proxy_side and not connect_written_at_registration:
                frames = [f for w in recorder.writes for f in _frames(w)]
                connect_written_at_registration.append(any(k == HEADERS for k, _, _ in frames))
            register(relayed)

        monkeypatch.setattr(hbone_io._SocketRelay, "start_reading", start_reading)

        async def proxy() -> None:
            # As the outbound handler does: the CONNECT is queued, then the relay starts
            # in the same step.
            opened.append(
                client.open_tunnel(TunnelRequest(Authority("127.0.0.1", 80)), flush=False)
            )
            await relay(opened[0], proxy_side, on_response=lambda _: None)

        relaying = asyncio.create_task(proxy())
        await asyncio.sleep(0)
        stream = opened[0]
        for _ in range(200):
            if any(k == HEADERS for w in recorder.writes for k, _, _ in _frames(w)):
                break
            await asyncio.sleep(0.005)
        written.append(_first_write_with(recorder, HEADERS, stream.stream_id))
        await _close(client, server, [*tasks, relaying])
        app.close()
        proxy_side.close()

    uvloop.run(scenario())
    on_stream = [(kind, data) for kind, stream, data in written[0] if stream]
    assert [kind for kind, _ in on_stream] == [HEADERS, DATA]
    assert on_stream[1][1] == b"GET / HTTP/1.1\r\n\r\n"
    assert connect_written_at_registration == [True]


class _CountingSocket(socket.socket):
    """A socket that counts its reads and the writes the kernel refused (EAGAIN)."""

    recvs = 0
    refused = 0
    retried = 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.recvs += 1
        return super().recv(size, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except BlockingIOError:
            self.refused += 1
            raise

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        try:
            return super().sendmsg(buffers, *args)
        except BlockingIOError:
            self.refused += 1
            self.retried += 1  # a backlog sent to a socket that had no room
            raise


def test_a_full_socket_is_waited_for_not_retried() -> None:
    # A pod that reads nothing for 0.2 s behind 16 KiB buffers, and 2.5 MiB arriving
    # through the tunnel meanwhile: after a write meets the full socket, the relay waits
    # for it to drain instead of trying again as each further chunk arrives.
    block = bytes(range(256)) * 64
    payload = b"".join(block[i:] + block[:i] for i in range(160))
    received: list[bytes] = []
    counted: list[_CountingSocket] = []

    async def scenario() -> None:
        pod, pod_port = await _pod(received, rcvbuf=16 * 1024)
        client, server, server_core = await _pair()
        done = asyncio.Event()

        async def on_request(stream: TunnelStream, _request: TunnelRequest) -> None:
            server_core.respond(stream.stream_id, 200)
            sock = _CountingSocket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
            sock.connect(("127.0.0.1", pod_port))
            sock.setblocking(False)
            counted.append(sock)
            await relay(stream, sock)
            sock.close()
            done.set()

        tasks = [asyncio.create_task(server.run(on_request)), asyncio.create_task(client.run())]
        await asyncio.sleep(0)
        stream = client.open_tunnel(TunnelRequest(Authority("127.0.0.1", pod_port)))
        assert (await stream.response).established
        for start in range(0, len(payload), len(block)):
            await stream.write(payload[start : start + len(block)])
        await stream.end()
        await asyncio.wait_for(done.wait(), 20)
        await _close(client, server, tasks)
        pod.close()

    uvloop.run(scenario())
    assert received == [payload]
    assert counted[0].retried == 0, (counted[0].refused, counted[0].retried)


def test_a_bulk_sender_is_read_several_times_per_event() -> None:
    from ztunnel.proxy.hbone_io import READ_SIZE, READS_PER_EVENT, Transfer, _SocketRelay

    size = 3 * READ_SIZE + 100  # three full reads, then a short one
    forwarded: list[int] = []
    recvs: list[int] = []

    async def scenario() -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sender = socket.create_connection(listener.getsockname())
        fd, _ = listener._accept()  # type: ignore[attr-defined]
        sock = _CountingSocket(fileno=fd)
        sock.setblocking(False)
        sender.sendall(bytes(size))
        for _ in range(200):  # until the kernel holds it all on the receiving side
            if len(sock.recv(size + 1, socket.MSG_PEEK)) == size:
                break
            await asyncio.sleep(0.01)
        sock.recvs = 0
        a, b = socket.socketpair()
        client = await _channel(a, HboneClient())
        server = await _channel(b, HboneServer())
        tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
        await asyncio.sleep(0.05)
        # The channel's transport takes it all (nothing here reads the other end yet).
        client._transport.set_write_buffer_limits(high=16 * MiB)
        stream = client.open_tunnel(TunnelRequest(Authority("127.0.0.1", 80)))
        counts = Transfer()
        relayed = _SocketRelay(stream, sock, counts)
        relayed.read_now()  # one readable event's worth (before the socket is registered)
        forwarded.append(counts.forward)
        recvs.append(sock.recvs)
        relayed.stop()
        await _close(client, server, tasks)
        for s in (sender, sock, listener):
            s.close()

    uvloop.run(scenario())
    assert READS_PER_EVENT >= 4
    assert forwarded == [size]
    assert recvs == [4]


END_STREAM = 0x1


def _ends(write: bytes) -> list[int]:
    """The streams a write half-closes (frames flagged END_STREAM)."""
    return [
        stream
        for kind, flags, stream, _ in _flagged_frames(write)
        if kind in (HEADERS, DATA) and flags & END_STREAM
    ]


def _end_then(open_next: bool) -> tuple[list[bytes], int, int, bytes]:
    """Tunnel 1 half-closes with ``end_nowait``; with ``open_next`` tunnel 3 opens and
    sends in the same loop turn. The client's writes from then on, both stream ids, and
    what the server read from tunnel 1 to its end."""
    result: list[tuple[list[bytes], int, int, bytes]] = []

    async def scenario() -> None:
        client, server, _ = await _pair()
        recorder = _Recorder(client._transport)
        client._transport = recorder  # type: ignore[assignment]
        read: list[bytes] = []
        server_done = asyncio.Event()

        async def on_request(stream: TunnelStream, request: TunnelRequest) -> None:
            if request.authority.port == 1:
                chunks = []
                while chunk := await stream.read():
                    chunks.append(bytes(chunk))
                read.append(b"".join(chunks))
                server_done.set()

        tasks = [asyncio.create_task(server.run(on_request)), asyncio.create_task(client.run())]
        await asyncio.sleep(0.05)  # the channels have exchanged their settings
        first = client.open_tunnel(TunnelRequest(Authority("127.0.0.1", 1)))
        first.send_nowait(b"first")
        await asyncio.sleep(0.05)
        before = len(recorder.writes)
        first.end_nowait()  # queued: nothing is written yet
        assert len(recorder.writes) == before
        second_id = 0
        if open_next:
            second = client.open_tunnel(TunnelRequest(Authority("127.0.0.1", 2)), flush=False)
            second.send_nowait(b"second")  # a flush: the end goes along
            second_id = second.stream_id
        await asyncio.wait_for(server_done.wait(), 5)  # a lone end leaves too
        result.append((recorder.writes[before:], first.stream_id, second_id, read[0]))
        await _close(client, server, tasks)

    uvloop.run(scenario())
    return result[0]


def test_a_tunnels_end_leaves_with_the_next_flush_on_its_connection() -> None:
    writes, first, second, read = _end_then(open_next=True)
    assert read == b"first"
    # One write: the first tunnel's END_STREAM, the second tunnel's HEADERS and data.
    together = writes[0]
    assert _ends(together) == [first]
    assert [(kind, stream) for kind, stream, _ in _frames(together) if stream == second] == [
        (HEADERS, second),
        (DATA, second),
    ]
    assert not any(first in _ends(write) for write in writes[1:])  # sent once


def test_a_tunnels_end_with_nothing_else_to_send_still_leaves_in_the_same_turn() -> None:
    writes, first, _, read = _end_then(open_next=False)
    assert read == b"first"  # the server saw the end: the read returned b""
    assert [_ends(write) for write in writes] == [[first]]
