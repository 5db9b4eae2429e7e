"""HBONE (HTTP/2 CONNECT) as sans-IO: an in-memory client and server exchange bytes."""

from __future__ import annotations

import collections

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel.errors import HboneError, HboneStreamError
from ztunnel.proxy.hbone import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Authority,
    ConnectionEnded,
    DataReceived,
    Drained,
    HboneClient,
    HboneEvent,
    HboneServer,
    HboneSettings,
    PeerHalfClosed,
    StreamReset,
    TunnelRejected,
    TunnelRequest,
    TunnelRequested,
    TunnelResponse,
    malformed_fields,
    parse_baggage,
    parse_forwarded,
)

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
REQUEST = TunnelRequest(
    authority=Authority("10.244.2.5", 8080),
    forwarded_for="10.244.1.7:41234",
    forwarded_host="backend.demo.svc.cluster.local",
    baggage={"k8s.namespace.name": "demo", "k8s.deployment.name": "frontend", "cloud.region": ""},
    traceparent=TRACE,
)


class Wire:
    """Moves bytes between an in-memory client and server, collecting their events."""

    def __init__(self, client: HboneClient, server: HboneServer) -> None:
        self.client, self.server = client, server
        self.client_events: list[HboneEvent] = []
        self.server_events: list[HboneEvent] = []

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            if to_client:
                self.client_events += self.client.receive_data(to_client)
        raise AssertionError("the peers never went quiet")

    def take(self, side: str) -> list[HboneEvent]:
        events = self.client_events if side == "client" else self.server_events
        out = list(events)
        events.clear()
        return out


def connected(
    client_settings: HboneSettings | None = None, server_settings: HboneSettings | None = None
) -> Wire:
    wire = Wire(HboneClient(client_settings), HboneServer(server_settings))
    wire.client.initiate()
    wire.server.initiate()
    wire.pump()
    wire.take("client")
    wire.take("server")
    return wire


