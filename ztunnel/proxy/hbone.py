"""HBONE as sans-IO: HTTP/2 ``CONNECT`` tunnels on top of ``h2``, no sockets, no clock.

Both peers wrap an ``h2.connection.H2Connection``: the shell feeds received bytes to
:meth:`receive_data`, acts on the returned events, and writes :meth:`data_to_send`
to the TLS stream. A tunnel is one HTTP/2 stream:

* the client opens it with ``:method CONNECT``, ``:authority <ip>:<port>`` and the
  ``forwarded``, ``baggage`` and ``traceparent`` headers (:class:`TunnelRequest`);
* the server parses and checks the request, answers 400 itself when it is
  malformed (not CONNECT, bad authority), and otherwise hands the request to the
  shell, which answers 200 (then bytes flow both ways), 401 or 503;
* either side half-closes with END_STREAM; errors reset the stream (RST_STREAM)
  or, for connection-level violations, end the connection (GOAWAY) with the
  HTTP/2 error code.

Flow control is explicit: received data is returned to the peer's window only when
the shell calls :meth:`acknowledge` (after writing it upstream), so a slow reader
stalls only its own stream; outgoing data beyond the peer's window is buffered per
stream and sent as windows open (:class:`Drained` says a buffer emptied).
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import re
import struct
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hpack
import hyperframe.frame

from api.baggage import format_baggage, parse_baggage
from ztunnel.errors import HboneError, HboneStreamError

MiB = 1024 * 1024

# HTTP/2 error codes (RFC 9113 section 7), named once here.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
CANCEL = 0x8
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB


def _data_frame_summary(frame: hyperframe.frame.DataFrame) -> str:
    return f"<{len(frame.data)} bytes>"


# h2 formats repr(frame) for a trace log on every received frame, even with logging
# off, and hyperframe's DataFrame repr copies and hex-encodes the whole payload: at
# 1 MiB frames that was a third of ztunnel's CPU in bulk transfers. A constant-time
# summary keeps the (never printed) trace line cheap.
hyperframe.frame.DataFrame._body_repr = _data_frame_summary  # type: ignore[method-assign,assignment]

Buffer = bytes | bytearray | memoryview
"""Bytes as the shell hands them around: payload slices travel as memoryviews, uncopied."""

_FRAME_HEADER = struct.Struct("!HBBBL")
_DATA_TYPE = 0x0
_END_STREAM_FLAG = 0x1
_PADDED_FLAG = 0x8


class _Payload:
    """A payload slice as ``h2`` sees it: it only takes ``len()`` and stores the object.

    ``h2`` turns a ``memoryview`` into ``bytes`` (a copy); this wrapper passes through
    untouched and :class:`_ZeroCopyH2` unwraps it when it writes the frame.
    """

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)


def _hpack_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) whose first byte carries ``first``'s bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


class _SilentLog:
    """Stands in for ``hpack``'s module logger, which logs each integer and field it
    decodes at debug level: two ``logging`` calls apiece (about 40 per tunnel, whether
    debug is on or not) for lines no one reads. ztunnel's own debug logs are unchanged."""

    @staticmethod
    def debug(*args: object, **kwargs: object) -> None:
        del args, kwargs


setattr(hpack.hpack, "log", _SilentLog())  # noqa: B010 - typed as a Logger there


_STATIC_NAMES: dict[bytes, int] = {}
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
for _index, (_name, _value) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, start=1):
    _STATIC_NAMES.setdefault(_name, _index)
    _STATIC_FIELDS.setdefault((_name, _value), _index)


class _LiteralEncoder:
    """HPACK that never uses the dynamic table: every field a literal without indexing,
    or a static-table index when the table holds the whole field (``:status: 200``).

    Stateless, so a block is a few byte joins (hpack's encoder searched and updated
    its table per field, a large part of a new tunnel's CPU), and the peer's decoder
    adds nothing to its table either. Names in the static table go by index; values
    are raw octets (no Huffman: our blocks are short, and Huffman is a symbol at a
    time in Python on both sides). The first block starts with a dynamic table size
    update to 0, which satisfies any SETTINGS_HEADER_TABLE_SIZE the peer announces.
    """

    def __init__(self) -> None:
        self._announced = False
        self.header_table_size = 0
        """Set by h2 when the peer's settings change it; we use no table at any size."""

    def encode(self, headers: Iterable[Any], huffman: bool = False) -> bytes:
        del huffman
        out = bytearray()
        if not self._announced:
            out.append(0x20)  # dynamic table size update: 0
            self._announced = True
        for field_ in headers:
            name, value = field_[0], field_[1]
            if isinstance(name, str):
                name = name.encode()
            if isinstance(value, str):
                value = value.encode()
            # Never-indexed (0001) for fields h2 marks sensitive, else without indexing.
            kind = 0x10 if isinstance(field_, hpack.NeverIndexedHeaderTuple) else 0x00
            if not kind:
                whole = _STATIC_FIELDS.get((name, value))
                if whole is not None:  # ":status: 200" and the like: one byte, a static index
                    out.append(0x80 | whole)
                    continue
            index = _STATIC_NAMES.get(name)
            if index is not None:
                out += _hpack_integer(index, 4, kind)
            else:
                out.append(kind)
                out += _hpack_integer(len(name), 7, 0)
                out += name
            out += _hpack_integer(len(value), 7, 0)
            out += value
        return bytes(out)


