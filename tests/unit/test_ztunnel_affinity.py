"""The pair-affinity reuseport program, run on IP headers by a small classic-BPF evaluator.

The kernel runs the program (tests/integration/test_ztunnel_sockets.py shows it choosing
listeners); here its arithmetic is checked without sockets: an index within the group,
the same for every connection of a client-server pair whatever the ports, and spread
over the whole group by different pairs, for IPv4 and IPv6.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

import pytest

from ztunnel.proxy.affinity import Instruction, pair_affinity_program

NET_OFF = 0x100000


def run(program: list[Instruction], ip_header: bytes) -> int:
    """Evaluate the opcodes the program uses, loads relative to the network header."""

    def load(k: int, size: int) -> int:
        offset = k - (0x100000000 - NET_OFF)  # SKF_NET_OFF + offset, as unsigned 32 bits
        assert 0 <= offset <= len(ip_header) - size, f"load outside the header at {offset}"
        return int.from_bytes(ip_header[offset : offset + size], "big")

    a = x = 0
    pc = 0
    for _ in range(64):  # bounded: classic BPF only jumps forward
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x30:
            a = load(k, 1)
        elif code == 0x20:
            a = load(k, 4)
        elif code == 0x07:
            x = a
        elif code == 0x74:
            a = (a >> k) & 0xFFFFFFFF
        elif code == 0xAC:
            a ^= x
        elif code == 0x94:
            a %= k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x05:
            pc += k
        elif code == 0x16:
            return a
        else:
            raise AssertionError(f"opcode {code:#x} not expected in the program")
    raise AssertionError("the program did not return")


def ipv4_header(src: str, dst: str) -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 60, 1, 0, 64, 6, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip


def ipv6_header(src: str, dst: str) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, 40, 6, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
    )


@pytest.mark.parametrize("workers", [2, 3, 4, 8])
def test_every_pod_pair_gets_an_index_within_the_group_and_all_indexes_are_used(
    workers: int,
) -> None:
    program = pair_affinity_program(workers)
    chosen = Counter(
        run(program, ipv4_header(f"10.244.1.{client}", f"10.244.2.{server}"))
        for client in range(2, 34)
        for server in range(2, 10)
    )
    assert set(chosen) == set(range(workers))
    # Spread, not piled on one worker: no index takes more than twice its share.
    assert max(chosen.values()) <= 2 * 256 / workers


def test_a_pair_always_gets_the_same_index_and_the_ports_play_no_part() -> None:
    program = pair_affinity_program(4)
    header = ipv4_header("10.244.1.7", "10.96.0.10")
    assert len({run(program, header) for _ in range(3)}) == 1
    # The program reads the IP header only: the same pair on any ports is the same
    # packet to it. A different client or server may land elsewhere.
    others = {run(program, ipv4_header(f"10.244.1.{n}", "10.96.0.10")) for n in range(8, 40)}
    assert len(others) > 1


def test_ipv6_pairs_use_the_addresses_last_words() -> None:
    program = pair_affinity_program(2)
    chosen = Counter(
        run(program, ipv6_header(f"fd00:10:244:1::{client:x}", "fd00:10:96::a"))
        for client in range(2, 66)
    )
    assert chosen == {0: 32, 1: 32}
    # An IPv4 packet to the same (dual-stack) listener takes the IPv4 path.
    assert run(program, ipv4_header("10.244.1.3", "10.244.2.2")) in (0, 1)


@pytest.mark.parametrize("size", [0, -1, 0x10000])
def test_a_group_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="reuseport group"):
        pair_affinity_program(size)
