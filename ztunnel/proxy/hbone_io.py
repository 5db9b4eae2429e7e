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
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.response: asyncio.Future[TunnelResponse] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self._ended_locally = False
        self.sink: asyncio.StreamWriter | None = None
        """Where :func:`relay` sends this tunnel's bytes: written straight from the channel."""
        self.sunk = 0
        """Bytes written straight to ``sink`` (not handed out by :meth:`read`)."""
        self.on_closed: Callable[[], None] | None = None
        """Called once when the tunnel is over (a callback: no task waits per tunnel)."""
        self.on_drained: Callable[[], None] | None = None
        """Called when this tunnel's send backlog has gone out (a paused feeder resumes)."""
        self.on_readable: Callable[[], None] | None = None
        """Called when bytes were queued, the peer half-closed or the tunnel was reset:
        a consumer driven by callbacks (:class:`_SocketSink`) instead of :meth:`read`."""

    def _wake_reader(self) -> None:
        self._readable.set()
        if self.on_readable is not None:
            self.on_readable()

    # called by the channel
    def _feed(self, event: HboneEvent) -> None:
        if isinstance(event, DataReceived):
            sink = self.sink
            if (
                sink is not None
                and not self._chunks
                and not (transport := sink.transport).is_closing()
                and not transport.get_write_buffer_size()
            ):
                # Nothing queued and the socket keeps up: write now, from the channel's
                # own step (a task switch per chunk per hop was most of a small
                # request's latency). Order holds: once a chunk is queued, the rest
                # queue behind it until the consumer (a _SocketSink's pump, or read()'s
                # caller) has written them, in the step that takes them.
                transport.write(event.data)
                self.sunk += len(event.data)
                self.channel.core.acknowledge(self.stream_id, event.flow_controlled_length)
                return
            self._chunks.append((event.data, event.flow_controlled_length))
            self._wake_reader()
        elif isinstance(event, PeerHalfClosed):
            self._eof = True
            self._wake_reader()
            self._maybe_closed()
        elif isinstance(event, StreamReset | ConnectionEnded):
            self._reset = event.error_code if isinstance(event, StreamReset) else CANCEL
            self._drop_unread()
            self._wake_reader()
            self._writable.set()
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
            self._writable.set()
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

    def _mark_closed(self) -> None:
        self.closed.set()
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
            self._readable.clear()
            await self._readable.wait()
        data, flow_controlled = self._chunks.popleft()
        self.channel.core.acknowledge(self.stream_id, flow_controlled)
        self.channel.flush()
        return data

    def send_queued(self, sock: socket.socket) -> int:
        """Write the queued bytes straight to ``sock``, a connected socket no transport owns
        yet: one system call; what the kernel does not take stays queued, in order.

        The inbound side sends a caller's early bytes (they came with the CONNECT) to
        the pod this way, before the socket gets its transport and the relay starts, so
        the pod starts on the request meanwhile. Returns the bytes written (in ``sunk``);
        their window goes back with the next flush. A socket error writes nothing: the
        relay meets it on the socket and handles it as any.
        """
        chunks = self._chunks
        if not chunks or self._reset is not None:
            return 0
        try:
            sent = sock.sendmsg([data for data, _ in itertools.islice(chunks, _SENDMSG_MAX)])
        except OSError:
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
            self.channel.flush()
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


class _Feeder(asyncio.Protocol):
    """A plain socket's bytes into a tunnel, from the transport's callbacks.

    Takes the place of the socket's ``StreamReaderProtocol`` (which it still tells
    about write pauses and the end, so the socket's ``StreamWriter`` works as before):
    no task wakes up, no ``StreamReader`` copies, per chunk. Reading pauses while the
    tunnel's backlog is over ``HIGH_WATER`` or the HBONE connection's transport is
    over its high-water mark, and resumes when they drain.
    """

    def __init__(
        self,
        stream: TunnelStream,
        previous: asyncio.StreamReaderProtocol,
        transport: asyncio.Transport,
        counts: Transfer,
    ) -> None:
        self.stream = stream
        self.previous = previous
        self.transport = transport
        self.counts = counts
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.writing_paused = False
        """The socket's write buffer is over its high-water mark (the tunnel's bytes wait)."""
        self.on_resume_writing: Callable[[], None] | None = None
        protocol = stream.channel.writer.transport.get_protocol()
        assert isinstance(protocol, HboneProtocol)
        self.channel_protocol = protocol

    @classmethod
    def install(
        cls, stream: TunnelStream, reader: asyncio.StreamReader, counts: Transfer
    ) -> _Feeder | None:
        """Take over ``reader``'s socket; ``None`` when it cannot be (then read as usual)."""
        # The reader's transport and buffer are private to asyncio (stable in 3.11 and
        # 3.12); anything unexpected falls back to the task that reads the stream.
        transport = cast(asyncio.Transport | None, getattr(reader, "_transport", None))
        previous = transport.get_protocol() if transport is not None else None
        buffer = getattr(reader, "_buffer", None)
        if (
            transport is None  # uvloop's transports are not asyncio.Transport subclasses
            or transport.is_closing()
            or not isinstance(previous, asyncio.StreamReaderProtocol)
            or not isinstance(buffer, bytearray)
            or reader.exception() is not None
            or not isinstance(stream.channel.writer.transport.get_protocol(), HboneProtocol)
        ):
            return None
        feeder = cls(stream, previous, transport, counts)
        early, eof = bytes(buffer), reader.at_eof() or getattr(reader, "_eof", False)
        buffer.clear()
        transport.set_protocol(feeder)
        if early:
            feeder.data_received(early)
        if eof:
            feeder.eof_received()
        elif not feeder.paused:
            transport.resume_reading()  # the StreamReader may have paused it
        return feeder

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.counts.forward += len(data)
        stream = self.stream
        try:
            stream.send_nowait(data)
        except (HboneStreamError, HboneError) as err:
            self.done.set_exception(err)
            return
        if stream.channel.core.pending(stream.stream_id) > HIGH_WATER:
            self._pause()
            stream.on_drained = self._resume
        elif self.channel_protocol.writing_paused:
            self._pause()
            stream.channel.feeders_waiting.append(self._resume)

    def eof_received(self) -> bool:
        if not self.done.done():
            try:
                self.stream.end_nowait()
            except (HboneStreamError, HboneError) as err:
                self.done.set_exception(err)
                return True
            self.done.set_result(self.counts.forward)
        return True  # keep the socket open for the other direction (a half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.previous.connection_lost(exc)
        if not self.done.done():
            self.done.set_exception(
                exc or ConnectionResetError("the socket closed before its end of stream")
            )

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.previous.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.previous.resume_writing()
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        self.stream.on_drained = None
        if self.paused and not self.done.done() and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()


