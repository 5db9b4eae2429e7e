"""The HBONE connection pool as a pure state object.

Outbound tunnels share HTTP/2 connections keyed by (source identity, destination
identity, destination address): one TLS handshake serves up to ``max_streams``
tunnels, another connection opens when all are full, and a connection idle for
``idle_timeout`` is closed. The pool only decides; the shell dials, reports the
outcome (:meth:`ConnectionPool.connected` / :meth:`~ConnectionPool.failed`) and
closes what :meth:`~ConnectionPool.expire` returns. Times are monotonic seconds
passed in as ``now``.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass

from ztunnel.errors import PoolError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.workload import IPAddress


@dataclass(frozen=True)
class PoolKey:
    """Which connections a tunnel may share."""

    source: SpiffeId
    """The identity presented (the source workload's certificate)."""
    destination: SpiffeId
    """The identity required of the peer."""
    address: IPAddress
    """The peer's IP (its HBONE port is :attr:`port`)."""
    port: int = 15008
    """The peer's HBONE port."""


class ConnectionState(enum.Enum):
    """Where a pooled connection is in its life."""

    CONNECTING = "connecting"
    """Dialing / TLS / HTTP/2 preface in progress; tunnels may already be queued on it."""
    READY = "ready"
    """Open and accepting tunnels."""
    DRAINING = "draining"
    """No new tunnels (GOAWAY received or sent); closed when its last tunnel ends."""


@dataclass
class PooledConnection:
    """The pool's record of one HTTP/2 connection."""

    id: int
    key: PoolKey
    state: ConnectionState
    max_streams: int
    streams: int = 0
    idle_since: float | None = None

    @property
    def has_capacity(self) -> bool:
        """Whether one more tunnel may be placed on it."""
        return self.state is not ConnectionState.DRAINING and self.streams < self.max_streams


@dataclass(frozen=True)
class Checkout:
    """A stream reserved on a connection; ``dial`` means the shell must open it first."""

    connection_id: int
    dial: bool


class ConnectionPool:
    """Connections by key, with stream accounting and idle expiry."""

    def __init__(self, max_streams: int = 100, idle_timeout: float = 300.0) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self._connections: dict[int, PooledConnection] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._connections)

    def get(self, connection_id: int) -> PooledConnection:
        """The record of a connection; raise :class:`PoolError` if unknown."""
        try:
            return self._connections[connection_id]
        except KeyError:
            raise PoolError(f"no pooled connection #{connection_id}") from None

    def connections(self, key: PoolKey | None = None) -> list[PooledConnection]:
        """The connections for ``key`` (or all), oldest first."""
        return [c for c in self._connections.values() if key is None or c.key == key]

    def checkout(self, key: PoolKey) -> Checkout:
        """Reserve a tunnel for ``key``: on the fullest open connection with room, else a new one.

        Packing tunnels onto the busiest connection lets the others go idle and expire.
        """
        candidates = [c for c in self.connections(key) if c.has_capacity]
        if candidates:
            chosen = max(candidates, key=lambda c: (c.state is ConnectionState.READY, c.streams))
            chosen.streams += 1
            chosen.idle_since = None
            return Checkout(chosen.id, dial=False)
        conn = PooledConnection(
            id=next(self._ids),
            key=key,
            state=ConnectionState.CONNECTING,
            max_streams=self.max_streams,
            streams=1,
        )
        self._connections[conn.id] = conn
        return Checkout(conn.id, dial=True)

    def connected(
        self, connection_id: int, now: float, peer_max_streams: int | None = None
    ) -> None:
        """The dial succeeded; the peer's MAX_CONCURRENT_STREAMS may lower the limit."""
        conn = self.get(connection_id)
        if conn.state is ConnectionState.CONNECTING:
            conn.state = ConnectionState.READY
        if peer_max_streams is not None:
            conn.max_streams = max(1, min(self.max_streams, peer_max_streams))
        if conn.streams == 0:
            conn.idle_since = now

    def release(self, connection_id: int, now: float) -> None:
        """A tunnel on this connection ended."""
        conn = self._connections.get(connection_id)
        if conn is None:
            return  # the connection already failed or expired: nothing to account
        conn.streams = max(0, conn.streams - 1)
        if conn.streams == 0:
            conn.idle_since = now

    def failed(self, connection_id: int) -> int:
        """The connection failed (dial, TLS, or later): forget it; return tunnels lost."""
        conn = self._connections.pop(connection_id, None)
        return conn.streams if conn else 0

    def drain(self, connection_id: int) -> None:
        """No new tunnels on this connection (GOAWAY); it closes when its tunnels end."""
        conn = self._connections.get(connection_id)
        if conn is not None:
            conn.state = ConnectionState.DRAINING

    def expire(self, now: float) -> list[PooledConnection]:
        """Remove and return connections to close: idle too long, or drained and empty."""
        done = [
            c
            for c in self._connections.values()
            if c.streams == 0
            and c.state is not ConnectionState.CONNECTING
            and (
                c.state is ConnectionState.DRAINING
                or (c.idle_since is not None and now - c.idle_since >= self.idle_timeout)
            )
        ]
        for conn in done:
            del self._connections[conn.id]
        return done

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (for the shell's timer)."""
        times = [
            c.idle_since + self.idle_timeout
            for c in self._connections.values()
            if c.streams == 0 and c.idle_since is not None
        ]
        return min(times) if times else None
