"""The pcap reader: segments out of synthetic captures, TLS facts out of their payloads."""

from __future__ import annotations

import struct

import pytest

from lab.pcap import PcapError, contains, read_segments, summarize_tls


def _pcap(frames: list[bytes], linktype: int = 1) -> bytes:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    body = b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)
    return head + body


def _tcp(
    src: str, sport: int, dst: str, dport: int, payload: bytes, *, eth: bool = True, seq: int = 0
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
        bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")),
    ) + tcp  # fmt: skip
    return (b"\x00" * 12 + b"\x08\x00" + ip) if eth else ip


def _record(ctype: int, body: bytes) -> bytes:
    return struct.pack("!BBBH", ctype, 3, 3, len(body)) + body


def _server_hello(version: int) -> bytes:
    ext = struct.pack("!HHH", 43, 2, version)
    body = struct.pack("!H", 0x0303) + b"\x11" * 32 + b"\x00" + b"\x13\x01" + b"\x00"
    body += struct.pack("!H", len(ext)) + ext
    return b"\x02" + len(body).to_bytes(3, "big") + body


def test_tls13_flow_is_recognised() -> None:
    hello = _record(22, _server_hello(0x0304))
    data = _record(23, b"\x99" * 100)
    first = hello + data[:50]
    cap = _pcap([
        _tcp("172.30.1.11", 40000, "10.244.2.2", 15008, _record(22, b"\x01\x00\x00\x00")),
        _tcp("10.244.2.2", 15008, "172.30.1.11", 40000, first, seq=1),
        _tcp("10.244.2.2", 15008, "172.30.1.11", 40000, first, seq=1),  # seen twice on a bridge
        _tcp("10.244.2.2", 15008, "172.30.1.11", 40000, data[50:], seq=1 + len(first)),
    ])  # fmt: skip
    segments = list(read_segments(cap))
    assert [s.dport for s in segments] == [15008, 40000, 40000, 40000]
    summary = summarize_tls(segments)
    assert summary.only_tls
    assert summary.ports == {15008}
    assert summary.tls13_server_hellos == 1
    assert summary.record_types == {"handshake": 2, "application_data": 1}


def test_tls12_server_hello_is_not_counted_as_13() -> None:
    cap = _pcap([_tcp("1.1.1.1", 15008, "2.2.2.2", 5000, _record(22, _server_hello(0x0303)))])
    assert summarize_tls(list(read_segments(cap))).tls13_server_hellos == 0


def test_plaintext_flow_is_reported_and_found() -> None:
    cap = _pcap([_tcp("10.244.1.2", 5555, "10.244.2.2", 5678, b"GET / HTTP/1.1\r\n\r\n")])
    segments = list(read_segments(cap))
    summary = summarize_tls(segments)
    assert not summary.only_tls
    assert summary.non_tls_flows == ["10.244.1.2:5555 > 10.244.2.2:5678"]
    assert contains(segments, b"GET /")
    assert not contains(segments, b"POST")


def test_raw_ip_linktype_and_empty_capture() -> None:
    cap = _pcap([_tcp("1.1.1.1", 1, "2.2.2.2", 2, b"x", eth=False)], linktype=101)
    assert [s.payload for s in read_segments(cap)] == [b"x"]
    empty = summarize_tls([])
    assert not empty.only_tls  # nothing crossed: no evidence either way


def test_not_a_pcap() -> None:
    with pytest.raises(PcapError):
        list(read_segments(b"hello world, this is no capture file"))


def test_a_lost_packet_is_a_gap_not_plaintext() -> None:
    rec = _record(23, b"\x01" * 40)
    cap = _pcap([
        _tcp("1.1.1.1", 15008, "2.2.2.2", 5000, rec, seq=100),
        # the next record (seq 145) was lost by the capture
        _tcp("1.1.1.1", 15008, "2.2.2.2", 5000, rec, seq=190),
    ])  # fmt: skip
    summary = summarize_tls(list(read_segments(cap)))
    assert summary.gapped_flows == ["1.1.1.1:15008 > 2.2.2.2:5000"]
    assert summary.non_tls_flows == []
    assert summary.record_types == {"application_data": 1}


def test_out_of_order_segments_are_put_in_sequence() -> None:
    rec = _record(23, b"\x02" * 30)
    cap = _pcap([
        _tcp("1.1.1.1", 15008, "2.2.2.2", 5000, rec[10:], seq=11),
        _tcp("1.1.1.1", 15008, "2.2.2.2", 5000, rec[:10], seq=1),
    ])  # fmt: skip
    summary = summarize_tls(list(read_segments(cap)))
    assert summary.only_tls and not summary.gapped_flows
