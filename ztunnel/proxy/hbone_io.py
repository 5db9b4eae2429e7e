"""The asyncio shell around an HBONE connection: bytes in and out, tunnels as streams.

:class:`HboneChannel` owns one TLS stream (asyncio reader/writer) and one sans-IO
core (:class:`~ztunnel.proxy.hbone.HboneServer` or ``HboneClient``); it feeds the
core what arrives, writes what the core produces, and routes events to
:class:`TunnelStream` objects that the proxy reads from and writes to like a
socket. Flow control follows the reader: received bytes are acknowledged to the
peer only when :meth:`TunnelStream.read` hands them out, and writers wait while
their stream has more than ``HIGH_WATER`` bytes waiting for window.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from ztunnel.errors import HboneError, HboneStreamError
from ztunnel.proxy.hbone import (
    CANCEL,
    Buffer,
    ConnectionEnded,
    DataReceived,
    Drained,
    HboneClient,
    HboneEvent,
    HboneServer,
    PeerHalfClosed,
    StreamReset,
    TunnelRequest,
    TunnelRequested,
    TunnelResponse,
)

log = logging.getLogger("ztunnel.hbone")

HIGH_WATER = 1024 * 1024
READ_SIZE = 256 * 1024
READS_PER_EVENT = 4
"""Reads of a relayed socket per readable event at most, while each fills READ_SIZE."""
_SENDMSG_MAX = 64
"""Buffers per ``sendmsg`` (far below the kernel's IOV_MAX)."""
COALESCE_BELOW = 16 * 1024
"""Output up to this size is joined into one buffer (one TLS record) before it is sent."""


class TunnelStream:
    """One tunnel on an HBONE connection, read and written like a socket."""

    def __init__(self, channel: HboneChannel, stream_id: int) -> None:
        self.channel = channel
        self.stream_id = stream_id
        self._chunks: collections.deque[tuple[Buffer, int]] = collections.deque()
        self._eof = False
        self._reset: int | None = None
        # Made by read() and write() when they first wait: a relayed tunnel (callbacks,
        # no task reads or writes it) never needs them.
        self._readable: asyncio.Event | None = None
        self._writable: asyncio.Event | None = None
        self.response: asyncio.Future[TunnelResponse] = asyncio.get_running_loop().create_future()
        self._ended_locally = False
        self.sink: socket.socket | None = None
        """The socket :func:`relay` sends this tunnel's bytes to: written straight from the
        channel's step while nothing is queued."""
        self.sunk = 0
        """Bytes written to the relay's socket (not handed out by :meth:`read`)."""
        self.sink_full = False
        """The last direct write to ``sink`` met a full socket (the relay waits for it)."""
        self.on_closed: Callable[[], None] | None = None
        """Called once when the tunnel is over (a callback: no task waits per tunnel)."""
        self.on_drained: Callable[[], None] | None = None
        """Called when this tunnel's send backlog has gone out (a paused feeder resumes)."""
        self.on_readable: Callable[[], None] | None = None
        """Called when bytes were queued, the peer half-closed or the tunnel was reset:
        a consumer driven by callbacks (:func:`relay`) instead of :meth:`read`."""

    def _wake_reader(self) -> None:
        if self._readable is not None:
            self._readable.set()
        if self.on_readable is not None:
            self.on_readable()

    def _data(self, event: DataReceived) -> None:
        data = event.data
        sock = self.sink
        if sock is not None and not self._chunks:
            # Nothing queued: to the socket now, from the channel's own step (a task
            # switch per chunk per hop was most of a small request's latency). What
            # the socket does not take is queued, unacknowledged, and the rest queue
            # behind it until the relay's pump has written them, in order.
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN), or failed: the relay's pump meets the error
                sent = 0
            if sent == len(data):
                self.sunk += sent
                self.channel.core.acknowledge(self.stream_id, event.flow_controlled_length)
                return
            if sent:
                self.sunk += sent
                data = memoryview(data)[sent:]
            self.sink_full = True
        self._chunks.append((data, event.flow_controlled_length))
        self._wake_reader()

    # called by the channel
    def _feed(self, event: HboneEvent) -> None:
        if isinstance(event, DataReceived):
            self._data(event)
        elif isinstance(event, PeerHalfClosed):
            self._eof = True
            self._wake_reader()
            self._maybe_closed()
        elif isinstance(event, StreamReset | ConnectionEnded):
            self._reset = event.error_code if isinstance(event, StreamReset) else CANCEL
            self._drop_unread()
            self._wake_reader()
            self._wake_writer()
            if self.on_drained is not None:
                self.on_drained()  # a paused feeder reads on, and learns of the reset
            if not self.response.done():
                self.response.set_exception(
                    HboneStreamError("tunnel reset before a response", error_code=self._reset)
                )
                # Server-side streams never await a response: do not log it as lost.
                self.response.exception()
            self._mark_closed()
        elif isinstance(event, Drained):
            self._wake_writer()
            if self.on_drained is not None:
                self.on_drained()
        elif isinstance(event, TunnelResponse) and not self.response.done():
            self.response.set_result(event)

    def _drop_unread(self) -> None:
        """The tunnel is reset: its queued bytes will never be read; give back their window.

        Unread bytes still count against the connection's window (shared by every
        tunnel on it): a few tunnels reset with full buffers would otherwise starve the
        whole pooled connection for good.
        """
        if not self.channel.core.closed:
            for _, size in self._chunks:
                self.channel.core.acknowledge(self.stream_id, size)
        self._chunks.clear()

    def discard_unread(self) -> None:
        """The tunnel was refused: bytes the peer sent early are dropped, their window freed."""
        self._drop_unread()
        self.channel.flush()

    def _maybe_closed(self) -> None:
        if self._eof and self._ended_locally:
            self._mark_closed()

    def _wake_writer(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def _mark_closed(self) -> None:
        self.channel.streams.pop(self.stream_id, None)
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()

    async def read(self) -> Buffer:
        """The next chunk from the peer (often a view, never mutated); ``b""`` at half-close."""
        while not self._chunks:
            if self._reset is not None:
                raise HboneStreamError(
                    f"tunnel {self.stream_id} was reset",
                    error_code=self._reset,
                    stream_id=self.stream_id,
                )
            if self._eof:
                return b""
            if self._readable is None:
                self._readable = asyncio.Event()
            self._readable.clear()
            await self._readable.wait()
        data, flow_controlled = self._chunks.popleft()
        self.channel.core.acknowledge(self.stream_id, flow_controlled)
        self.channel.flush()
        return data

    def send_queued(self, sock: socket.socket) -> int:
        """Write the queued bytes straight to ``sock``, a connected non-blocking socket no
        transport owns: one system call; what the kernel does not take stays queued, in order.

        The inbound side sends a caller's early bytes (they came with the CONNECT) to
        the pod this way, before the socket gets its transport and the relay starts, so
        the pod starts on the request meanwhile; :func:`relay` sends the backlog this way
        when the socket is writable again. Returns the bytes written (in ``sunk``); their
        window goes back with the next flush. A full socket takes nothing (0); any other
        socket error is raised.
        """
        chunks = self._chunks
        if not chunks or self._reset is not None:
            return 0
        try:
            sent = sock.sendmsg([data for data, _ in itertools.islice(chunks, _SENDMSG_MAX)])
        except (BlockingIOError, InterruptedError):
            return 0
        left = sent
        core = self.channel.core
        while left:
            data, flow_controlled = chunks[0]
            if left < len(data):
                chunks[0] = (memoryview(data)[left:], flow_controlled)
                break
            chunks.popleft()
            left -= len(data)
            core.acknowledge(self.stream_id, flow_controlled)
        self.sunk += sent
        return sent

    def send_nowait(self, data: Buffer) -> None:
        """Queue ``data`` and hand what the windows allow to the transport (no waiting)."""
        if self._reset is not None:
            raise HboneStreamError(
                f"tunnel {self.stream_id} was reset",
                error_code=self._reset,
                stream_id=self.stream_id,
            )
        self.channel.core.send_data(self.stream_id, data)
        self.channel.flush()

    def end_nowait(self) -> None:
        """Half-close our direction (once the queued bytes have gone)."""
        if self._reset is None and not self._ended_locally:
            self._ended_locally = True
            self.channel.core.end_stream(self.stream_id)
            self.channel.flush_soon()
            self._maybe_closed()

    async def write(self, data: Buffer) -> None:
        """Send ``data``; waits while this stream's unsent backlog is above ``HIGH_WATER``."""
        if self._reset is not None:
            raise HboneStreamError(
                f"tunnel {self.stream_id} was reset",
                error_code=self._reset,
                stream_id=self.stream_id,
            )
        self.channel.core.send_data(self.stream_id, data)
        await self.channel.drain()
        if self.channel.core.pending(self.stream_id) > HIGH_WATER:
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            await self._writable.wait()

    async def end(self) -> None:
        """Half-close our direction."""
        if self._reset is None and not self._ended_locally:
            self._ended_locally = True
            self.channel.core.end_stream(self.stream_id)
            await self.channel.drain()
            self._maybe_closed()

    def reset(self, error_code: int = CANCEL) -> None:
        """Abort the tunnel."""
        if self._reset is None:
            self._reset = error_code
            self.channel.core.reset_stream(self.stream_id, error_code)
            self._drop_unread()
            self.channel.flush()
            self._mark_closed()


RequestHandler = Callable[[TunnelStream, TunnelRequest], Coroutine[Any, Any, None]]

WRITE_HIGH_WATER = 4 * 1024 * 1024
"""Encrypted bytes waiting in a channel's transport above which it stops reading the peer."""


class HboneProtocol(asyncio.StreamReaderProtocol):
    """The TLS transport's protocol for an HBONE connection: received bytes go straight
    to the channel, in the transport's own callback.

    A ``StreamReader`` costs a copy into its buffer, a future and a task wake-up per
    read, on each hop of every request. The writer side (``StreamWriter``, ``drain``)
    is the usual one. Until :class:`HboneChannel` takes over, bytes are kept here.
    """

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader(limit=2**20)
        """The stream the writer checks for errors (the protocol itself holds it weakly)."""
        super().__init__(self.reader)
        self._receiver: HboneChannel | None = None
        self._early: list[bytes] = []
        self._ended: BaseException | bool = False
        self.writing_paused = False
        """The transport's write buffer is over its high-water mark (feeders stop reading)."""

    def attach(self, channel: HboneChannel) -> None:
        """Hand every received byte (those already here first) to ``channel``."""
        self._receiver = channel
        early, self._early = self._early, []
        for data in early:
            channel._received(data)
        if self._ended:
            channel._ended(self._ended if isinstance(self._ended, BaseException) else None)

    def data_received(self, data: bytes) -> None:
        if self._receiver is None:
            self._early.append(data)
        else:
            self._receiver._received(data)

    def eof_received(self) -> bool:
        super().eof_received()
        self._end(None)
        return False  # close the transport: HBONE has no half-closed connections

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writing_paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.writing_paused = False
        if self._receiver is not None:
            self._receiver._writable()

    def _end(self, exc: BaseException | None) -> None:
        if self._receiver is not None:
            self._receiver._ended(exc)
        elif not self._ended:
            self._ended = exc or True


class HboneChannel:
    """Drives one HBONE connection over an asyncio stream pair."""

    def __init__(
        self,
        core: HboneServer | HboneClient,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.core = core
        self.reader = reader
        self.writer = writer
        self._transport = cast(asyncio.Transport, writer.transport)
        """The TLS transport ``writer`` writes to: the per-chunk path calls it directly."""
        self.streams: dict[int, TunnelStream] = {}
        self.done = asyncio.Event()
        self.error: ConnectionEnded | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_request: RequestHandler | None = None
        self.feeders_waiting: list[Callable[[], None]] = []
        """Feeders paused until this connection's transport can take more (its writer drains)."""
        self._over: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._flush_pending = False

    def flush(self) -> None:
        """Hand the core's pending output to the transport."""
        chunks = self.core.chunks_to_send()
        transport = self._transport
        if not chunks or transport.is_closing():
            return
        if len(chunks) > 1 and sum(map(len, chunks)) <= COALESCE_BELOW:
            # The TLS transport seals every buffer it is given as a record of its own:
            # a small frame's 9-byte header and its payload would be two records (two
            # seals here, two opens at the peer). Joined, small writes are one.
            transport.write(b"".join(chunks))
        else:
            # Large payloads reach the cipher without being copied first; the
            # transport encrypts the list and sends it in one write.
            transport.writelines(chunks)

    def flush_soon(self) -> None:
        """Flush once this loop turn's other work is done (frames that need not leave now).

        A tunnel's end often comes just ahead of another tunnel's start on the same
        connection (a client closes and connects again; the pod's close and its next
        answer): queued now and flushed behind the callbacks this turn's events have
        queued, both leave in one TLS record, one send here and one wake-up at the peer.
        Whatever flushes first (any :meth:`flush`) takes these frames along.
        """
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_deferred, True)

    def _flush_deferred(self, requeue: bool) -> None:
        if requeue:
            # Queued behind what this turn's callbacks queued meanwhile (a new
            # connection's first step among them), not ahead of it.
            asyncio.get_running_loop().call_soon(self._flush_deferred, False)
            return
        self._flush_pending = False
        self.flush()

    async def drain(self) -> None:
        """Flush and wait for the transport's buffer to drain (backpressure)."""
        self.flush()
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def open_tunnel(self, request: TunnelRequest, *, flush: bool = True) -> TunnelStream:
        """Client side: send a CONNECT; await ``stream.response`` for the answer.

        With ``flush=False`` the HEADERS wait for the next :meth:`flush`, so the
        tunnel's first bytes can leave in the same TLS write.
        """
        if not isinstance(self.core, HboneClient):
            raise TypeError("only a client channel opens tunnels")
        stream_id = self.core.open_tunnel(request)
        stream = TunnelStream(self, stream_id)
        self.streams[stream_id] = stream
        if flush:
            self.flush()
        return stream

    async def run(self, on_request: RequestHandler | None = None) -> None:
        """Read until the connection ends; hand each server-side request to ``on_request``."""
        self.core.initiate()
        protocol = getattr(self.writer, "_protocol", None)
        if isinstance(protocol, HboneProtocol):
            await self._run_driven(protocol, on_request)
            return
        await self.drain()
        try:
            while not self.core.closed:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                for event in self.core.receive_data(data):
                    self._dispatch(event, on_request)
                await self.drain()
        except (ConnectionError, OSError) as err:
            self.error = ConnectionEnded(CANCEL, f"transport failed: {err}", remote=True)
        finally:
            self._finish()

    async def _run_driven(self, protocol: HboneProtocol, on_request: RequestHandler | None) -> None:
        """:meth:`run` over an :class:`HboneProtocol`: bytes are handled as they arrive."""
        self._on_request = on_request
        self._over = asyncio.get_running_loop().create_future()
        self.flush()
        protocol.attach(self)
        try:
            await self._over
        finally:
            self._finish()

    def _received(self, data: bytes) -> None:
        """The protocol's callback: feed the core, act on its events, write its answer."""
        over = self._over
        if over is None or over.done():
            return
        try:
            for event in self.core.receive_data(data):
                self._dispatch(event, self._on_request)
            self.flush()
            if self.core.closed:
                over.set_result(None)
                return
            transport = self._transport
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER and not self._reading_paused:
                # The peer sends faster than the transport drains our answers: stop
                # reading it until the transport catches up (as run()'s drain did).
                self._reading_paused = True
                transport.pause_reading()
        except Exception as err:
            # A bug, not the peer's doing: this connection ends, the process goes on.
            log.exception("HBONE channel failed")
            self.error = ConnectionEnded(CANCEL, f"channel failed: {err!r}", remote=False)
            over.set_result(None)

    def _writable(self) -> None:
        if self._reading_paused and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()
        waiting, self.feeders_waiting = self.feeders_waiting, []
        for resume in waiting:
            resume()

    def _ended(self, exc: BaseException | None) -> None:
        over = self._over
        if over is None or over.done():
            return
        if exc is not None:
            self.error = ConnectionEnded(CANCEL, f"transport failed: {exc}", remote=True)
        over.set_result(None)

    def _dispatch(self, event: HboneEvent, on_request: RequestHandler | None) -> None:
        if type(event) is DataReceived:  # most events: a tunnel's bytes
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._feed(event)
            return
        if isinstance(event, TunnelRequested):
            stream = TunnelStream(self, event.stream_id)
            self.streams[event.stream_id] = stream
            if on_request is not None:
                task = asyncio.create_task(on_request(stream, event.request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        if isinstance(event, ConnectionEnded):
            self.error = event
            for stream in list(self.streams.values()):
                stream._feed(event)
            return
        if isinstance(
            event, Drained | DataReceived | PeerHalfClosed | StreamReset | TunnelResponse
        ):
            stream_or_none = self.streams.get(event.stream_id)
            if stream_or_none is not None:
                stream_or_none._feed(event)

    def _finish(self) -> None:
        ended = self.error or ConnectionEnded(0, "connection closed", remote=True)
        for stream in list(self.streams.values()):
            stream._feed(ended)
        self.streams.clear()
        with contextlib.suppress(Exception):
            self.flush()
            self.writer.close()
        self.done.set()

    def close(self) -> None:
        """Send GOAWAY and close the transport once flushed."""
        self.core.close()
        self.flush()
        self.writer.close()

    @property
    def available_streams(self) -> int:
        """Client side: tunnels the peer allows now."""
        if isinstance(self.core, HboneClient) and not self.core.closed:
            return self.core.available_streams()
        return 0


class Transfer:
    """Bytes a relay or splice has moved so far, each way; still right when it fails.

    Clients often end with a reset (wrk and iperf3 do), which ends the copy with an
    exception: the handlers report these counts (metrics, access record) either way.
    """

    __slots__ = ("backward", "forward")

    def __init__(self) -> None:
        self.forward = 0
        """Into the tunnel (relay) or ``a`` to ``b`` (splice)."""
        self.backward = 0
        """Out of the tunnel (relay) or ``b`` to ``a`` (splice)."""


class _SocketRelay:
    """A tunnel and a plain connected socket, relayed from the event loop's readiness
    callbacks: the socket gets no transport, no protocol object and no task.

    Socket to tunnel: each time the socket is readable, ``recv`` (a ``bytes`` made by
    the kernel copy, framed without another) goes into the tunnel, up to
    ``READS_PER_EVENT`` times while the reads fill ``READ_SIZE``; reading pauses
    while the tunnel's backlog is over ``HIGH_WATER`` or the HBONE connection's
    transport is over its high-water mark, and resumes when they drain. Tunnel to
    socket: the stream writes each chunk straight to the socket while nothing is queued
    (:meth:`TunnelStream._feed`); what the socket does not take stays queued on the
    stream, unacknowledged (the peer's window closes), and leaves with one ``sendmsg``
    per writable event (a full socket is waited for, not retried at once). A half-close
    travels each way (``end_nowait``, ``shutdown(SHUT_WR)``); a reset or a socket error
    ends the relay with that error.
    """

    def __init__(self, stream: TunnelStream, sock: socket.socket, counts: Transfer) -> None:
        self.stream = stream
        self.sock = sock
        self.fd = sock.fileno()
        self.counts = counts
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._reading = False
        self._writing = False
        self._read_paused = False
        self._up_ended = False
        """The socket's end of stream went into the tunnel."""
        self._down_ended = False
        """The tunnel's end of stream went to the socket (``SHUT_WR``)."""
        protocol = stream.channel.writer.transport.get_protocol()
        self._channel_protocol = protocol if isinstance(protocol, HboneProtocol) else None

    def _may_start_reading(self) -> bool:
        """Not registered, not paused by backpressure, and the socket's side not over."""
        return not (self._reading or self._read_paused or self._up_ended or self.done.done())

    def start_reading(self) -> None:
        if self._may_start_reading():
            self._reading = True
            self.loop.add_reader(self.fd, self._readable)

    def start_writing(self) -> None:
        """The tunnel's bytes go to the socket from now on (those queued first)."""
        stream = self.stream
        stream.sink = self.sock
        stream.on_readable = self._tunnel_ready
        self._pump()

    def stop(self) -> None:
        """No more callbacks: the socket is the caller's to close."""
        self._stop_reading()
        self._stop_writing()
        stream = self.stream
        stream.sink = None
        stream.on_readable = None
        stream.on_drained = None
        with contextlib.suppress(ValueError):
            stream.channel.feeders_waiting.remove(self._resume)

    def fail(self, err: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(err)
        self.stop()

    def read_now(self) -> None:
        """Take what the socket holds now, if anything, before it is registered with the
        loop (as a readable event would; a request is one ``recv``)."""
        if self._may_start_reading():
            self._readable()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.fd)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.fd)

    def _readable(self) -> None:
        # As libuv reads its own sockets: while a read fills the buffer more is likely
        # waiting (a bulk sender), so a few reads per event rather than one per trip
        # round the loop; a short read (a request) is the only one.
        for _ in range(READS_PER_EVENT):
            if not self._read_once():
                return

    def _read_once(self) -> bool:
        """One ``recv`` into the tunnel; whether another may follow at once."""
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            self.fail(err)
            return False
        stream = self.stream
        try:
            if not data:
                self._stop_reading()
                self._up_ended = True
                stream.end_nowait()
                self._finish_if_over()
                return False
            self.counts.forward += len(data)
            stream.send_nowait(data)
        except HboneError as err:  # the tunnel was reset meanwhile
            self.fail(err)
            return False
        return not self._held_back() and len(data) == READ_SIZE

    def _held_back(self) -> bool:
        """Pause reading while the tunnel's backlog or the HBONE transport is too full."""
        stream = self.stream
        if stream.channel.core.pending(stream.stream_id) > HIGH_WATER:
            self._pause()
            stream.on_drained = self._resume
            return True
        if self._channel_protocol is not None and self._channel_protocol.writing_paused:
            self._pause()
            stream.channel.feeders_waiting.append(self._resume)
            return True
        return False

    def _pause(self) -> None:
        self._stop_reading()
        self._read_paused = True

    def _resume(self) -> None:
        self.stream.on_drained = None
        if self._read_paused:
            self._read_paused = False
            self.start_reading()

    def _tunnel_ready(self) -> None:
        """The stream queued bytes, half-closed or was reset."""
        stream = self.stream
        if stream._reset is None:
            if self._writing:
                return  # the socket is full: its writable event sends what is queued
            if stream.sink_full:
                # The direct write just met a full socket: wait for it to drain rather
                # than try again at once (a system call that would only say EAGAIN).
                stream.sink_full = False
                self._writing = True
                self.loop.add_writer(self.fd, self._pump)
                return
        self._pump()

    def _pump(self) -> None:
        """Write what is queued while the socket takes it; pass on a half-close or reset."""
        if self.done.done():
            return
        stream = self.stream
        if stream._chunks:
            try:
                stream.send_queued(self.sock)
            except OSError as err:
                self.fail(err)
                return
            stream.channel.flush()  # the window updates go now
            if stream._chunks:
                if not self._writing:  # the socket is full: on to the next writable event
                    self._writing = True
                    self.loop.add_writer(self.fd, self._pump)
                return
        self._stop_writing()
        if stream._reset is not None:
            self.fail(
                HboneStreamError(
                    f"tunnel {stream.stream_id} was reset",
                    error_code=stream._reset,
                    stream_id=stream.stream_id,
                )
            )
        elif stream._eof and not self._down_ended:
            self._down_ended = True
            if not self._up_ended:  # else the relay is over and the caller's close() ends both
                with contextlib.suppress(OSError):  # the peer may be gone: reading tells
                    self.sock.shutdown(socket.SHUT_WR)
            self._finish_if_over()

    def _finish_if_over(self) -> None:
        if self._up_ended and self._down_ended and not self.done.done():
            self.done.set_result(None)


async def relay(
    stream: TunnelStream,
    sock: socket.socket,
    transfer: Transfer | None = None,
    *,
    on_response: Callable[[TunnelResponse], None] | None = None,
    response_timeout: float = 10.0,
    hold_first_flush: float = 0.0,
) -> tuple[int, int]:
    """Copy both ways between a plain connected socket and a tunnel, half-closes included.

    Returns ``(bytes into the tunnel, bytes out of the tunnel)``; ``transfer`` (if
    given) holds them too, also when the copy ends with an exception, after which the
    tunnel is reset. The socket must be non-blocking; it stays the caller's to close.

    With ``on_response`` (the client side), the socket's bytes start into the tunnel at
    once (the request rides with the CONNECT) but nothing comes out of it until the
    peer answers: ``on_response(answer)`` is called then and may raise (a refusal),
    which ends the relay with that error, as does no answer within ``response_timeout``.

    What the socket already holds goes into the tunnel at once, with anything the
    channel has queued (a CONNECT not sent yet: one TLS record for both), and the
    channel is flushed. With ``hold_first_flush`` (seconds; the server side, which has
    just given the pod the request that came with the CONNECT), that flush waits for
    the socket's first bytes or that long, whichever comes first: the 200 and a quick
    answer leave as one record, one wake-up at the source instead of two.
    """
    counts = transfer or Transfer()
    relayed = _SocketRelay(stream, sock, counts)
    first_flush: asyncio.TimerHandle | None = None
    if hold_first_flush > 0:
        relayed.start_reading()
        first_flush = relayed.loop.call_later(hold_first_flush, stream.channel.flush)
    else:
        # A client's first bytes, already here, ride with the CONNECT; the socket is
        # registered with the loop (four system calls under uvloop) after that write,
        # off a new connection's path.
        relayed.read_now()
        stream.channel.flush()
        relayed.start_reading()
    timer: asyncio.TimerHandle | None = None
    if on_response is None:
        relayed.start_writing()
    else:

        def answered(response: asyncio.Future[TunnelResponse]) -> None:
            if timer is not None:
                timer.cancel()
            if relayed.done.done():
                return
            try:
                if response.cancelled():
                    raise HboneStreamError("the tunnel's answer was abandoned", error_code=CANCEL)
                on_response(response.result())
            except Exception as err:  # a reset before the answer, or a refusal
                relayed.fail(err)
                return
            relayed.start_writing()

        def unanswered() -> None:
            relayed.fail(TimeoutError(f"no answer to the CONNECT within {response_timeout:g} s"))

        timer = relayed.loop.call_later(response_timeout, unanswered)
        stream.response.add_done_callback(answered)
    try:
        await relayed.done
    except BaseException:
        # Whatever failed (the socket, the tunnel, a cancellation), the tunnel is reset
        # so its unread bytes go back to the shared connection window.
        stream.reset(CANCEL)
        raise
    finally:
        for pending in (timer, first_flush):
            if pending is not None:
                pending.cancel()
        relayed.stop()
        counts.backward = stream.sunk
    return counts.forward, counts.backward


async def copy_to_socket(
    read: Callable[[], Awaitable[Buffer]],
    writer: asyncio.StreamWriter,
    transfer: Transfer | None = None,
) -> int:
    """Write what ``read`` yields to ``writer`` until it yields ``b""``, then half-close.

    ``transfer.forward`` (if given) counts the bytes written, also on failure.
    """
    counts = transfer or Transfer()
    while chunk := await read():
        if writer.is_closing():
            # uvloop raises RuntimeError (not an OSError) on a write to a closed
            # transport; as a ConnectionError it resets the tunnel like any socket error.
            raise ConnectionResetError("the socket closed before the tunnel's bytes were written")
        counts.forward += len(chunk)
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()
    return counts.forward


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    transfer: Transfer | None = None,
) -> tuple[int, int]:
    """Copy both ways between two plain sockets, half-closes included; bytes a->b, b->a.

    ``transfer`` (if given) holds the counts too, also when the copy ends with an exception.
    """
    counts = transfer or Transfer()
    backward = Transfer()

    def reading(reader: asyncio.StreamReader) -> Callable[[], Awaitable[bytes]]:
        return lambda: reader.read(READ_SIZE)

    try:
        await asyncio.gather(
            copy_to_socket(reading(a[0]), b[1], counts),
            copy_to_socket(reading(b[0]), a[1], backward),
        )
    finally:
        counts.backward = backward.forward
    return counts.forward, counts.backward