def data_of(events: list[HboneEvent], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def test_transcript_of_a_good_tunnel_with_half_closes_both_ways() -> None:
    wire = connected()
    sid = wire.client.open_tunnel(REQUEST)
    wire.pump()
    (requested,) = wire.take("server")
    assert isinstance(requested, TunnelRequested) and requested.stream_id == sid
    got = requested.request
    assert got.authority == Authority("10.244.2.5", 8080)
    assert got.forwarded_for == "10.244.1.7:41234"
    assert got.forwarded_host == "backend.demo.svc.cluster.local"
    assert got.baggage == {"k8s.namespace.name": "demo", "k8s.deployment.name": "frontend"}
    assert got.traceparent == TRACE
    assert wire.server.tunnels == 1

    wire.server.respond(sid, 200, [("baggage", "k8s.namespace.name=demo")])
    wire.pump()
    (response,) = wire.take("client")
    assert isinstance(response, TunnelResponse) and response.established
    assert response.headers["baggage"] == "k8s.namespace.name=demo"

    wire.client.send_data(sid, b"GET / HTTP/1.1\r\n\r\n")
    wire.pump()
    server_events = wire.take("server")
    assert data_of(server_events, sid) == b"GET / HTTP/1.1\r\n\r\n"
    for event in server_events:
        if isinstance(event, DataReceived):
            wire.server.acknowledge(sid, event.flow_controlled_length)

    # The client half-closes; the server still answers, then half-closes too.
    wire.client.end_stream(sid)
    wire.pump()
    assert wire.take("server") == [PeerHalfClosed(sid)]
    wire.server.send_data(sid, b"HTTP/1.1 200 OK\r\n\r\nHello")
    wire.server.end_stream(sid)
    wire.pump()
    client_events = wire.take("client")
    assert data_of(client_events, sid) == b"HTTP/1.1 200 OK\r\n\r\nHello"
    assert client_events[-1] == PeerHalfClosed(sid)
    assert wire.server.tunnels == 0 and wire.client.open_streams() == 0


def test_server_half_closes_first_and_client_keeps_sending() -> None:
    wire = connected()
    sid = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.server.respond(sid, 200)
    wire.server.end_stream(sid)
    wire.pump()
    assert [type(e) for e in wire.take("client")] == [TunnelResponse, PeerHalfClosed]
    wire.client.send_data(sid, b"late upload")
    wire.client.end_stream(sid)
    wire.pump()
    events = wire.take("server")
    assert data_of(events, sid) == b"late upload" and events[-1] == PeerHalfClosed(sid)


@pytest.mark.parametrize("status", [401, 503])
def test_refusals_end_the_stream_with_the_status(status: int) -> None:
    wire = connected()
    sid = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.take("server")
    wire.server.respond(sid, status)
    wire.pump()
    response, ended = wire.take("client")
    assert isinstance(response, TunnelResponse) and response.status == status
    assert not response.established and ended == PeerHalfClosed(sid)
    assert wire.server.tunnels == 0


def raw_h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def exchange_raw(
    conn: h2.connection.H2Connection, server: HboneServer
) -> tuple[list[HboneEvent], list[object]]:
    server_events: list[HboneEvent] = []
    client_events: list[object] = []
    for _ in range(10):
        out = conn.data_to_send()
        if out:
            server_events += server.receive_data(out)
        back = server.data_to_send()
        if back:
            client_events += conn.receive_data(back)
        if not out and not back:
            break
    return server_events, client_events


def status_of(client_events: list[object], stream_id: int) -> int | None:
    for event in client_events:
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
            return int(dict(event.headers)[b":status"])
    return None


@pytest.mark.parametrize(
    ("headers", "end_stream", "reason"),
    [
        (
            [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "x:80")],
            True,
            "not CONNECT",
        ),
        (
            [(":method", "POST"), (":scheme", "https"), (":path", "/"), (":authority", "x:80")],
            False,
            "not CONNECT",
        ),
        ([(":method", "CONNECT"), (":authority", "10.244.2.5")], False, "no port"),
        ([(":method", "CONNECT"), (":authority", "10.244.2.5:99999")], False, "invalid port"),
        ([(":method", "CONNECT"), (":authority", "10.244.2.5:8080")], True, "ended the stream"),
    ],
)
def test_malformed_requests_get_400(
    headers: list[tuple[str, str]], end_stream: bool, reason: str
) -> None:
    server = HboneServer()
    server.initiate()
    conn = raw_h2_client()
    conn.send_headers(1, headers, end_stream=end_stream)
    server_events, client_events = exchange_raw(conn, server)
    (rejected,) = [e for e in server_events if isinstance(e, TunnelRejected)]
    assert rejected.status == 400 and reason in rejected.reason
    assert status_of(client_events, 1) == 400
    assert server.tunnels == 0


