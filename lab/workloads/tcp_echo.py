"""A TCP server that echoes bytes back, or swallows them and reports what it got.

``--mode echo`` (default) writes every byte back; ``--mode sink`` reads to end of
stream and then answers one JSON line ``{"bytes": N, "sha256": "...", "client": ...}``.
Both log one line per connection with the byte count and SHA-256 of what arrived, so a
test can compare it with what the sender sent.

    python -m lab.workloads.tcp_echo --listen :9000 [--mode sink]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lab.workloads.payload import parse_hostport
from lab.workloads.serving import close_quietly, peer_of, run, serve_until_signalled

READ_SIZE = 256 * 1024
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class TcpEchoConfig:
    """Configuration of one tcp_echo process."""

    host: str
    port: int
    mode: str
    """``echo`` or ``sink``."""


def parse_args(argv: Sequence[str]) -> TcpEchoConfig:
    """``--listen [host]:port`` and ``--mode echo|sink``."""
    parser = argparse.ArgumentParser(prog="tcp_echo", allow_abbrev=False)
    parser.add_argument("-listen", "--listen", default=":9000", help="[host]:port to listen on")
    parser.add_argument("--mode", choices=("echo", "sink"), default="echo")
    ns = parser.parse_args(list(argv))
    try:
        host, port = parse_hostport(ns.listen)
    except ValueError as err:
        parser.error(str(err))
    return TcpEchoConfig(host=host, port=port, mode=ns.mode)


async def _handle(
    config: TcpEchoConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    client = peer_of(writer)
    digest = hashlib.sha256()
    total = 0
    try:
        while True:
            data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
            if not data:
                break
            digest.update(data)
            total += len(data)
            if config.mode == "echo":
                writer.write(data)
                await writer.drain()
        summary = {"bytes": total, "sha256": digest.hexdigest(), "client": client}
        if config.mode == "sink":
            writer.write(json.dumps(summary).encode() + b"\n")
            await writer.drain()
        print(f"conn from {client} bytes={total} sha256={summary['sha256']}", flush=True)
    except (ConnectionError, TimeoutError) as err:
        print(f"conn from {client} failed after {total} bytes: {err!r}", flush=True)
    finally:
        await close_quietly(writer)


async def serve(config: TcpEchoConfig) -> None:
    """Serves until SIGTERM or SIGINT."""
    await serve_until_signalled(
        lambda r, w: _handle(config, r, w), config.host, config.port, f"tcp_echo ({config.mode})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    config = parse_args(sys.argv[1:] if argv is None else argv)
    return run(serve(config), "tcp_echo")


if __name__ == "__main__":
    sys.exit(main())
