"""An HTTP/1.1 echo server, like hashicorp/http-echo, that also says who called.

Every request is answered ``200`` with the configured text, a second line
``client: <ip>:<port>`` (the peer address this server saw) and the same address in an
``X-Client-Addr`` header; ``/health`` answers ``ok``. Keep-alive is supported.

    python -m lab.workloads.http_echo -text="Hello from v1" -listen=:8080

Faults on demand, for the demo's resilience checks: from inside the pod (loopback only,
so no caller through the mesh can set them), ``POST /__lab/fault?status=503`` makes every
other request answer 503, ``?delay_ms=200`` delays every answer, and ``POST /__lab/fault``
without parameters clears both. ``GET /__lab/fault`` shows them.

Spans, as an instrumented app: with a collector (``-zipkin=host:port``, env
``AMBIENT_ZIPKIN_ADDRESS``, or the lab's registration in ``AMBIENT_LAB_MESH``), each
request carrying ``traceparent`` or B3 headers is reported as a Zipkin SERVER span of
service ``-trace-service`` (env ``AMBIENT_TRACE_SERVICE``), child of the caller's span
(:mod:`lab.workloads.spans`; asynchronous, best effort, never delaying an answer).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from lab.workloads import spans
from lab.workloads.payload import parse_hostport
from lab.workloads.serving import close_quietly, peer_of, run, serve_until_signalled

MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT = 30.0
MAX_BODY = 16 * 1024 * 1024


FAULT_PATH = "/__lab/fault"
STATUS_TEXT = {
    200: "OK",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class Faults:
    """What every answer suffers: a status other than 200, a delay."""

    status: int = 200
    delay_ms: int = 0

    def set_from(self, query: str) -> None:
        """Sets the faults from ``status=...&delay_ms=...``; an empty query clears both."""
        values = urllib.parse.parse_qs(query)
        status = int(values.get("status", ["200"])[0])
        delay = int(values.get("delay_ms", ["0"])[0])
        if not 100 <= status <= 599 or not 0 <= delay <= 60_000:
            raise ValueError("status must be 100..599 and delay_ms 0..60000")
        self.status, self.delay_ms = status, delay

    def describe(self) -> bytes:
        """``status=N delay_ms=M``."""
        return f"status={self.status} delay_ms={self.delay_ms}\n".encode()


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
    faults: Faults = field(default_factory=Faults, compare=False, hash=False)
    """Faults set at run time through ``/__lab/fault`` (mutable)."""
    zipkin: str = ""
    """``host:port`` of a Zipkin collector ('' : from the environment, if any)."""
    trace_service: str = ""
    """Service name of the spans ('' : from the environment, else ``http-echo``)."""


def parse_args(argv: Sequence[str]) -> EchoConfig:
    """Flags in both hashicorp style (``-text=x``) and GNU style (``--text x``)."""
    parser = argparse.ArgumentParser(prog="http_echo", allow_abbrev=False)
    parser.add_argument("-text", "--text", default="hello-world", help="answer text")
    parser.add_argument("-listen", "--listen", default=":5678", help="[host]:port to listen on")
    parser.add_argument("-quiet", "--quiet", action="store_true", help="no request log")
    parser.add_argument("-zipkin", "--zipkin", default="", help="collector host:port")
    parser.add_argument("-trace-service", "--trace-service", default="", help="span service")
    ns = parser.parse_args(list(argv))
    try:
        host, port = parse_hostport(ns.listen)
        if ns.zipkin:
            parse_hostport(ns.zipkin)
    except ValueError as err:
        parser.error(str(err))
    return EchoConfig(
        text=ns.text,
        host=host,
        port=port,
        quiet=ns.quiet,
        zipkin=ns.zipkin,
        trace_service=ns.trace_service,
    )


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
    config: EchoConfig,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reporter: spans.SpanReporter | None = None,
) -> None:
    client = peer_of(writer)
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            start_us, started = time.time_ns() // 1000, time.monotonic_ns()
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
            body, status = await _answer(config, method, path, client)
            writer.write(response(status, b"" if method == "HEAD" else body, client, keep))
            await writer.drain()
            if reporter is not None:
                _report(
                    reporter,
                    headers,
                    method=method,
                    path=path,
                    status=status,
                    client=client,
                    start_us=start_us,
                    started_ns=started,
                )
            if not config.quiet:
                print(f"{method} {path} from {client} {status.split()[0]}", flush=True)
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        await close_quietly(writer)


def _report(
    reporter: spans.SpanReporter,
    headers: dict[str, str],
    *,
    method: str,
    path: str,
    status: str,
    client: str,
    start_us: int,
    started_ns: int,
) -> None:
    """Queues the request's span if it carries trace context (never raises)."""
    context = spans.trace_context(headers)
    if context is None:
        return
    reporter.record(
        spans.server_span(
            context,
            service=reporter.service,
            method=method,
            path=path,
            status=int(status.split(maxsplit=1)[0]),
            client=client,
            start_us=start_us,
            duration_us=(time.monotonic_ns() - started_ns) // 1000,
        )
    )


async def _answer(config: EchoConfig, method: str, path: str, client: str) -> tuple[bytes, str]:
    """The body and status line of one request (faults applied)."""
    route, _, query = path.partition("?")
    faults = config.faults
    if route == FAULT_PATH:
        return _fault_request(faults, method, query, client)
    if route == "/health":
        return b"ok\n", "200 OK"
    if faults.delay_ms:
        await asyncio.sleep(faults.delay_ms / 1000)
    body = answer_body(config.text, client)
    if faults.status != 200:
        return body, f"{faults.status} {STATUS_TEXT.get(faults.status, 'Fault')}"
    return body, "200 OK"


def _fault_request(faults: Faults, method: str, query: str, client: str) -> tuple[bytes, str]:
    """``/__lab/fault``: shows (GET) or sets (POST, loopback callers only) the faults."""
    if method == "GET":
        return faults.describe(), "200 OK"
    if method != "POST":
        return b"GET or POST\n", "405 Method Not Allowed"
    if not client.startswith(("127.", "[::1]", "::1")):
        return b"faults are set from inside the pod (127.0.0.1)\n", "403 Forbidden"
    try:
        faults.set_from(query)
    except ValueError as err:
        return f"{err}\n".encode(), "400 Bad Request"
    return faults.describe(), "200 OK"


async def serve(config: EchoConfig) -> None:
    """Serves until SIGTERM or SIGINT."""
    reporter = spans.SpanReporter.from_settings(config.trace_service, config.zipkin)
    await serve_until_signalled(
        lambda r, w: _handle(config, r, w, reporter),
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
