"""HBONE peers for waypoint tests: pod servers and a client built from ztunnel's own HBONE
code, and an asyncio loop living in a test's network namespace.

Shared by ``test_waypoint_envoy_hbone.py`` (static resources) and
``test_waypoint_envoy_live.py`` (over the control plane's ADS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import os
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ztunnel.errors import HboneStreamError
from ztunnel.identity.certs import CertifiedKey, LocalCA
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.tls import client_context, peer_identity, server_context, verify_peer
from ztunnel.proxy.hbone import Authority, HboneClient, HboneServer, TunnelRequest
from ztunnel.proxy.hbone_io import HboneChannel, TunnelStream

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@dataclass
class Seen:
    """What the pods' HBONE servers saw."""

    peers: set[str] = field(default_factory=set)
    authorities: set[str] = field(default_factory=set)


class NetnsLoop:
    """An asyncio loop on a thread that lives in the test's network namespace."""

    def __init__(self, netns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(netns,), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _main(self, netns: str) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
        except BaseException as err:
            self._error = err
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def netns_with(name: str, addresses: tuple[str, ...]) -> Iterator[str]:
    """A new network namespace ``name`` whose loopback holds ``addresses`` (/32 each);
    deleted, by name, afterwards."""
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for address in addresses:
            ip("-n", name, "addr", "add", f"{address}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def issue(ca: LocalCA, identity: SpiffeId) -> CertifiedKey:
    return ca.issue(identity, dt.datetime.now(dt.UTC))


async def _http_server(stream: TunnelStream, body: bytes) -> None:
    """HTTP/1.1 with keep-alive over one tunnel: answers every request with ``body``."""
    buffered = b""
    while True:
        data = bytes(await stream.read())
        if not data:
            await stream.end()
            return
        buffered += data
        while b"\r\n\r\n" in buffered:
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            echo = b"" if b"x-echo-header" not in head.lower() else head
            payload = body + echo
            await stream.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                + f"content-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )


async def _echo(stream: TunnelStream) -> None:
    while data := bytes(await stream.read()):
        await stream.write(data)
    await stream.end()


async def start_pod(
    address: str,
    cert: CertifiedKey,
    roots: bytes,
    seen: Seen,
    *,
    waypoint: SpiffeId,
    answer: str,
    echo: bool = False,
) -> asyncio.Server:
    """A pod's HBONE server on ``address``:15008: it accepts tunnels from ``waypoint``
    to its own address only (else 401), and answers HTTP/1.1 with ``answer`` (or echoes
    bytes back)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_identity(writer.get_extra_info("ssl_object"))
        seen.peers.add(str(peer))
        channel = HboneChannel(HboneServer(), reader, writer)

        async def on_request(stream: TunnelStream, request: TunnelRequest) -> None:
            seen.authorities.add(str(request.authority))
            core = channel.core
            assert isinstance(core, HboneServer)
            if peer != waypoint or request.authority.host != address:
                core.respond(stream.stream_id, 401)
                channel.flush()
                return
            core.respond(stream.stream_id, 200)
            channel.flush()
            with contextlib.suppress(HboneStreamError):  # the client went away
                if echo:
                    await _echo(stream)
                else:
                    await _http_server(stream, answer.encode())

        await channel.run(on_request)

    return await asyncio.start_server(
        handle, address, 15008, ssl=server_context(cert, roots), reuse_port=True
    )


@dataclass
class Tunnel:
    stream: TunnelStream
    channel: HboneChannel
    task: asyncio.Task[None]


async def open_tunnel(
    waypoint: tuple[str, SpiffeId],
    cert: CertifiedKey,
    roots: bytes,
    authority: Authority,
    status: int = 200,
) -> Tunnel:
    """A tunnel through the waypoint at ``(ip, identity)``, as a source ztunnel opens it;
    asserts the CONNECT's answer is ``status``."""
    reader, writer = await asyncio.open_connection(
        waypoint[0], 15008, ssl=client_context(cert, roots)
    )
    verify_peer(writer.get_extra_info("ssl_object"), expected={waypoint[1]})
    channel = HboneChannel(HboneClient(), reader, writer)
    task = asyncio.get_running_loop().create_task(channel.run())
    await asyncio.sleep(0)  # the channel sends the HTTP/2 preface first
    stream = channel.open_tunnel(TunnelRequest(authority, forwarded_for="10.1.0.50:40000"))
    response = await asyncio.wait_for(stream.response, 5)
    assert response.status == status, response
    return Tunnel(stream, channel, task)


async def request(
    tunnel: Tunnel, headers: str = "", method: str = "GET", host: str = "backend"
) -> tuple[str, str]:
    """One request on the tunnel (no body); the status line and body."""
    request = f"{method} / HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n{headers}\r\n"
    await tunnel.stream.write(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
    return head.split(b"\r\n")[0].decode(), body.decode()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
