"""The socket facts ztunnel's connection path relies on, under asyncio's loop and uvloop.

- The loops' TCP transports disable Nagle themselves, on accepted sockets and on
  sockets handed over after ``connect()``: the proxy no longer sets TCP_NODELAY
  again per connection (a small response or half-close must not wait for an ACK).
- ``SocketFactory.connect`` returns at once when the kernel completed the handshake
  inside ``connect()`` (a local listener), waits when the SYN is still unanswered,
  and reports a refused connection as an ``OSError`` naming the address.

Loopback sockets only (127.0.0.1), no privileges needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import ip_address
from typing import Any

import pytest
import uvloop

from ztunnel.proxy.sockets import SocketFactory

LOCAL = ip_address("127.0.0.1")

LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def _nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@contextlib.contextmanager
def _listener(backlog: int = 16) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    try:
        yield sock
    finally:
        sock.close()


def _record_polled(polled: list[int]) -> None:
    """Note every socket the running loop is asked to watch for writability."""
    loop = asyncio.get_running_loop()
    original = loop.add_writer

    def add_writer(fd: int, callback: Callable[..., object], *args: object) -> None:
        polled.append(fd)
        original(fd, callback, *args)

    loop.add_writer = add_writer  # type: ignore[method-assign,assignment]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_the_loops_transports_disable_nagle_on_accepted_and_connected_sockets(
    loop_name: str,
) -> None:
    seen: dict[str, bool] = {}

    async def scenario() -> None:
        accepted = asyncio.Event()

        async def on_client(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen["accepted"] = _nodelay(writer.get_extra_info("socket"))
            accepted.set()
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            # As SocketFactory.connect hands a connected socket to the loop.
            reader, writer = await SocketFactory().connect(LOCAL, port)
            seen["connected"] = _nodelay(writer.get_extra_info("socket"))
            await asyncio.wait_for(accepted.wait(), 5)
            assert await reader.read() == b""
            writer.close()

    LOOPS[loop_name](scenario())
    assert seen == {"accepted": True, "connected": True}


def test_connect_to_a_local_listener_completes_without_waiting_for_the_loop() -> None:
    with _listener() as server:
        port = server.getsockname()[1]
        polled: list[int] = []

        async def scenario() -> None:
            _record_polled(polled)
            for _ in range(20):
                _reader, writer = await SocketFactory().connect(LOCAL, port)
                writer.close()
                server.accept()[0].close()

        uvloop.run(scenario())
    # The handshake completed inside connect(): no socket was handed to the poller.
    assert polled == []


def test_connect_waits_while_the_syn_is_unanswered_then_completes() -> None:
    # A listener whose accept queue is full drops the SYN; the client retransmits it
    # (after about a second), and gets in once the queue has room again.
    polled: list[int] = []
    with _listener(backlog=0) as server:
        port = server.getsockname()[1]
        filler = socket.socket()  # one connection, not accepted, fills a backlog of 0
        try:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            time.sleep(0.1)

            async def scenario() -> float:
                async def make_room() -> None:
                    # Accept what is queued, from 0.3 s on, until the connect is done.
                    await asyncio.sleep(0.3)
                    server.setblocking(False)
                    while True:
                        with contextlib.suppress(BlockingIOError):
                            while True:
                                server.accept()[0].close()
                        await asyncio.sleep(0.05)

                _record_polled(polled)
                started = time.monotonic()
                room = asyncio.create_task(make_room())
                try:
                    _reader, writer = await SocketFactory(connect_timeout=10).connect(LOCAL, port)
                finally:
                    room.cancel()
                writer.close()
                return time.monotonic() - started

            waited = uvloop.run(scenario())
        finally:
            filler.close()
    # It did wait, on the poller (the SYN was dropped at first), and connected in the end.
    assert waited > 0.25
    assert len(polled) == 1


def test_a_refused_connect_is_an_oserror_naming_the_address() -> None:
    with _listener() as server:
        port = server.getsockname()[1]
    # The port is closed now: the kernel answers the SYN with a reset.

    async def scenario() -> None:
        await SocketFactory().connect(LOCAL, port)

    with pytest.raises(OSError, match=f"127.0.0.1:{port}") as raised:
        uvloop.run(scenario())
    assert raised.value.errno == errno.ECONNREFUSED