class _ZeroCopyH2(h2.connection.H2Connection):  # type: ignore[misc]
    """``h2``'s connection whose DATA frames leave as (header, payload view), not copied.

    ``h2`` serializes every frame into one ``bytearray`` (header + payload joined, then
    appended, then copied out again): four copies of every tunnel byte before TLS sees
    it. Here an unpadded DATA frame becomes its 9-byte header and the caller's own
    buffer, queued in order after whatever control frames ``h2`` wrote before it; all
    of ``h2``'s state (windows, stream states) is updated exactly as before.
    """

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.encoder = _LiteralEncoder()  # type: ignore[assignment]  # h2 only calls encode()
        self._chunks: list[Buffer] = []
        # Received bytes not yet forming a whole frame, and how many there are.
        self._rx: collections.deque[memoryview] = collections.deque()
        self._rx_len = 0
        self._preamble_left = 0 if config.client_side else 24
        # A DATA frame whose payload is still arriving (its header checked and its
        # windows charged): its stream and the payload bytes still to come.
        self._payload_stream = 0
        self._payload_left = 0

    def receive_data(self, data: Buffer) -> list[Any]:  # type: ignore[override]
        """Split frames off ``data``: plain DATA payloads bypass ``h2``'s frame buffer.

        ``h2`` buffers input in a ``bytearray`` and copies every frame body out of it
        twice. Here an unpadded DATA frame on a stream that may receive it is checked
        and charged to the windows (as ``h2``'s own frame handler would) once its
        header is in, and its payload is handed on as views of the received buffers as
        they arrive: a large frame split across reads is never joined into one copy.
        Every other frame (and anything odd: oversized, padded, END_STREAM, stream 0,
        inside a header block, a window it would overflow) goes whole through
        ``h2.receive_data``, so its checks and error codes apply as before.
        """
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        events: list[Any] = []
        if self._preamble_left:
            # The client preface is h2's to check; it is not a frame.
            head, view = view[: self._preamble_left], view[self._preamble_left :]
            self._preamble_left -= len(head)
            events.extend(super().receive_data(head))
        if view:
            self._rx.append(view)
            self._rx_len += len(view)
        if self._payload_left:
            self._payload_continues(events)
        while self._rx_len >= 9:
            header = self._peek(9)
            length = int.from_bytes(header[:3], "big")
            if length > self.max_inbound_frame_size:
                # Let h2 refuse it (FRAME_SIZE_ERROR) without buffering the body.
                events.extend(super().receive_data(self._take(self._rx_len)))
                break
            frame_type, flags = header[3], header[4]
            stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if (
                frame_type == _DATA_TYPE
                and not flags & (_PADDED_FLAG | _END_STREAM_FLAG)
                and stream_id
                and not self.incoming_buffer._headers_buffer
                and self._charge_data(stream_id, length)
            ):
                first = self._rx[0]
                end = 9 + length
                if len(first) >= end:  # the usual case: the whole frame in one buffer
                    if len(first) == end:
                        self._rx.popleft()
                    else:
                        self._rx[0] = first[end:]
                    self._rx_len -= end
                    events.append(DataReceived(stream_id, first[9:end], length))
                    continue
                self._take(9)
                self._payload_stream, self._payload_left = stream_id, length
                self._payload_continues(events)
                continue
            if self._rx_len < 9 + length:
                break
            raw = self._take(9 + length)
            if (
                frame_type != _DATA_TYPE
                or flags & _PADDED_FLAG
                or not stream_id
                or self.incoming_buffer._headers_buffer
            ):
                events.extend(super().receive_data(raw))
                continue
            events.extend(self._data_frame_to_h2(stream_id, flags, raw[9:]))
        return events

    def _data_frame_to_h2(self, stream_id: int, flags: int, payload: memoryview) -> list[Any]:
        """A whole DATA frame the fast path does not take (END_STREAM, a closed stream,
        a window it would overflow...), handed to h2's frame handler: its checks, its
        events, its error codes."""
        frame = hyperframe.frame.DataFrame(stream_id)
        frame.data = payload  # type: ignore[assignment]  # a view: h2 only slices and len()s it
        if flags & _END_STREAM_FLAG:
            frame.flags.add("END_STREAM")
        try:
            events: list[Any] = self._receive_frame(frame)
        except h2.exceptions.ProtocolError as err:
            self._terminate_connection(err.error_code)
            raise
        return events

    def _charge_data(self, stream_id: int, length: int) -> bool:
        """Take a DATA frame's header (no END_STREAM, no padding) on the fast path.

        What h2's frame handler does for it (windows charged, the stream's byte count),
        minus its two state machines' lookups and a frame object per chunk; the payload
        then arrives as our own :class:`DataReceived` events (not h2's, translated
        later: this is every tunnel chunk's path). ``False`` leaves the whole frame to
        h2 (an empty frame, any other state, a window it would overflow, a
        content-length to check), so every error is still h2's, with its codes.
        """
        if not length:
            return False
        state = self.state_machine.state
        if state is not _CLIENT_OPEN and state is not _SERVER_OPEN:
            return False
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        machine = stream.state_machine
        if (
            machine.state is not _STREAM_OPEN and machine.state is not _STREAM_HALF_CLOSED_LOCAL
        ) or not machine.headers_received:
            return False
        connection_window = self._inbound_flow_control_window_manager
        stream_window = stream._inbound_window_manager
        if (
            length > connection_window.current_window_size
            or length > stream_window.current_window_size
            or stream._expected_content_length is not None
        ):
            return False
        connection_window.window_consumed(length)
        stream_window.window_consumed(length)
        stream._actual_content_length += length
        return True

    def _payload_continues(self, events: list[Any]) -> None:
        """Hand on what has arrived of the current DATA frame's payload, buffer by buffer.

        A frame still arriving when a read ends goes on in the next one; if its stream
        was reset here meanwhile, the rest is dropped and given back to the connection
        window at once (the peer charged it there; h2 does the same for DATA on a closed
        stream).
        """
        stream_id = self._payload_stream
        stream = self.streams.get(stream_id)
        open_ = stream is not None and stream.state_machine.state in _RECEIVING
        while self._payload_left and self._rx_len:
            first = self._rx[0]
            if len(first) <= self._payload_left:
                self._rx.popleft()
                piece = first
            else:
                piece = first[: self._payload_left]
                self._rx[0] = first[self._payload_left :]
            size = len(piece)
            self._rx_len -= size
            self._payload_left -= size
            if open_:
                events.append(DataReceived(stream_id, piece, size))
            else:
                increment = self._inbound_flow_control_window_manager.process_bytes(size)
                if increment:
                    update = hyperframe.frame.WindowUpdateFrame(0)
                    update.window_increment = increment
                    self._prepare_for_sending([update])

    def _peek(self, size: int) -> bytes:
        first = self._rx[0]
        if len(first) >= size:
            return bytes(first[:size])
        return b"".join(self._rx)[:size]

    def _take(self, size: int) -> memoryview:
        """The next ``size`` received bytes: a view when they sit in one buffer."""
        self._rx_len -= size
        first = self._rx[0]
        if len(first) >= size:
            if len(first) == size:
                self._rx.popleft()
            else:
                self._rx[0] = first[size:]
            return first[:size]
        parts: list[memoryview] = []
        while size:
            chunk = self._rx.popleft()
            if len(chunk) > size:
                self._rx.appendleft(chunk[size:])
                chunk = chunk[:size]
            parts.append(chunk)
            size -= len(chunk)
        return memoryview(b"".join(parts))

    def _prepare_for_sending(self, frames: list[Any]) -> None:
        if not frames or not all(
            isinstance(f, hyperframe.frame.DataFrame) and not f.pad_length for f in frames
        ):
            super()._prepare_for_sending(frames)
            return
        self._move_control_frames()
        for frame in frames:
            length = len(frame.data)
            flags = _END_STREAM_FLAG if "END_STREAM" in frame.flags else 0
            header = _FRAME_HEADER.pack(
                (length >> 8) & 0xFFFF, length & 0xFF, _DATA_TYPE, flags, frame.stream_id
            )
            self._chunks.append(header)
            if length:
                data = frame.data
                self._chunks.append(data.view if isinstance(data, _Payload) else data)

    def send_data_frame(self, stream_id: int, payload: Buffer) -> None:
        """Queue one DATA frame (no END_STREAM, no padding) whose windows the caller took.

        What ``send_data`` does for a stream that may send (the caller checks the
        connection and stream states and the windows, and charges the windows), minus
        its state machines' lookups, two log calls and frame objects per chunk.
        """
        self._move_control_frames()
        length = len(payload)
        self._chunks.append(
            _FRAME_HEADER.pack((length >> 8) & 0xFFFF, length & 0xFF, _DATA_TYPE, 0, stream_id)
        )
        if length:
            self._chunks.append(payload)

    def _move_control_frames(self) -> None:
        if self._data_to_send:
            self._chunks.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()

    def chunks_to_send(self) -> list[Buffer]:
        """Everything queued for the wire, in order, as buffers (payloads uncopied)."""
        self._move_control_frames()
        chunks, self._chunks = self._chunks, []
        return chunks


