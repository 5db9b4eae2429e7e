"""Reading what crossed the lab's fabric: a pcap file into TCP segments and TLS facts.

The demo and the tests capture on the fabric bridge with ``tcpdump -w`` and ask one
question of the file: did anything but TLS cross between the nodes? This module answers
it without third-party parsers: classic pcap (Ethernet, Linux cooked v1/v2, raw IP),
IPv4 TCP, and the TLS record layer (RFC 8446 section 5).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<"}
_LINKTYPE_ETHERNET = 1
_LINKTYPE_RAW = 101
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_LINUX_SLL2 = 276
_ETH_P_IP = 0x0800
_IPPROTO_TCP = 6

TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}
_HANDSHAKE_SERVER_HELLO = 2
_EXT_SUPPORTED_VERSIONS = 43
TLS13 = 0x0304


class PcapError(ValueError):
    """The capture file is not a pcap file we can read."""


@dataclass(frozen=True)
class Segment:
    """One TCP segment with payload, as captured."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    seq: int = 0


@dataclass
class TlsSummary:
    """What the TCP payloads of a capture were, seen as TLS streams."""

    segments: int = 0
    """TCP segments that carried payload."""
    ports: set[int] = field(default_factory=set)
    """The lower (service) port of every flow that carried payload."""
    record_types: dict[str, int] = field(default_factory=dict)
    """TLS records by content type, over every flow."""
    non_tls_flows: list[str] = field(default_factory=list)
    """Flows whose bytes did not parse as TLS records ("src:port > dst:port")."""
    gapped_flows: list[str] = field(default_factory=list)
    """Flows with a sequence gap (a packet the capture lost); read up to the gap only."""
    tls13_server_hellos: int = 0
    """ServerHellos that selected TLS 1.3 (supported_versions = 0x0304)."""

    @property
    def only_tls(self) -> bool:
        """True when payload crossed and every flow was TLS records from its first byte."""
        return self.segments > 0 and not self.non_tls_flows


def read_segments(data: bytes) -> Iterator[Segment]:
    """Yields the IPv4 TCP segments with payload of a classic pcap file."""
    if len(data) < 24 or data[:4] not in _MAGIC:
        raise PcapError("not a classic pcap file (bad magic); was it written by tcpdump -w?")
    order = _MAGIC[data[:4]]
    linktype = struct.unpack(order + "I", data[20:24])[0]
    offset = 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack(order + "I", data[offset + 8 : offset + 12])[0]
        frame = data[offset + 16 : offset + 16 + incl_len]
        offset += 16 + incl_len
        ip = _ip_packet(frame, linktype)
        if ip is not None:
            segment = _tcp_segment(ip)
            if segment is not None and segment.payload:
                yield segment


def _ip_packet(frame: bytes, linktype: int) -> bytes | None:
    if linktype == _LINKTYPE_ETHERNET and len(frame) >= 14:
        ethertype, start = struct.unpack("!H", frame[12:14])[0], 14
        if ethertype == 0x8100 and len(frame) >= 18:  # one VLAN tag
            ethertype, start = struct.unpack("!H", frame[16:18])[0], 18
        return frame[start:] if ethertype == _ETH_P_IP else None
    if linktype == _LINKTYPE_LINUX_SLL and len(frame) >= 16:
        return frame[16:] if struct.unpack("!H", frame[14:16])[0] == _ETH_P_IP else None
    if linktype == _LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        return frame[20:] if struct.unpack("!H", frame[0:2])[0] == _ETH_P_IP else None
    if linktype == _LINKTYPE_RAW:
        return frame
    return None


def _tcp_segment(ip: bytes) -> Segment | None:
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != _IPPROTO_TCP:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    tcp = ip[ihl:total] if total >= ihl else ip[ihl:]
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    data_offset = (tcp[12] >> 4) * 4
    return Segment(
        src=str(IPv4Address(ip[12:16])),
        sport=sport,
        dst=str(IPv4Address(ip[16:20])),
        dport=dport,
        payload=bytes(tcp[data_offset:]),
        seq=seq,
    )


