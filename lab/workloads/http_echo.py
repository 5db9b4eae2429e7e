"""An HTTP/1.1 echo server, like hashicorp/http-echo, that also says who called.

Every request is answered ``200`` with the configured text, a second line
``client: <ip>:<port>`` (the peer address this server saw) and the same address in an
``X-Client-Addr`` header; ``/health`` answers ``ok``. Keep-alive is supported.

    python -m lab.workloads.http_echo -text="Hello from v1" -listen=:8080
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lab.workloads.payload import parse_hostport
from lab.workloads.serving import close_quietly, peer_of, run, serve_until_signalled

MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT = 30.0
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class EchoConfig:
    """Configuration of one http_echo process."""

    text: str
    """First line of every answer."""
    host: str
    """Address to bind (``0.0.0.0`` for all)."""
    port: int
    """TCP port to listen on."""
    quiet: bool
    """No per-request log line (for benchmarks)."""


def parse_args(argv: Sequence[str]) -> EchoConfig:
    """Flags in both hashicorp style (``-text=x``) and GNU style (``--text x``)."""
    parser = argparse.ArgumentParser(prog="http_echo", allow_abbrev=False)
    parser.add_argument("-text", "--text", default="hello-world", help="answer text")
    parser.add_argument("-listen", "--listen", default=":5678", help="[host]:port to listen on")
    parser.add_argument("-quiet", "--quiet", action="store_true", help="no request log")
    ns = parser.parse_args(list(argv))
    try:
        host, port = parse_hostport(ns.listen)
    except ValueError as err:
        parser.error(str(err))
    return EchoConfig(text=ns.text, host=host, port=port, quiet=ns.quiet)


def response(status: str, body: bytes, client: str, keep_alive: bool) -> bytes:
    """An HTTP/1.1 response with the headers this server always sends."""
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Client-Addr: {client}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "\r\n"
    )
    return head.encode() + body


def answer_body(text: str, client: str) -> bytes:
    """The body: the text, then the client address seen."""
    return f"{text}\nclient: {client}\n".encode()


async def _handle(
    config: EchoConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    client = peer_of(writer)
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                writer.write(response("400 Bad Request", b"bad request\n", client, False))
                await writer.drain()
                return
            method, path, version = parts
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                writer.write(response("413 Payload Too Large", b"too large\n", client, False))
                await writer.drain()
                return
            if length:
                await reader.readexactly(length)
            conn = headers.get("connection", "").lower()
            keep = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
            body = b"ok\n" if path == "/health" else answer_body(config.text, client)
            writer.write(response("200 OK", b"" if method == "HEAD" else body, client, keep))
            await writer.drain()
            if not config.quiet:
                print(f"{method} {path} from {client} 200", flush=True)
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        await close_quietly(writer)


async def serve(config: EchoConfig) -> None:
    """Serves until SIGTERM or SIGINT."""
    await serve_until_signalled(
        lambda r, w: _handle(config, r, w),
        config.host,
        config.port,
        "http_echo",
        limit=MAX_HEADER_BYTES,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    config = parse_args(sys.argv[1:] if argv is None else argv)
    return run(serve(config), "http_echo")


if __name__ == "__main__":
    sys.exit(main())