def lax_h2_client() -> h2.connection.H2Connection:
    """A raw client that sends header blocks as given, malformed ones included."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    conn.initiate_connection()
    return conn


GOOD_CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.244.2.5:8080")]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(b":method", b"CONNECT"), (b":Authority", b"10.244.2.5:8080")], "not allowed"),
        ([*GOOD_CONNECT, (b"Forwarded", b"for=10.0.0.1")], "illegal character"),
        ([*GOOD_CONNECT, (b"x:y", b"1")], "illegal character"),
        ([*GOOD_CONNECT, (b"x y", b"1")], "illegal character"),
        ([*GOOD_CONNECT, (b"", b"1")], "empty field name"),
        ([*GOOD_CONNECT, (b"baggage", b"a=1\r\nx: y")], "value of b'baggage'"),
        ([*GOOD_CONNECT, (b"baggage", b" a=1")], "value of b'baggage'"),
        ([*GOOD_CONNECT, (b"baggage", b"a=1\t")], "value of b'baggage'"),
        ([*GOOD_CONNECT, (b"connection", b"close")], "connection-specific"),
        ([*GOOD_CONNECT, (b"te", b"gzip")], "te field"),
        ([(b":method", b"CONNECT"), (b"x", b"1"), (b":authority", b"a:1")], "after a regular"),
        ([*GOOD_CONNECT, (b":method", b"CONNECT")], "duplicate"),
        ([*GOOD_CONNECT, (b":status", b"200")], "not allowed"),
        ([(b":authority", b"10.244.2.5:8080")], "without :method"),
        ([*GOOD_CONNECT, (b":path", b"/")], ":scheme or :path"),
        ([(b":method", b"CONNECT")], "without :authority or host"),
        ([*GOOD_CONNECT, (b"host", b"10.244.2.6:8080")], "differ"),
        ([*GOOD_CONNECT, (b"host", b"10.244.2.5:8080"), (b"host", b"x")], "more than one"),
        ([(b":method", b"GET"), (b":authority", b"a:1"), (b":scheme", b"https")], ":scheme or"),
        (
            [(b":method", b"GET"), (b":authority", b"a:1"), (b":scheme", b"h"), (b":path", b"")],
            "empty :path",
        ),
        (
            [(b":method", b"GET"), (b":scheme", b"h"), (b":path", b"/"), (b":protocol", b"x")],
            ":protocol outside CONNECT",
        ),
    ],
)
def test_a_malformed_request_resets_its_stream_only(
    fields: list[tuple[bytes, bytes]], why: str
) -> None:
    """RFC 9113 8.1.1: a malformed request is a stream error; other tunnels go on."""
    server = HboneServer()
    server.initiate()
    conn = lax_h2_client()
    conn.send_headers(1, fields, end_stream=False)
    conn.send_headers(3, GOOD_CONNECT, end_stream=False)
    server_events, client_events = exchange_raw(conn, server)
    (rejected,) = [e for e in server_events if isinstance(e, TunnelRejected)]
    assert rejected.stream_id == 1 and rejected.status == 0
    assert "malformed request" in rejected.reason and why in rejected.reason
    resets = [e for e in client_events if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, PROTOCOL_ERROR)]
    assert [e.stream_id for e in server_events if isinstance(e, TunnelRequested)] == [3]
    server.respond(3, 200)
    _, client_events = exchange_raw(conn, server)
    assert status_of(client_events, 3) == 200
    assert server.tunnels == 1


def test_well_formed_blocks_pass_the_field_checks() -> None:
    def problem(fields: list[tuple[bytes, bytes]], request: bool = True) -> str | None:
        return malformed_fields(fields, request=request)

    assert problem(GOOD_CONNECT) is None
    assert problem([*GOOD_CONNECT, (b"host", b"10.244.2.5:8080")]) is None
    extended = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https")]
    assert problem([*extended, (b":path", b"/"), (b":authority", b"a")]) is None
    assert problem([*GOOD_CONNECT, (b"te", b"Trailers"), (b"x", b"")]) is None
    assert problem([(b":status", b"200"), (b"x-a", b"b c")], request=False) is None
    assert "without :status" in str(problem([(b"x", b"1")], request=False))
    assert "not allowed" in str(problem([(b":status", b"200"), (b":path", b"/")], request=False))


def test_a_malformed_response_resets_the_tunnel_not_the_connection() -> None:
    wire = connected()
    first = wire.client.open_tunnel(REQUEST)
    second = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.take("server")
    # The server's h2 sends what it is given: a 200 with an upper-case field name.
    wire.server._h2.send_headers(first, [(b":status", b"200"), (b"X-Bad", b"1")])
    wire.server.respond(second, 200)
    wire.pump()
    events = wire.take("client")
    assert StreamReset(first, PROTOCOL_ERROR, remote=False) in events
    assert not [e for e in events if isinstance(e, TunnelResponse) and e.stream_id == first]
    (answer,) = [e for e in events if isinstance(e, TunnelResponse)]
    assert answer.stream_id == second and answer.established
    reset = [e for e in wire.take("server") if isinstance(e, StreamReset)]
    assert reset == [StreamReset(first, PROTOCOL_ERROR, remote=True)]


def test_invalid_traceparent_is_ignored_not_fatal() -> None:
    wire = connected()
    wire.client.open_tunnel(TunnelRequest(Authority("10.0.0.1", 80), traceparent="garbage"))
    wire.pump()
    (requested,) = wire.take("server")
    assert isinstance(requested, TunnelRequested) and requested.request.traceparent is None


def test_garbage_frames_end_the_connection_with_goaway() -> None:
    wire = connected()
    # A frame header claiming a 5-byte SETTINGS frame on stream 1: a protocol error.
    events = wire.server.receive_data(b"\x00\x00\x05\x04\x00\x00\x00\x00\x01hello")
    assert len(events) == 1 and isinstance(events[0], ConnectionEnded)
    assert events[0].error_code == PROTOCOL_ERROR and not events[0].remote
    assert wire.server.closed
    client_events = wire.client.receive_data(wire.server.data_to_send())
    assert any(isinstance(e, ConnectionEnded) and e.remote for e in client_events)
    # A closed connection ignores anything further instead of raising.
    assert wire.server.receive_data(b"more junk") == []


def test_bad_preface_ends_the_connection() -> None:
    server = HboneServer()
    server.initiate()
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(events[-1], ConnectionEnded) and events[-1].error_code == PROTOCOL_ERROR


def test_stream_flood_is_refused_per_stream_and_others_go_on() -> None:
    server = HboneServer(HboneSettings(max_concurrent_streams=3))
    server.initiate()
    conn = raw_h2_client()
    # All five CONNECTs go out in the first flight, before our SETTINGS reach the client.
    for sid in (1, 3, 5, 7, 9):
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    events = server.receive_data(conn.data_to_send())
    accepted = [e.stream_id for e in events if isinstance(e, TunnelRequested)]
    refused = [e.stream_id for e in events if isinstance(e, TunnelRejected)]
    assert accepted == [1, 3, 5] and refused == [7, 9]
    client_events = conn.receive_data(server.data_to_send())
    resets = {
        e.stream_id: e.error_code for e in client_events if isinstance(e, h2.events.StreamReset)
    }
    assert resets == {7: REFUSED_STREAM, 9: REFUSED_STREAM}
    # The accepted tunnels still work; closing one frees a slot for a new one.
    server.respond(1, 200)
    server.reset_stream(3, CANCEL)
    conn.receive_data(server.data_to_send())
    conn.send_headers(11, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    events = server.receive_data(conn.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, TunnelRequested)] == [11]
    assert server.tunnels == 3


def test_oversized_header_block_ends_the_connection() -> None:
    wire = connected(server_settings=HboneSettings(max_header_list_size=4096))
    wire.client.open_tunnel(
        TunnelRequest(Authority("10.0.0.1", 80), baggage={"k8s.pod.name": "x" * 8000})
    )
    events = wire.server.receive_data(wire.client.data_to_send())
    assert isinstance(events[-1], ConnectionEnded) and events[-1].error_code == ENHANCE_YOUR_CALM


def test_windows_are_sized_for_throughput() -> None:
    wire = connected()
    sid = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.server.respond(sid, 200)
    wire.pump()
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB, beyond HTTP/2's 64 KiB default
    wire.client.send_data(sid, payload)
    assert wire.client.pending(sid) == 0  # all of it fit the 4 MiB stream window
    wire.pump()
    assert data_of(wire.take("server"), sid) == payload


def test_slow_reader_stalls_only_its_own_stream() -> None:
    small = HboneSettings(stream_window=65_535)
    wire = connected(client_settings=small, server_settings=small)
    slow = wire.client.open_tunnel(REQUEST)
    fast = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.server.respond(slow, 200)
    wire.server.respond(fast, 200)
    wire.pump()
    wire.take("client")
    wire.take("server")
    blob = b"s" * 200_000
    wire.client.send_data(slow, blob)
    wire.client.send_data(fast, b"f" * 50_000)
    wire.pump()
    events = wire.take("server")
    assert len(data_of(events, fast)) == 50_000
    received_slow = data_of(events, slow)
    assert len(received_slow) == 65_535 and wire.client.pending(slow) == 200_000 - 65_535
    # The slow side reads and acknowledges; the rest arrives and the buffer drains.
    total = received_slow
    for _ in range(10):
        for event in events:
            if isinstance(event, DataReceived):
                wire.server.acknowledge(event.stream_id, event.flow_controlled_length)
        wire.pump()
        events = wire.take("server")
        total += data_of(events, slow)
        if len(total) == len(blob):
            break
    assert total == blob
    assert Drained(slow) in wire.take("client")


def test_reset_is_reported_to_the_peer_and_frees_the_stream() -> None:
    wire = connected()
    sid = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.server.respond(sid, 200)
    wire.pump()
    wire.client.reset_stream(sid, CANCEL)
    wire.pump()
    assert StreamReset(sid, CANCEL, remote=True) in wire.take("server")
    assert wire.server.tunnels == 0
    wire.server.send_data(sid, b"into the void")  # dropped, not an exception
    assert wire.server.pending(sid) == 0


def test_sending_after_half_close_is_an_error() -> None:
    wire = connected()
    sid = wire.client.open_tunnel(REQUEST)
    wire.client.end_stream(sid)
    with pytest.raises(HboneStreamError, match="half-closed") as info:
        wire.client.send_data(sid, b"x")
    assert info.value.stream_id == sid


def test_goaway_stops_new_tunnels() -> None:
    wire = connected()
    wire.server.close()
    wire.pump()
    assert any(isinstance(e, ConnectionEnded) and e.remote for e in wire.take("client"))
    with pytest.raises(HboneError, match="closed"):
        wire.client.open_tunnel(REQUEST)


def test_client_respects_the_servers_stream_limit() -> None:
    wire = connected(server_settings=HboneSettings(max_concurrent_streams=2))
    assert wire.client.available_streams() == 2
    wire.client.open_tunnel(REQUEST)
    wire.client.open_tunnel(REQUEST)
    with pytest.raises(HboneStreamError) as info:
        wire.client.open_tunnel(REQUEST)
    assert info.value.error_code == REFUSED_STREAM


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:80", Authority("10.0.0.1", 80)),
        ("[fd00::1]:15008", Authority("fd00::1", 15008)),
        ("backend.demo.svc.cluster.local:80", Authority("backend.demo.svc.cluster.local", 80)),
    ],
)
def test_authority_parse_and_format(text: str, expected: Authority) -> None:
    assert Authority.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text", ["", "10.0.0.1", ":80", "10.0.0.1:0", "fd00::1:80", "[zz]:80", "x:8o"]
)
def test_authority_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Authority.parse(text)


def test_forwarded_and_baggage_parsing() -> None:
    assert parse_forwarded('for="10.0.0.1:1234";host=svc.ns') == ("10.0.0.1:1234", "svc.ns")
    assert parse_forwarded('for="[fd00::1]:80", for=10.0.0.9') == ("[fd00::1]:80", None)
    assert parse_forwarded("") == (None, None)
    assert parse_baggage("a=1, b=x%20y;prop=1,broken,=v") == {"a": "1", "b": "x y"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8))
def test_random_bytes_after_the_preface_never_raise(chunks: list[bytes]) -> None:
    server = HboneServer()
    server.initiate()
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    for chunk in chunks:
        events = server.receive_data(chunk)
        assert all(isinstance(e, HboneEvent) for e in events)
    server.data_to_send()


def test_connect_blocks_decode_with_a_stock_hpack_and_leave_its_table_empty() -> None:
    """Our HPACK never indexes: a stock h2 server reads every CONNECT, table untouched."""
    client = HboneClient()
    client.initiate()
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 256})
    client.receive_data(server.data_to_send())
    seen = []
    for n in range(3):
        long_value = {"k8s.pod.name": "p" * (200 + n)}  # lengths past the 7-bit prefix
        request = TunnelRequest(
            authority=Authority("10.244.2.5", 8080 + n),
            forwarded_for=f"10.244.1.7:{41234 + n}",
            baggage=long_value,
            traceparent=TRACE,
        )
        client.open_tunnel(request)
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.RequestReceived):
                seen.append(dict(event.headers))
    assert [h[b":authority"] for h in seen] == [
        b"10.244.2.5:8080",
        b"10.244.2.5:8081",
        b"10.244.2.5:8082",
    ]
    assert all(h[b":method"] == b"CONNECT" and h[b"traceparent"] == TRACE.encode() for h in seen)
    assert seen[2][b"baggage"].endswith(b"p" * 202)
    assert server.decoder.header_table.dynamic_entries == collections.deque()


MIB = 1024 * 1024


def open_tunnel_with_response(wire: Wire) -> int:
    stream_id = wire.client.open_tunnel(REQUEST)
    wire.pump()
    wire.server.respond(stream_id, 200)
    wire.pump()
    wire.take("client")
    wire.take("server")
    return stream_id


def window_accounted(connection: HboneServer | HboneClient) -> bool:
    """Every byte charged to the receive window was given back or is still unread."""
    manager = connection._h2._inbound_flow_control_window_manager
    return bool(manager.current_window_size + manager._bytes_processed == manager.max_window_size)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % len(data) for c in cuts} - {0})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(cuts=st.lists(st.integers(1, 4 * MIB), max_size=40))
@settings(max_examples=30, deadline=None)
def test_large_data_frames_split_anywhere_arrive_whole(cuts: list[int]) -> None:
    """DATA frames split anywhere across reads arrive whole and in order, and their
    window is charged and given back exactly once."""
    wire = connected()
    stream_id = open_tunnel_with_response(wire)
    payload = bytes(range(256)) * (3 * MIB // 256) + b"tail"
    wire.client.send_data(stream_id, payload)
    raw = wire.client.data_to_send()
    received = bytearray()
    pieces = 0
    for chunk in split(raw, cuts):
        for event in wire.server.receive_data(chunk):
            assert isinstance(event, DataReceived), event
            assert event.stream_id == stream_id
            received += event.data
            pieces += 1
            wire.server.acknowledge(stream_id, event.flow_controlled_length)
    assert bytes(received) == payload
    assert pieces >= 4  # frames of 1 MiB at most
    assert window_accounted(wire.server)


def test_a_data_frame_is_handed_on_as_it_arrives_without_copies() -> None:
    """A large DATA frame split across reads: each read's part of the payload is an
    event at once (not held until the frame is whole), a view of the bytes read."""
    wire = connected()
    stream_id = open_tunnel_with_response(wire)
    payload = bytes(range(256)) * 1024  # 256 KiB: one frame
    wire.client.send_data(stream_id, payload)
    raw = wire.client.data_to_send()
    assert len(raw) == 9 + len(payload)
    first, second = raw[: 9 + 100_000], raw[9 + 100_000 :]
    events = wire.server.receive_data(first)
    assert [type(e) for e in events] == [DataReceived]
    assert isinstance(events[0], DataReceived)
    assert events[0].data == payload[:100_000]
    assert events[0].flow_controlled_length == 100_000
    assert isinstance(events[0].data, memoryview) and events[0].data.obj is first
    events += wire.server.receive_data(second)
    assert data_of(events, stream_id) == payload
    assert sum(e.flow_controlled_length for e in events if isinstance(e, DataReceived)) == len(
        payload
    )
    for event in events:
        assert isinstance(event, DataReceived)
        wire.server.acknowledge(stream_id, event.flow_controlled_length)
    assert window_accounted(wire.server)


def test_the_rest_of_a_frame_for_a_stream_reset_meanwhile_is_dropped_and_its_window_returned() -> (
    None
):
    wire = connected()
    stream_id = open_tunnel_with_response(wire)
    other = open_tunnel_with_response(wire)
    payload = b"x" * (512 * 1024)
    wire.client.send_data(stream_id, payload)
    raw = wire.client.data_to_send()
    events = wire.server.receive_data(raw[:1000])
    assert data_of(events, stream_id) == payload[: 1000 - 9]
    wire.server.acknowledge(stream_id, 1000 - 9)
    wire.server.reset_stream(stream_id, CANCEL)
    assert wire.server.receive_data(raw[1000:]) == []  # nothing for a reset stream
    assert window_accounted(wire.server)
    # The connection goes on: the other tunnel still carries bytes.
    wire.client.send_data(other, b"still here")
    wire.pump()
    assert data_of(wire.take("server"), other) == b"still here"