_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
_SERVER_OPEN = h2.connection.ConnectionState.SERVER_OPEN
_STREAM_OPEN = h2.stream.StreamState.OPEN
_STREAM_HALF_CLOSED_REMOTE = h2.stream.StreamState.HALF_CLOSED_REMOTE
_STREAM_HALF_CLOSED_LOCAL = h2.stream.StreamState.HALF_CLOSED_LOCAL
_RECEIVING = (_STREAM_OPEN, _STREAM_HALF_CLOSED_LOCAL)

_HTTP2_MAX_WINDOW = 2**31 - 1
_HTTP2_DEFAULT_WINDOW = 65_535
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True)
class HboneSettings:
    """HTTP/2 tuning of an HBONE connection (Istio's values by default)."""

    stream_window: int = 4 * MiB
    """Initial receive window per stream: what one tunnel may have in flight."""
    connection_window: int = 16 * MiB
    """Receive window of the whole connection, shared by its tunnels."""
    max_frame_size: int = 1 * MiB
    """Largest DATA frame we accept (and send, when the peer allows it)."""
    max_concurrent_streams: int = 100
    """Tunnels the peer may have open at once on this connection."""
    max_header_list_size: int = 16 * 1024
    """Largest decoded header block accepted; larger ends the connection."""

    def __post_init__(self) -> None:
        for name in ("stream_window", "connection_window"):
            value = getattr(self, name)
            if not _HTTP2_DEFAULT_WINDOW <= value <= _HTTP2_MAX_WINDOW:
                raise ValueError(f"{name}={value} is outside 65535..2^31-1")
        if not 16_384 <= self.max_frame_size <= 16_777_215:
            raise ValueError(f"max_frame_size={self.max_frame_size} is outside 16384..16777215")