def summarize_tls(segments: Iterator[Segment] | list[Segment]) -> TlsSummary:
    """Reassembles each direction of each flow (in capture order) and reads TLS records.

    A flow counts as TLS only if its bytes are a run of well-formed TLS records from the
    first byte on (a capture that starts mid-flow reports it as non-TLS: start the
    capture before the connection, as the demo does). A segment seen twice (``tcpdump
    -i any`` sees a bridged packet on the way in and out) counts once.
    """
    summary = TlsSummary()
    flows: dict[tuple[str, int, str, int], dict[int, bytes]] = {}
    for seg in segments:
        by_seq = flows.setdefault((seg.src, seg.sport, seg.dst, seg.dport), {})
        if seg.seq in by_seq:
            continue
        by_seq[seg.seq] = seg.payload
        summary.segments += 1
        summary.ports.add(min(seg.sport, seg.dport))
    for (src, sport, dst, dport), by_seq in flows.items():
        name = f"{src}:{sport} > {dst}:{dport}"
        stream, gapped = _reassemble(by_seq)
        if gapped:
            summary.gapped_flows.append(name)
        if not _read_records(stream, summary):
            summary.non_tls_flows.append(name)
    return summary


def _reassemble(by_seq: dict[int, bytes]) -> tuple[bytes, bool]:
    """The flow's bytes in sequence order from its first segment, up to any gap."""
    ref = next(iter(by_seq))
    # sequence numbers wrap: order by signed distance from the first segment captured
    first = min(by_seq, key=lambda q: ((q - ref + (1 << 31)) % (1 << 32)) - (1 << 31))
    out = bytearray()
    expected = first
    for seq in sorted(by_seq, key=lambda q: (q - first) % (1 << 32)):
        offset = (seq - expected) % (1 << 32)
        if offset > 0 and offset < (1 << 31):
            return bytes(out), True
        payload = by_seq[seq][(expected - seq) % (1 << 32) :] if offset else by_seq[seq]
        out += payload
        expected = (expected + len(payload)) % (1 << 32)
    return bytes(out), False


def _read_records(stream: bytes, summary: TlsSummary) -> bool:
    offset = 0
    while offset + 5 <= len(stream):
        ctype, major, _minor, length = struct.unpack("!BBBH", stream[offset : offset + 5])
        if ctype not in TLS_CONTENT_TYPES or major != 3 or length > (1 << 14) + 256:
            return False
        body = stream[offset + 5 : offset + 5 + length]
        name = TLS_CONTENT_TYPES[ctype]
        summary.record_types[name] = summary.record_types.get(name, 0) + 1
        if ctype == 22 and _selects_tls13(body):
            summary.tls13_server_hellos += 1
        offset += 5 + length
    # a trailing partial record (capture cut short) is fine; garbage is not
    return offset <= len(stream)


def _selects_tls13(handshake: bytes) -> bool:
    """True for a ServerHello whose supported_versions extension says TLS 1.3."""
    if len(handshake) < 4 or handshake[0] != _HANDSHAKE_SERVER_HELLO:
        return False
    body = handshake[4 : 4 + int.from_bytes(handshake[1:4], "big")]
    pos = 2 + 32  # legacy_version, random
    if pos >= len(body):
        return False
    pos += 1 + body[pos]  # legacy_session_id_echo
    pos += 2 + 1  # cipher_suite, legacy_compression_method
    if pos + 2 > len(body):
        return False
    end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
    pos += 2
    while pos + 4 <= min(end, len(body)):
        ext_type, ext_len = struct.unpack("!HH", body[pos : pos + 4])
        if ext_type == _EXT_SUPPORTED_VERSIONS and ext_len == 2:
            return int.from_bytes(body[pos + 4 : pos + 6], "big") == TLS13
        pos += 4 + ext_len
    return False


def contains(segments: list[Segment], marker: bytes) -> bool:
    """True if any single payload holds ``marker`` (plaintext that should not be there)."""
    return any(marker in seg.payload for seg in segments)
