"""Outbound HBONE: pooled, mutually authenticated HTTP/2 connections, and tunnels on them.

The decisions (which connection, when to dial, when to close) are the pure
:class:`~ztunnel.proxy.pool.ConnectionPool`; this module dials, runs the channels
and tells the pool what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ztunnel.errors import HboneError, IdentityError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.store import IdentityStore
from ztunnel.identity.tls import negotiated_h2, verify_peer
from ztunnel.proxy.hbone import HboneClient, HboneSettings, TunnelResponse
from ztunnel.proxy.hbone_io import HboneChannel, TunnelStream
from ztunnel.proxy.outbound import Tunnel
from ztunnel.proxy.pool import ConnectionPool, PoolKey
from ztunnel.proxy.sockets import SocketFactory


class TunnelRefusedError(HboneError):
    """The peer answered the CONNECT with a non-2xx status."""

    def __init__(self, status: int) -> None:
        super().__init__(
            f"the destination's ztunnel answered {status}",
            error_code=0,
            hint="401: denied by policy there; 503: its upstream was unreachable",
        )
        self.status = status


def require_established(response: TunnelResponse) -> None:
    """Raise :class:`TunnelRefusedError` unless the peer's answer opened the tunnel."""
    if not response.established:
        raise TunnelRefusedError(response.status)


class HboneConnector:
    """Opens tunnels over pooled HBONE connections."""

    def __init__(
        self,
        identities: IdentityStore,
        sockets: SocketFactory,
        pool: ConnectionPool,
        settings: HboneSettings,
        *,
        response_timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identities = identities
        self.sockets = sockets
        self.pool = pool
        self.settings = settings
        self.response_timeout = response_timeout
        self._monotonic = monotonic
        self._channels: dict[int, asyncio.Future[HboneChannel]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial(self, key: PoolKey, expected: frozenset[SpiffeId]) -> HboneChannel:
        context = self.identities.context(key.source, server=False)
        reader, writer = await self.sockets.connect(key.address, key.port, tls=context)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            verify_peer(ssl_object, expected=expected)
            if not negotiated_h2(ssl_object):
                raise HboneError("the peer did not negotiate ALPN h2", error_code=0)
        except BaseException:
            writer.close()
            raise
        return HboneChannel(HboneClient(self.settings), reader, writer)

    async def _run_channel(self, connection_id: int, channel: HboneChannel) -> None:
        try:
            await channel.run()
        finally:
            self.pool.failed(connection_id)
            self._channels.pop(connection_id, None)

    def _start_dial(self, connection_id: int, plan: Tunnel) -> None:
        future: asyncio.Future[HboneChannel] = asyncio.get_running_loop().create_future()
        self._channels[connection_id] = future

        async def dial() -> None:
            try:
                channel = await self._dial(plan.pool_key, plan.expected_identities)
            except (OSError, ssl.SSLError, IdentityError, HboneError, TimeoutError) as err:
                self.pool.failed(connection_id)
                self._channels.pop(connection_id, None)
                future.set_exception(err)
                return
            self.pool.connected(connection_id, self._monotonic())
            future.set_result(channel)
            await self._run_channel(connection_id, channel)

        self._spawn(dial())

    async def start(self, plan: Tunnel, *, flush: bool = True) -> TunnelStream:
        """Queue ``plan``'s CONNECT on a pooled connection; the answer is not awaited.

        The caller may write to the tunnel at once (the peer queues those bytes until
        it has connected upstream, and drops them if it refuses), then must await
        :meth:`established` before it trusts anything from the peer. With
        ``flush=False`` the CONNECT leaves with the channel's next flush (the caller's
        first write), so the two share one TLS record.
        """
        checkout = self.pool.checkout(plan.pool_key)
        if checkout.dial or checkout.connection_id not in self._channels:
            self._start_dial(checkout.connection_id, plan)
        try:
            channel = await self._channels[checkout.connection_id]
            stream = channel.open_tunnel(plan.request, flush=flush)
        except BaseException:
            self.pool.release(checkout.connection_id, self._monotonic())
            raise
        stream.on_closed = lambda: self._release(checkout.connection_id, stream)
        return stream

    async def established(self, stream: TunnelStream) -> TunnelResponse:
        """Wait for the peer's answer to ``stream``'s CONNECT; raise unless it is 2xx."""
        try:
            async with asyncio.timeout(self.response_timeout):
                response = await stream.response
            require_established(response)
        except BaseException:
            stream.reset()
            raise
        return response

    def _release(self, connection_id: int, stream: TunnelStream) -> None:
        """The tunnel is over: its stream slot goes back to the pool."""
        stream.channel.streams.pop(stream.stream_id, None)
        self.pool.release(connection_id, self._monotonic())

    def expire_idle(self) -> int:
        """Close connections the pool says have been idle too long; how many."""
        closed = self.pool.expire(self._monotonic())
        for conn in closed:
            future = self._channels.pop(conn.id, None)
            if future is not None and future.done() and not future.exception():
                future.result().close()
        return len(closed)

    def close_idle(self) -> int:
        """Drain every pooled connection and close those without tunnels (shutdown)."""
        for conn in self.pool.connections():
            self.pool.drain(conn.id)
        return self.expire_idle()

    async def close(self) -> None:
        """Close every pooled connection."""
        for future in list(self._channels.values()):
            if future.done() and not future.exception():
                future.result().close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
