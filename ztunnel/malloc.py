"""The C allocator's thresholds, set once per ztunnel process (glibc only).

``socket.recv(n)`` allocates a buffer of ``n`` bytes and shrinks it to what arrived.
ztunnel reads relayed sockets 256 KiB at a time (bulk transfers want large reads), and
glibc serves an allocation of 128 KiB or more with ``mmap`` until its adaptive threshold
rises, which happens only when a large mapped block is freed: the recv buffer, shrunk
first, never teaches it. Until then every read, even of a 100-byte request, costs an
``mmap``, an ``mremap``, a ``munmap`` and a page fault (15-17 us against 2.5 us per
send and receive of 300 bytes, docs/ztunnel.md). Whether start-up happened to free
such a block decided it; with the threshold at ``MMAP_THRESHOLD`` such buffers come
from the heap from the start, and the trim threshold is raised with it (as glibc's
adaptive rule does), so the top of the heap is not given back and taken again per read.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("ztunnel.malloc")

MMAP_THRESHOLD = 1024 * 1024
"""Allocations below this size come from the heap (glibc's default: 128 KiB)."""
TRIM_THRESHOLD = 4 * MMAP_THRESHOLD
"""Free memory the heap keeps at its top before it is returned to the kernel."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune() -> bool:
    """Set both thresholds in this process (forked workers inherit them).

    Returns whether the C library took them: ``False`` where it is not glibc (musl has
    no such options), and nothing changes there.
    """
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: the options' numbers are its own
    except (OSError, AttributeError):
        log.debug("not glibc: the allocator's thresholds are left as they are")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
