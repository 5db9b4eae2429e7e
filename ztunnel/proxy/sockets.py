"""Where ztunnel's sockets come from: one injectable factory, so proxy logic makes none.

In a node namespace the listeners are transparent (``IP_TRANSPARENT``: they accept
connections addressed to pod IPs) and inbound upstream connections bind the real
client address so the pod sees its caller. Both need ``CAP_NET_ADMIN``; a factory
with ``transparent=False`` (tests, unprivileged runs) makes plain sockets instead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ztunnel.proxy.hbone_io import HboneProtocol
from ztunnel.state.workload import IPAddress

log = logging.getLogger("ztunnel.sockets")

# From <linux/in.h>; the socket module does not name it on every build.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass(frozen=True)
class SocketFactory:
    """Makes listening and connecting sockets; ``transparent`` needs CAP_NET_ADMIN."""

    transparent: bool = False
    """Listen for any address and connect from foreign (client) addresses."""
    connect_timeout: float = 10.0
    """Seconds an upstream connect may take."""

    def listener(self, host: str, port: int, *, transparent: bool | None = None) -> socket.socket:
        """A bound, listening TCP socket (reuse-port, so worker processes can share it)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.transparent if transparent is None else transparent:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def connect(
        self,
        address: IPAddress,
        port: int,
        *,
        source: IPAddress | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to ``address:port``, from ``source`` when transparent (else the node's IP).

        With ``tls``, the TLS handshake completes before this returns (no SNI: peers are
        identified by SPIFFE URI, checked after the handshake).
        """
        sock = await self.connect_socket(address, port, source=source)
        return await self.streams(sock, tls=tls)

    async def connect_socket(
        self, address: IPAddress, port: int, *, source: IPAddress | None = None
    ) -> socket.socket:
        """A connected, non-blocking socket to ``address:port`` (no transport yet).

        The caller may write to it directly before :meth:`streams` hands it to the
        event loop (the inbound side sends a tunnel's early bytes that way).
        """
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        # Non-blocking from the start (no extra ioctl). The relay writes to the socket
        # itself (no transport sets TCP_NODELAY), and a small answer must not wait for
        # the pod's delayed ACK: Nagle is off here. IPPROTO_TCP (not 0) so that asyncio's
        # own loop also treats it as TCP when a transport takes it over.
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.transparent and source is not None and source.version == address.version:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                # The port is picked at connect() with the whole 4-tuple known, so ports
                # in TIME_WAIT towards other destinations are reused instead of making
                # bind() search the ephemeral range on every upstream connection.
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((str(source), 0))
            target = (str(address), port)
            if not _connect_now(sock, target):  # a local pod has usually answered already
                async with asyncio.timeout(self.connect_timeout):
                    await _connected(sock, target)
        except BaseException:
            sock.close()
            raise
        return sock

    async def streams(
        self, sock: socket.socket, *, tls: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams over a socket from :meth:`connect_socket` (after a client TLS handshake
        with ``tls``). The event loop owns the socket from here, also when this fails."""
        if tls is None:
            return await asyncio.open_connection(sock=sock)
        # TLS is HBONE here: its protocol hands received bytes straight to the channel.
        loop = asyncio.get_running_loop()
        protocol = HboneProtocol()
        transport, _ = await loop.create_connection(
            lambda: protocol,
            sock=sock,
            ssl=tls,
            server_hostname="",
            ssl_handshake_timeout=self.connect_timeout,
        )
        return protocol.reader, asyncio.StreamWriter(transport, protocol, protocol.reader, loop)

    async def accept_tls(
        self, conn: socket.socket, tls: ssl.SSLContext
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Run the server side of a TLS handshake on an accepted socket; streams once done.

        The context is chosen per connection (by the address the client reached), which
        is why the listener does not own one; the handshake starts before any byte is
        read into a plain stream, so nothing of the ClientHello can be lost.
        """
        loop = asyncio.get_running_loop()
        protocol = HboneProtocol()  # TLS is HBONE here: bytes go straight to the channel
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=self.connect_timeout
        )
        return protocol.reader, asyncio.StreamWriter(transport, protocol, protocol.reader, loop)


def _connect_now(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Start connecting a non-blocking socket to an IP address; whether it is connected.

    Not ``loop.sock_connect``: uvloop's resolves every address with ``getaddrinfo``
    in its thread pool first, even an IP literal, so each upstream connection
    waited for a thread handoff (milliseconds on a busy machine).

    ztunnel's upstreams are pods of its own node, behind a veth: the kernel usually
    completes the handshake while ``connect()`` itself runs (the SYN and the SYN-ACK
    are processed in the caller's softirq), though it still answers EINPROGRESS.
    Asking once more (``connect()`` again: 0 once established, EALREADY while the
    SYN is out, the error if refused) costs one system call where waiting for
    writability cost poller registrations, a loop iteration and an SO_ERROR read,
    and no timer is armed for a connect that is already done. A refusal is raised.
    """
    try:
        sock.connect(address)
        return True
    except BlockingIOError:
        pass  # EINPROGRESS
    error = sock.connect_ex(address)
    if error in (0, errno.EISCONN):
        return True
    if error not in (errno.EALREADY, errno.EINPROGRESS):
        raise OSError(error, f"connect to {address[0]}:{address[1]}: {os.strerror(error)}")
    return False


async def _connected(sock: socket.socket, address: tuple[str, int]) -> None:
    """Wait until a connect :func:`_connect_now` started is done; raise if it failed."""
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not connected.done():
            connected.set_result(None)

    fd = sock.fileno()
    loop.add_writer(fd, writable)
    try:
        await connected
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"connect to {address[0]}:{address[1]}: {os.strerror(error)}")


AcceptedHandler = Callable[[socket.socket], Coroutine[Any, Any, None]]

ACCEPT_BATCH = 32
"""Connections accepted per readiness event at most (then other work gets its turn)."""
ACCEPT_RETRY_S = 0.1
"""Pause after an accept failure such as EMFILE (the listener would stay readable)."""


async def accept_loop(listener: socket.socket, handler: AcceptedHandler) -> None:
    """Accept connections until cancelled, handing each raw socket to ``handler`` in its own
    task; the listener is closed at the end.

    Accepts run in the listener's readiness callback (no future and no task step per
    connection); each socket is non-blocking, with TCP_NODELAY (HBONE and tunnels carry
    small request/response exchanges: Nagle would hold a small write back until the
    peer's delayed ACK, tens of ms).
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    fd = listener.fileno()

    def ready() -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE, ENOBUFS...: back off, keep the listener
                log.warning("accepting on %s failed: %s", _name(listener), err)
                loop.remove_reader(fd)
                loop.call_later(ACCEPT_RETRY_S, _resume)
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                conn.close()  # reset before we got to it
                continue
            task = loop.create_task(handler(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def _resume() -> None:
        if listener.fileno() >= 0:
            loop.add_reader(fd, ready)

    loop.add_reader(fd, ready)
    try:
        await loop.create_future()  # until cancelled
    finally:
        loop.remove_reader(fd)
        listener.close()


def _name(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "a closed listener"
    return f"{host}:{port}"