class _SocketSink:
    """A tunnel's bytes into a plain socket, from the channel's callbacks (no task).

    Bytes go to the socket as they arrive and their window goes back to the peer once
    the socket's transport has taken them; while that transport is over its high-water
    mark they stay queued on the stream (unacknowledged, so the peer's window closes)
    until it drains. The peer's half-close becomes the socket's; a reset, a failure.
    """

    def __init__(
        self, stream: TunnelStream, writer: asyncio.StreamWriter, feeder: _Feeder, counts: Transfer
    ) -> None:
        self.stream = stream
        self.writer = writer
        self.feeder = feeder
        self.counts = counts
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        """From now on the tunnel's bytes go to the socket (queued ones first)."""
        stream = self.stream
        stream.sink = self.writer
        stream.on_readable = self.pump
        self.feeder.on_resume_writing = self.pump
        self.pump()

    def stop(self) -> None:
        """No more callbacks (the relay is over)."""
        self.stream.on_readable = None
        self.feeder.on_resume_writing = None

    def pump(self) -> None:
        """Write what is queued while the socket takes it; finish at half-close or reset."""
        done = self.done
        if done.done():
            return
        stream, writer = self.stream, self.writer
        chunks = stream._chunks
        wrote = False
        while chunks and not self.feeder.writing_paused:
            if writer.is_closing():
                # uvloop raises RuntimeError on a write to a closed transport; as a
                # ConnectionError it resets the tunnel like any socket error.
                done.set_exception(
                    ConnectionResetError("the socket closed before the tunnel's bytes were written")
                )
                return
            data, flow_controlled = chunks.popleft()
            self.counts.forward += len(data)
            writer.write(data)
            stream.channel.core.acknowledge(stream.stream_id, flow_controlled)
            wrote = True
        if wrote:
            stream.channel.flush()  # the window updates go now
        if chunks:
            return  # the socket is full: resume_writing pumps again
        if stream._reset is not None:
            done.set_exception(
                HboneStreamError(
                    f"tunnel {stream.stream_id} was reset",
                    error_code=stream._reset,
                    stream_id=stream.stream_id,
                )
            )
        elif stream._eof:
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
            done.set_result(self.counts.forward)


async def relay(
    stream: TunnelStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    transfer: Transfer | None = None,
    *,
    gate: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, int]:
    """Copy both ways between a plain socket and a tunnel, half-closes included.

    Returns ``(bytes into the tunnel, bytes out of the tunnel)``; ``transfer`` (if
    given) holds them too, also when the copy ends with an exception. The socket's
    bytes go into the tunnel from its transport's callbacks (:class:`_Feeder`) when
    it can take the socket over, else from a task.

    With ``gate``, the socket's bytes start into the tunnel at once but nothing comes
    out of it until ``gate()`` returns (the client side awaits the peer's 200 there:
    the request rides with the CONNECT instead of a round trip later); if it raises,
    the tunnel is reset and the error is raised.
    """
    counts = transfer or Transfer()
    copied = Transfer()

    async def into_tunnel() -> int:
        while chunk := await reader.read(READ_SIZE):
            counts.forward += len(chunk)
            await stream.write(chunk)
        await stream.end()
        return counts.forward

    async def out_of_tunnel() -> int:
        if gate is not None:
            await gate()
        stream.sink = writer
        return await copy_to_socket(stream.read, writer, copied)

    async def open_after_gate(sink: _SocketSink) -> int:
        assert gate is not None
        await gate()
        sink.start()
        return await sink.done

    feeder = _Feeder.install(stream, reader, counts)
    stream.channel.flush()  # a CONNECT not sent yet goes now (with the bytes already read)
    sink: _SocketSink | None = None
    up: asyncio.Future[int]
    down: asyncio.Future[int]
    if feeder is not None:
        # Both directions run from callbacks; only a gate (the peer's answer) is awaited.
        up = feeder.done
        sink = _SocketSink(stream, writer, feeder, copied)
        if gate is None:
            sink.start()
            down = sink.done
        else:
            down = asyncio.create_task(open_after_gate(sink))
    else:
        up = asyncio.create_task(into_tunnel())
        down = asyncio.create_task(out_of_tunnel())
    try:
        await asyncio.gather(up, down)
    except BaseException:
        # Whatever failed (a socket, the tunnel, a cancellation), the tunnel is reset so
        # its unread bytes go back to the shared connection window.
        up.cancel()
        down.cancel()
        if sink is not None:
            sink.done.cancel()
        stream.reset(CANCEL)
        raise
    finally:
        if sink is not None:
            sink.stop()
        stream.sink = None
        stream.on_drained = None
        counts.backward = copied.forward + stream.sunk
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
