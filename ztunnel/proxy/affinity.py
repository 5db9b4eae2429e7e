"""Which worker accepts a connection: the same one for every connection of a client-server pair.

Worker processes share each listener with ``SO_REUSEPORT``; by default the kernel
spreads new connections by a hash of the whole 4-tuple, so consecutive connections
from one client to one server land on any worker. Each worker keeps its own pool of
HBONE connections, so every worker a pair reaches opens its own tunnel connection to
the peer (one TLS handshake each), and each serves the pair's connections with cold
caches: with two workers per node, a pair opened new connections about a third
slower than with one (docs/ztunnel.md, Performance).

Here a classic BPF program attached to the listener's reuseport group
(``SO_ATTACH_REUSEPORT_CBPF``) picks the group's socket from the source and
destination addresses alone: a pair's connections go to one worker, which holds its
pooled tunnel, while different pairs (a node's many pods and services) spread over
all workers. The kernel runs the program on the SYN with the packet's data at the
TCP payload; the network header is read at ``SKF_NET_OFF``. An index the group does
not have (a worker still starting) falls back to the kernel's hash.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import NamedTuple

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
"""From <asm-generic/socket.h> (Linux 4.5)."""

_SKF_NET_OFF = -0x100000
"""<linux/filter.h>: a load at this offset plus ``k`` reads the network header."""

# Classic BPF opcodes (<linux/bpf_common.h>, <linux/filter.h>).
_LD_W_ABS = 0x20
_LD_B_ABS = 0x30
_ALU_RSH_K = 0x74
_ALU_XOR_X = 0xAC
_ALU_MOD_K = 0x94
_JEQ_K = 0x15
_JA = 0x05
_TAX = 0x07
_RET_A = 0x16


class Instruction(NamedTuple):
    """One ``struct sock_filter``."""

    code: int
    jt: int
    jf: int
    k: int


def _net(offset: int) -> int:
    return (_SKF_NET_OFF + offset) & 0xFFFFFFFF


def pair_affinity_program(group_size: int) -> list[Instruction]:
    """The program: ``(src ^ dst) folded to 16 bits, modulo group_size``, IPv4 or IPv6.

    For IPv6 the addresses' last 32 bits are used (a pod's address differs from its
    neighbours' there). The result is an index into the reuseport group.
    """
    if not 1 <= group_size <= 0xFFFF:
        raise ValueError(f"a reuseport group of {group_size} sockets is out of range")
    return [
        Instruction(_LD_B_ABS, 0, 0, _net(0)),  # 0: A = first byte of the IP header
        Instruction(_ALU_RSH_K, 0, 0, 4),  # 1: A = IP version
        Instruction(_JEQ_K, 4, 0, 6),  # 2: IPv6 -> 7
        Instruction(_LD_W_ABS, 0, 0, _net(12)),  # 3: A = IPv4 source
        Instruction(_TAX, 0, 0, 0),  # 4: X = A
        Instruction(_LD_W_ABS, 0, 0, _net(16)),  # 5: A = IPv4 destination
        Instruction(_JA, 0, 0, 3),  # 6: -> 10
        Instruction(_LD_W_ABS, 0, 0, _net(20)),  # 7: A = IPv6 source, last word
        Instruction(_TAX, 0, 0, 0),  # 8: X = A
        Instruction(_LD_W_ABS, 0, 0, _net(36)),  # 9: A = IPv6 destination, last word
        Instruction(_ALU_XOR_X, 0, 0, 0),  # 10: A = src ^ dst
        Instruction(_TAX, 0, 0, 0),  # 11: X = A
        Instruction(_ALU_RSH_K, 0, 0, 16),  # 12: A >>= 16
        Instruction(_ALU_XOR_X, 0, 0, 0),  # 13: A ^= X (both halves count)
        Instruction(_ALU_MOD_K, 0, 0, group_size),  # 14: A %= group size
        Instruction(_RET_A, 0, 0, 0),  # 15: the socket's index in the group
    ]


def attach_pair_affinity(sock: socket.socket, group_size: int) -> None:
    """Make ``sock``'s reuseport group choose its socket by :func:`pair_affinity_program`.

    The program belongs to the group (the last one attached wins; every worker
    attaches the same). Raises ``OSError`` where the kernel refuses it.
    """
    program = pair_affinity_program(group_size)
    filters = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *insn) for insn in program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
