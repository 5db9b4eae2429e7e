"""Deterministic bulk data both ends of a transfer can generate and check.

The stream for a seed is one 64 KiB block (SHAKE-256 of the seed) repeated; its
SHA-256 over ``n`` bytes is what sender and receiver compare.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

BLOCK_SIZE = 64 * 1024
DEFAULT_SEED = "ambient-lab"


def block(seed: str = DEFAULT_SEED) -> bytes:
    """The 64 KiB block the stream repeats."""
    return hashlib.shake_256(seed.encode()).digest(BLOCK_SIZE)


def chunks(size: int, seed: str = DEFAULT_SEED) -> Iterator[bytes]:
    """The first ``size`` bytes of the stream, in blocks."""
    data = block(seed)
    left = size
    while left > 0:
        piece = data if left >= len(data) else data[:left]
        left -= len(piece)
        yield piece


def expected_sha256(size: int, seed: str = DEFAULT_SEED) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of the stream."""
    digest = hashlib.sha256()
    for piece in chunks(size, seed):
        digest.update(piece)
    return digest.hexdigest()


def parse_hostport(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``host:port``, ``:port`` or ``port`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{value!r} is not host:port") from None
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range in {value!r}")
    return host, number
