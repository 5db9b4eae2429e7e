"""Running our programs on crafted packets with ``BPF_PROG_TEST_RUN``.

The kernel runs a loaded program on a packet we give it and returns the verdict, the
packet as the program left it and the average time per run. Socket lookups made by the
program search the network namespace of the calling *thread*, so :func:`in_netns` runs
a function on a thread that joined a named namespace (only that thread moves). Used by
the decision tests and the per-packet cost benchmark; attaches nothing anywhere.
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

BPF_PROG_TEST_RUN = 10
CLONE_NEWNET = 0x40000000
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
TCP_SYN, TCP_ACK = 0x02, 0x10
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_LIBC = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


class _TestRunAttr(ctypes.Structure):
    # the BPF_PROG_TEST_RUN member of union bpf_attr (uapi/linux/bpf.h)
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RunResult:
    """What one ``BPF_PROG_TEST_RUN`` returned."""

    retval: int
    """The program's TC verdict (of the last repetition)."""
    packet: bytes
    """The packet as the program left it."""
    duration_ns: int
    """Average time per repetition, measured by the kernel."""


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> RunResult:
    """Runs a loaded TC program ``repeat`` times on ``frame``."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 256)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(frame),
        data_size_out=len(data_out),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=repeat,
    )
    nr = _SYS_BPF[platform.machine()]
    if _LIBC.syscall(nr, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return RunResult(int(attr.retval), data_out.raw[: attr.data_size_out], int(attr.duration))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int, *, seq: int = 1) -> bytes:
    """An Ethernet + IPv4 + TCP packet (no options, no payload) with valid checksums."""
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800)
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    head = struct.pack("!BBHHHBB", 0x45, 0, 40, 1, 0x4000, 64, socket.IPPROTO_TCP)
    ip = head + struct.pack("!H", checksum(head + b"\0\0" + saddr + daddr)) + saddr + daddr
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    return eth + ip + tcp


def tcp_checksum_ok(frame: bytes) -> bool:
    """Whether the TCP checksum of a :func:`tcp_frame`-shaped packet verifies."""
    ip, tcp = frame[14:34], frame[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    return checksum(pseudo + tcp) == 0


def in_netns(netns: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
    """Runs ``fn`` on a thread that joined the named namespace; returns its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            box["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err
        finally:
            os.close(fd)

    thread = threading.Thread(target=body, name=f"netns-{netns}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"work in namespace {netns} did not finish in {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