@dataclass(frozen=True)
class Authority:
    """The ``:authority`` of a CONNECT: the destination ``host:port``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Authority:
        """Parse ``ip:port``, ``[ipv6]:port`` or ``hostname:port``; raise ``ValueError``."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"authority {text!r} has no port")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"authority {text!r} has an invalid port")
        if host.startswith("[") and host.endswith("]"):
            host = str(ipaddress.IPv6Address(host[1:-1]))
        elif ":" in host or not host:
            raise ValueError(f"authority {text!r} is not host:port")
        return cls(host, port)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address, or ``None`` for a host name."""
        return _host_ip(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _host_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address (parsed once per host: every tunnel asks), else ``None``."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_forwarded(value: str) -> tuple[str | None, str | None]:
    """``(for, host)`` of the first element of a ``forwarded`` header (RFC 7239)."""
    first = value.split(",", 1)[0]
    params: dict[str, str] = {}
    for pair in first.split(";"):
        key, sep, raw = pair.strip().partition("=")
        if sep:
            params[key.strip().lower()] = raw.strip().strip('"')
    return params.get("for"), params.get("host")


def format_forwarded(for_: str, host: str | None = None) -> str:
    """A ``forwarded`` value: ``for="<ip:port>"`` plus ``;host=<service>`` if known."""
    value = f'for="{for_}"'
    return f"{value};host={host}" if host else value


@dataclass(frozen=True)
class TunnelRequest:
    """What an HBONE CONNECT asks for."""

    authority: Authority
    """Where the tunnel goes (``<podIP>:<targetPort>``, or the original VIP:port via a waypoint)."""
    forwarded_for: str | None = None
    """The original client ``ip:port`` from ``forwarded: for=``."""
    forwarded_host: str | None = None
    """The service hostname from ``forwarded: ...;host=``, if given."""
    baggage: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Source workload metadata (``k8s.namespace.name``, ``service.name``, ...)."""
    traceparent: str | None = None
    """The W3C trace context, ``00-<trace>-<span>-<flags>``."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The request's HTTP/2 header list."""
        out = [(b":method", b"CONNECT"), (b":authority", str(self.authority).encode())]
        if self.forwarded_for:
            out.append(
                (b"forwarded", format_forwarded(self.forwarded_for, self.forwarded_host).encode())
            )
        baggage = _baggage_header(tuple(self.baggage.items()))
        if baggage:
            out.append((b"baggage", baggage))
        if self.traceparent:
            out.append((b"traceparent", self.traceparent.encode()))
        return out


# A workload's baggage is the same on each of its connections and a peer's arrives
# the same way each time: both are worked out once (percent-encoding is several Python
# calls per member), not per tunnel.
@functools.lru_cache(maxsize=1024)
def _baggage_header(items: tuple[tuple[str, str], ...]) -> bytes:
    return format_baggage(dict(items)).encode()


def _baggage_of(value: str) -> Mapping[str, str]:
    # A peer chooses the value: only short ones are kept (the cache stays small).
    if len(value) <= _BAGGAGE_CACHED_LEN:
        return _parsed_baggage(value)
    return parse_baggage(value)


_BAGGAGE_CACHED_LEN = 512


@functools.lru_cache(maxsize=1024)
def _parsed_baggage(value: str) -> Mapping[str, str]:
    return types.MappingProxyType(parse_baggage(value))  # shared: read-only


# --- events ------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelRequested:
    """Server: a well-formed CONNECT arrived; answer with :meth:`HboneServer.respond`."""

    stream_id: int
    request: TunnelRequest


@dataclass(frozen=True)
class TunnelRejected:
    """Server: a request was answered (or refused) by the protocol layer itself."""

    stream_id: int
    status: int
    """The HTTP status sent (400), or 0 when the stream was refused with RST_STREAM."""
    reason: str


@dataclass(frozen=True)
class TunnelResponse:
    """Client: the server answered a CONNECT; 200 means the tunnel is open."""

    stream_id: int
    status: int
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def established(self) -> bool:
        """Whether bytes may now flow (status 2xx)."""
        return 200 <= self.status < 300


@dataclass(frozen=True)
class DataReceived:
    """Tunnel bytes from the peer; :meth:`acknowledge` ``flow_controlled_length`` when consumed."""

    stream_id: int
    data: Buffer
    """The payload: often a view into the received bytes (immutable, safe to keep)."""
    flow_controlled_length: int


@dataclass(frozen=True)
class PeerHalfClosed:
    """The peer will send no more on this tunnel (END_STREAM): shut down writing upstream."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    """The tunnel was reset (by the peer, or by us on an error)."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True)
