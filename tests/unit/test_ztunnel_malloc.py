"""The allocator thresholds ztunnel sets at start (``ztunnel.malloc``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's options"
)

# A child process (the test runner's own allocator stays as it is): whether a 300 KB
# buffer lies in the heap ([heap] in /proc/self/maps) or in a mapping of its own.
CHILD = """
import ctypes, sys
from ztunnel import malloc
took = malloc.tune() if sys.argv[1] == "tuned" else None
buffer = bytearray(300_000)
address = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
with open("/proc/self/maps") as maps:
    for line in maps:
        span, *rest = line.split()
        low, high = (int(part, 16) for part in span.split("-"))
        if low <= address < high:
            print(took, rest[-1] == "[heap]")
"""


def _child(mode: str) -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    ).stdout.split()


def test_buffers_of_a_few_hundred_kib_come_from_the_heap_once_tuned() -> None:
    assert _child("tuned") == ["True", "True"]  # taken; in the heap


def test_without_the_thresholds_such_a_buffer_is_a_mapping_of_its_own() -> None:
    assert _child("default") == ["None", "False"]  # glibc's default: mmap from 128 KiB