class Drained:
    """Everything queued for this tunnel was handed to HTTP/2: reading upstream may resume."""

    stream_id: int


@dataclass(frozen=True)
class ConnectionEnded:
    """The HTTP/2 connection is over (GOAWAY received or sent); close the transport."""

    error_code: int
    reason: str
    remote: bool


HboneEvent = (
    TunnelRequested
    | TunnelRejected
    | TunnelResponse
    | DataReceived
    | PeerHalfClosed
    | StreamReset
    | Drained
    | ConnectionEnded
)


class _HboneConnection:
    """What both peers share: the h2 connection, flow control and send buffers."""

    def __init__(self, settings: HboneSettings, *, client_side: bool) -> None:
        self.settings = settings
        # Our own header blocks are well-formed by construction: h2 need not check and
        # normalise them again on every tunnel. Received requests and responses are
        # checked by malformed_fields() in one pass (h2's chain of generators and its
        # byte-at-a-time loops were a tenth of a tunnel's HTTP/2 work); what HBONE
        # ignores (trailers, 1xx) is not looked at. Cookies are never read: not joined.
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self._h2: Any = _ZeroCopyH2(config)
        # Per stream: buffers not yet framed (no window yet) and their total length.
        self._pending: dict[int, collections.deque[memoryview]] = {}
        self._pending_bytes: dict[int, int] = {}
        self._end_after_flush: set[int] = set()
        # Streams we half-closed, until they close fully: sending more is a bug.
        self._ended_locally: set[int] = set()
        self.closed = False

    def initiate(self) -> None:
        """Queue the preface and our SETTINGS, and open the connection window."""
        codes = h2.settings.SettingCodes
        # Window, frame and header limits are in force locally from the first byte
        # (h2's documented way: settings objects built before initiate_connection).
        self._h2.local_settings = h2.settings.Settings(
            client=self._h2.config.client_side,
            initial_values={
                codes.INITIAL_WINDOW_SIZE: self.settings.stream_window,
                codes.MAX_FRAME_SIZE: self.settings.max_frame_size,
                codes.MAX_HEADER_LIST_SIZE: self.settings.max_header_list_size,
            },
        )
        self._h2.max_inbound_frame_size = self.settings.max_frame_size
        self._h2.decoder.max_header_list_size = self.settings.max_header_list_size
        self._h2.initiate_connection()
        # The stream limit is announced but left pending until the peer ACKs it: until
        # then the server refuses excess streams one by one (RST_STREAM REFUSED_STREAM)
        # instead of h2 ending the whole connection; after the ACK, exceeding it is a
        # real protocol violation and h2 answers with GOAWAY.
        self._h2.update_settings(
            {codes.MAX_CONCURRENT_STREAMS: self.settings.max_concurrent_streams}
        )
        extra = self.settings.connection_window - _HTTP2_DEFAULT_WINDOW
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now (possibly empty)."""
        return b"".join(self._h2.chunks_to_send())

    def chunks_to_send(self) -> list[Buffer]:
        """:meth:`data_to_send` as a list of buffers, tunnel payloads not copied.

        The buffers stay valid as long as the caller of :meth:`send_data` does not
        mutate what it passed (the shell passes ``bytes``).
        """
        chunks: list[Buffer] = self._h2.chunks_to_send()  # a new list every time
        return chunks

    def receive_data(self, data: Buffer) -> list[HboneEvent]:
        """Feed bytes from the transport; return what they meant."""
        if self.closed:
            return []
        try:
            raw_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            # h2 has queued a GOAWAY with the error's code; the connection is done.
            self.closed = True
            return [ConnectionEnded(int(err.error_code), f"protocol error: {err}", remote=False)]
        events: list[HboneEvent] = []
        for raw in raw_events:
            if type(raw) is DataReceived:
                events.append(raw)  # a tunnel chunk from the fast path: already ours
            else:
                events.extend(self._translate(raw))
        return events

    def _translate(self, raw: object) -> list[HboneEvent]:
        events: list[HboneEvent] = []
        if isinstance(raw, h2.events.DataReceived):
            # h2 reports END_STREAM as its own StreamEnded event right after; an
            # empty DATA frame still counts against flow control (padding).
            if raw.data:
                events.append(
                    DataReceived(int(raw.stream_id), raw.data, int(raw.flow_controlled_length))
                )
            elif raw.flow_controlled_length:
                self.acknowledge(int(raw.stream_id), int(raw.flow_controlled_length))
        elif isinstance(raw, h2.events.StreamEnded):
            stream_id = int(raw.stream_id)
            events.append(PeerHalfClosed(stream_id))
            self._release_if_closed(stream_id)
        elif isinstance(raw, h2.events.StreamReset):
            self._forget(int(raw.stream_id))
            self._ended_locally.discard(int(raw.stream_id))
            events.append(
                StreamReset(int(raw.stream_id), int(raw.error_code or 0), bool(raw.remote_reset))
            )
        elif isinstance(raw, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            events.extend(self._flush_all())
        elif isinstance(raw, h2.events.ConnectionTerminated):
            self.closed = True
            detail = bytes(raw.additional_data or b"").decode("utf-8", "replace")
            reason = f"peer sent GOAWAY {detail}".strip()
            events.append(ConnectionEnded(int(raw.error_code or 0), reason, remote=True))
        else:
            events.extend(self._translate_headers(raw))
        return events

    def _translate_headers(self, raw: object) -> list[HboneEvent]:
        """Peer-specific handling of request/response headers; the rest is ignored."""
        return []

    # --- sending ----------------------------------------------------------

    def send_data(self, stream_id: int, data: Buffer) -> None:
        """Queue tunnel bytes for the peer; they go out as flow-control windows allow.

        ``data`` is framed without being copied: do not mutate it afterwards.
        """
        if stream_id in self._ended_locally:
            raise HboneStreamError(
                f"stream {stream_id} is half-closed: no more data may be sent",
                error_code=STREAM_CLOSED,
                stream_id=stream_id,
            )
        if data:
            self._pending.setdefault(stream_id, collections.deque()).append(memoryview(data))
            self._pending_bytes[stream_id] = self._pending_bytes.get(stream_id, 0) + len(data)
        self._flush(stream_id)

    def pending(self, stream_id: int) -> int:
        """Bytes queued for ``stream_id`` but not yet framed (waiting for window)."""
        return self._pending_bytes.get(stream_id, 0)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side once the queued bytes have gone out."""
        self._end_after_flush.add(stream_id)
        self._ended_locally.add(stream_id)
        self._pending.setdefault(stream_id, collections.deque())
        self._flush(stream_id)
        self._release_if_closed(stream_id)

    def reset_stream(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Abort a tunnel with RST_STREAM; queued bytes are dropped."""
        self._forget(stream_id)
        self._ended_locally.discard(stream_id)
        try:
            self._h2.reset_stream(stream_id, error_code=error_code)
        except h2.exceptions.StreamClosedError:
            pass  # already gone: nothing to abort
        except h2.exceptions.ProtocolError as err:
            raise HboneStreamError(str(err), error_code=error_code, stream_id=stream_id) from err

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The shell consumed ``size`` received bytes: reopen the peer's windows."""
        if size <= 0:
            return
        conn = self._h2
        stream = conn.streams.get(stream_id)
        if stream is not None and stream.open:
            # What h2's acknowledge_received_data does for an open stream (its window
            # managers decide; WINDOW_UPDATEs only when they say so), minus two log
            # calls and its lookups: every tunnel chunk is acknowledged here.
            connection_increment = conn._inbound_flow_control_window_manager.process_bytes(size)
            stream_increment = stream._inbound_window_manager.process_bytes(size)
            if connection_increment or stream_increment:
                frames = []
                for target, increment in ((0, connection_increment), (stream_id, stream_increment)):
                    if increment:
                        frame = hyperframe.frame.WindowUpdateFrame(target)
                        frame.window_increment = increment
                        frames.append(frame)
                conn._prepare_for_sending(frames)
            return
        try:
            self._h2.acknowledge_received_data(size, stream_id)
        except h2.exceptions.StreamClosedError:
            # The stream is gone, but the connection window still counts those bytes.
            self._h2.increment_flow_control_window(size)

    def close(self, error_code: int = NO_ERROR) -> None:
        """Send GOAWAY: no new tunnels; the transport may close after flushing."""
        if not self.closed:
            self.closed = True
            self._h2.close_connection(error_code=error_code)

    def open_streams(self) -> int:
        """Tunnels currently open on this connection (both directions)."""
        return int(self._h2.open_inbound_streams) + int(self._h2.open_outbound_streams)

    def _forget(self, stream_id: int) -> None:
        self._pending.pop(stream_id, None)
        self._pending_bytes.pop(stream_id, None)
        self._end_after_flush.discard(stream_id)

    def _release_if_closed(self, stream_id: int) -> None:
        """Drop per-stream bookkeeping once h2 considers the stream closed."""
        stream = self._h2.streams.get(stream_id)
        if stream is None or stream.closed:
            self._forget(stream_id)
            self._ended_locally.discard(stream_id)
            self._stream_closed(stream_id)

    def _stream_closed(self, stream_id: int) -> None:
        """Hook for peer-specific cleanup when a stream is fully closed."""

    def _flush_all(self) -> list[HboneEvent]:
        events: list[HboneEvent] = []
        for stream_id in list(self._pending):
            if self._flush(stream_id):
                events.append(Drained(stream_id))
        return events

    def _flush(self, stream_id: int) -> bool:
        """Frame what the windows allow; True when the stream's buffer just emptied."""
        buffer = self._pending.get(stream_id)
        if buffer is None:
            return False
        had_data = bool(buffer)
        conn = self._h2
        stream = conn.streams.get(stream_id)
        # A stream that may send on an open connection (the usual case): frames are
        # queued directly, windows charged as h2 would; anything else goes through h2.
        direct = (
            stream is not None
            and (
                conn.state_machine.state is _CLIENT_OPEN or conn.state_machine.state is _SERVER_OPEN
            )
            and (
                stream.state_machine.state is _STREAM_OPEN
                or stream.state_machine.state is _STREAM_HALF_CLOSED_REMOTE
            )
        )
        try:
            while buffer:
                if direct:
                    window = min(
                        conn.outbound_flow_control_window, stream.outbound_flow_control_window
                    )
                else:
                    window = int(conn.local_flow_control_window(stream_id))
                head = buffer[0]
                size = min(window, int(conn.max_outbound_frame_size), len(head))
                if size <= 0:
                    return False
                if size < len(head):
                    buffer[0] = head[size:]
                    head = head[:size]
                else:
                    buffer.popleft()
                self._pending_bytes[stream_id] -= size
                if direct:
                    conn.outbound_flow_control_window -= size
                    stream.outbound_flow_control_window -= size
                    conn.send_data_frame(stream_id, head)
                else:
                    conn.send_data(stream_id, _Payload(head))
            if stream_id in self._end_after_flush:
                self._h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # The peer reset or closed the stream meanwhile: its bytes have nowhere to go.
            self._forget(stream_id)
            return False
        self._forget(stream_id)
        return had_data


_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
_RESPONSE_PSEUDO = frozenset((b":status",))
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
# RFC 9113 8.2.1: a name has no byte in 0x00-0x20, 0x41-0x5a (upper case) or 0x7f-0xff,
# and no colon past a pseudo-header's first byte; a value has no NUL, CR or LF and no
# leading or trailing space or tab.
_BAD_NAME_BYTE = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def malformed_fields(fields: Iterable[tuple[bytes, bytes]], *, request: bool) -> str | None:
    """Why a received request's (or response's) header block is malformed, or ``None``.

    RFC 9113 sections 8.2 and 8.3, as h2 checks them: field names and values,
    connection-specific fields, ``te``, the pseudo-header fields (known, once each,
    before the others, those a request or a response must and must not have, the
    CONNECT forms) and ``:authority`` against ``host``.
    """
    allowed = _REQUEST_PSEUDO if request else _RESPONSE_PSEUDO
    pseudo: dict[bytes, bytes] = {}
    hosts: list[bytes] = []
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            problem = _pseudo_field_problem(name, pseudo, allowed, after_regular=regular)
            pseudo[name] = value
        else:
            regular = True
            problem = _regular_field_problem(name, value)
            if name == b"host":
                hosts.append(value)
        if problem is None and value and _BAD_VALUE.search(value):
            problem = f"illegal character or surrounding whitespace in the value of {name!r}"
        if problem is not None:
            return problem
    if not request:
        return None if b":status" in pseudo else "a response without :status"
    return _request_form_problem(pseudo) or _authority_problem(pseudo, hosts)


def _pseudo_field_problem(
    name: bytes, seen: Mapping[bytes, bytes], allowed: frozenset[bytes], *, after_regular: bool
) -> str | None:
    if after_regular:
        return f"pseudo-header field {name!r} after a regular field"
    if name in seen:
        return f"duplicate pseudo-header field {name!r}"
    if name not in allowed:
        return f"pseudo-header field {name!r} is not allowed here"
    return None


def _regular_field_problem(name: bytes, value: bytes) -> str | None:
    if not name:
        return "an empty field name"
    if _BAD_NAME_BYTE.search(name):
        return f"illegal character in field name {name!r}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {name!r}"
    if name == b"te" and value.lower() != b"trailers":
        return f"te field {value!r} (only 'trailers' is allowed)"
    return None


def _request_form_problem(pseudo: Mapping[bytes, bytes]) -> str | None:
    """The pseudo-header fields a request must and must not have (its CONNECT forms too)."""
    method = pseudo.get(b":method")
    if method is None:
        return "a request without :method"
    if method == b"CONNECT" and b":protocol" not in pseudo:
        plain = b":scheme" not in pseudo and b":path" not in pseudo
        return None if plain else "a CONNECT with :scheme or :path"
    if b":scheme" not in pseudo or b":path" not in pseudo:
        return "a request without :scheme or :path"
    if method != b"CONNECT" and b":protocol" in pseudo:
        return ":protocol outside CONNECT"
    if not pseudo[b":path"]:
        return "an empty :path"
    return None


def _authority_problem(pseudo: Mapping[bytes, bytes], hosts: list[bytes]) -> str | None:
    authority = pseudo.get(b":authority")
    if len(hosts) > 1:
        return "more than one host field"
    if authority is None and not hosts:
        return "a request without :authority or host"
    if authority is not None and hosts and authority != hosts[0]:
        return ":authority and host differ"
    return None


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("ascii", "replace").lower()
        text = value.decode("utf-8", "replace")
        out[key] = f"{out[key]},{text}" if key in out else text
    return out


class HboneServer(_HboneConnection):
    """The 15008 side of an HBONE connection."""

    def __init__(self, settings: HboneSettings | None = None) -> None:
        super().__init__(settings or HboneSettings(), client_side=False)
        self._tunnels: set[int] = set()

    def _translate_headers(self, raw: object) -> list[HboneEvent]:
        if not isinstance(raw, h2.events.RequestReceived):
            return []
        stream_id = int(raw.stream_id)
        # Our own count, not h2's: ours holds before the peer has ACKed our SETTINGS.
        if len(self._tunnels) >= self.settings.max_concurrent_streams:
            self.reset_stream(stream_id, REFUSED_STREAM)
            return [TunnelRejected(stream_id, 0, "too many concurrent tunnels")]
        problem = malformed_fields(raw.headers, request=True)
        if problem is not None:
            # A stream error (RFC 9113 8.1.1): the other tunnels on the connection go on.
            self.reset_stream(stream_id, PROTOCOL_ERROR)
            return [TunnelRejected(stream_id, 0, f"malformed request: {problem}")]
        headers = _headers(raw.headers)
        try:
            request = self._parse_request(headers, ended=raw.stream_ended is not None)
        except ValueError as err:
            self.respond(stream_id, 400, end=True)
            return [TunnelRejected(stream_id, 400, str(err))]
        self._tunnels.add(stream_id)
        return [TunnelRequested(stream_id, request)]

    @staticmethod
    def _parse_request(headers: Mapping[str, str], *, ended: bool) -> TunnelRequest:
        method = headers.get(":method", "")
        if method != "CONNECT":
            raise ValueError(f"method {method!r} is not CONNECT")
        if ended:
            raise ValueError("CONNECT request ended the stream: no tunnel to open")
        authority = Authority.parse(headers.get(":authority", ""))
        forwarded_for, forwarded_host = parse_forwarded(headers.get("forwarded", ""))
        traceparent = headers.get("traceparent")
        return TunnelRequest(
            authority=authority,
            forwarded_for=forwarded_for,
            forwarded_host=forwarded_host,
            baggage=_baggage_of(headers.get("baggage", "")),
            traceparent=traceparent if traceparent and _TRACEPARENT.match(traceparent) else None,
        )

    def respond(
        self,
        stream_id: int,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        *,
        end: bool | None = None,
    ) -> None:
        """Answer a CONNECT: 200 opens the tunnel; any other status also ends the stream."""
        if end is None:
            end = not 200 <= status < 300
        block = [(b":status", str(status).encode())]
        block += [(k.lower().encode(), v.encode()) for k, v in headers]
        try:
            self._h2.send_headers(stream_id, block, end_stream=end)
        except h2.exceptions.ProtocolError as err:
            raise HboneStreamError(
                f"cannot answer stream {stream_id}: {err}",
                error_code=INTERNAL_ERROR,
                stream_id=stream_id,
            ) from err
        if end:
            self._tunnels.discard(stream_id)
            self._ended_locally.add(stream_id)
            self._release_if_closed(stream_id)

    def _translate(self, raw: object) -> list[HboneEvent]:
        events = super()._translate(raw)
        for event in events:
            if isinstance(event, StreamReset):
                self._tunnels.discard(event.stream_id)
        return events

    def _stream_closed(self, stream_id: int) -> None:
        self._tunnels.discard(stream_id)

    def reset_stream(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Abort a tunnel with RST_STREAM."""
        self._tunnels.discard(stream_id)
        super().reset_stream(stream_id, error_code)

    @property
    def tunnels(self) -> int:
        """Tunnels accepted and not yet closed (counted against the stream limit)."""
        return len(self._tunnels)


class HboneClient(_HboneConnection):
    """The dialing side of an HBONE connection (one pooled connection)."""

    def __init__(self, settings: HboneSettings | None = None) -> None:
        super().__init__(settings or HboneSettings(), client_side=True)

    def open_tunnel(self, request: TunnelRequest) -> int:
        """Send a CONNECT for ``request``; return its stream id (await :class:`TunnelResponse`)."""
        if self.closed:
            raise HboneError("the HBONE connection is closed", error_code=NO_ERROR)
        stream_id = int(self._h2.get_next_available_stream_id())
        try:
            # h2 counts the open streams against the peer's limit itself (a walk over
            # them): not counted a second time here first.
            self._h2.send_headers(stream_id, request.headers(), end_stream=False)
        except h2.exceptions.TooManyStreamsError as err:
            raise HboneStreamError(
                "no stream available on this HBONE connection",
                error_code=REFUSED_STREAM,
                hint="the pool opens another connection when one is full",
            ) from err
        return stream_id

    def available_streams(self) -> int:
        """How many more tunnels the peer allows now (its MAX_CONCURRENT_STREAMS)."""
        allowed = int(self._h2.remote_settings.max_concurrent_streams)
        return allowed - int(self._h2.open_outbound_streams)

    def _translate_headers(self, raw: object) -> list[HboneEvent]:
        if not isinstance(raw, h2.events.ResponseReceived):
            return []
        stream_id = int(raw.stream_id)
        problem = malformed_fields(raw.headers, request=False)
        if problem is not None:
            self.reset_stream(stream_id, PROTOCOL_ERROR)
            return [StreamReset(stream_id, PROTOCOL_ERROR, remote=False)]
        headers = _headers(raw.headers)
        try:
            status = int(headers.pop(":status", "0"))
        except ValueError:
            status = 0
        return [TunnelResponse(stream_id, status, headers)]


__all__ = [
    "CANCEL",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "Authority",
    "ConnectionEnded",
    "DataReceived",
    "Drained",
    "HboneClient",
    "HboneEvent",
    "HboneServer",
    "HboneSettings",
    "PeerHalfClosed",
    "StreamReset",
    "TunnelRejected",
    "TunnelRequest",
    "TunnelRequested",
    "TunnelResponse",
    "format_baggage",
    "malformed_fields",
    "parse_baggage",
    "parse_forwarded",
]
