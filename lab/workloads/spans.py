"""Zipkin spans of a lab workload, as an instrumented tutorial app reports them.

A request that carries trace context (B3 ``x-b3-traceid``/``x-b3-spanid``, the single
``b3`` header, or W3C ``traceparent``; B3 first, as Envoy's ``USE_B3_WITH_W3C``
propagation) gets one SERVER span: the caller's trace id, the caller's span id as
parent, a new span id of its own, the workload's service name (``<workload>.<ns>``).
A request without context, or whose context says "not sampled", gets none.

Reporting is best effort and never in the request's way: :meth:`SpanReporter.record`
only appends to a bounded queue (full: the span is dropped and counted); a task of
the server's own event loop POSTs batches (JSON v2, ``/api/v2/spans``) with short
timeouts, and drops a batch the collector does not take.

Where the collector is: ``--zipkin host:port`` (env ``AMBIENT_ZIPKIN_ADDRESS``), or a
lab registration file (env ``AMBIENT_LAB_MESH``: ``<run_dir>/mesh.json``, its
``traces_address``), re-read while no collector is known, since the lab starts its
collector once the first proxy needs it, after the workloads.

The parsing and span building are pure; :class:`SpanReporter` is the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZIPKIN_ENV = "AMBIENT_ZIPKIN_ADDRESS"
"""Env: ``host:port`` of a Zipkin collector."""
LAB_MESH_ENV = "AMBIENT_LAB_MESH"
"""Env: a lab's ``mesh.json``, whose ``traces_address`` names the lab's collector."""
SERVICE_ENV = "AMBIENT_TRACE_SERVICE"
"""Env: the service name of the spans (``<workload>.<namespace>``)."""
SPANS_PATH = "/api/v2/spans"
QUEUE_LIMIT = 1000
"""Spans waiting to be sent; more are dropped."""
BATCH = 100
SEND_TIMEOUT = 2.0
REREAD_INTERVAL = 2.0
"""How often a registration file without a collector is read again (seconds)."""

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class TraceContext:
    """The caller's trace context: the trace and the caller's span."""

    trace_id: str
    """16 or 32 lowercase hex."""
    parent_id: str
    """The caller's span id (16 hex): the parent of this server's span."""


def _hex_id(value: str, lengths: tuple[int, ...]) -> str | None:
    value = value.strip().lower()
    if len(value) in lengths and _HEX.match(value) and value.strip("0"):
        return value
    return None


def trace_context(headers: Mapping[str, str]) -> TraceContext | None:
    """The context of a request (header names lowercase); None without one, with a
    malformed one, or when it says the trace is not sampled."""
    if "x-b3-traceid" in headers and "x-b3-spanid" in headers:
        sampled = headers.get("x-b3-sampled", "1").strip() != "0"
        ids = (headers["x-b3-traceid"], headers["x-b3-spanid"])
    elif "b3" in headers:
        parts = headers["b3"].strip().split("-")
        sampled = len(parts) >= 2 and (len(parts) == 2 or parts[2] != "0")
        ids = (parts[0], parts[1] if len(parts) > 1 else "")
    elif "traceparent" in headers:
        found = _TRACEPARENT.match(headers["traceparent"].strip().lower())
        if found is None or found.group(1) == "ff":
            return None
        sampled = bool(int(found.group(4), 16) & 1)
        ids = (found.group(2), found.group(3))
    else:
        return None
    trace_id, span_id = _hex_id(ids[0], (16, 32)), _hex_id(ids[1], (16,))
    if not sampled or trace_id is None or span_id is None:
        return None
    return TraceContext(trace_id, span_id)


def new_span_id() -> str:
    """A random 64-bit span id (16 hex, never zero)."""
    while True:
        value = secrets.token_hex(8)
        if value.strip("0"):
            return value


def _endpoint(address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host:
        return {}
    out: dict[str, Any] = {"ipv6" if ":" in host else "ipv4": host}
    if port.isdigit():
        out["port"] = int(port)
    return out


def server_span(
    context: TraceContext,
    *,
    service: str,
    method: str,
    path: str,
    status: int,
    client: str,
    start_us: int,
    duration_us: int,
    span_id: str | None = None,
) -> dict[str, Any]:
    """The Zipkin v2 SERVER span of one request (``client``: the peer's ``ip:port``)."""
    span: dict[str, Any] = {
        "traceId": context.trace_id,
        "parentId": context.parent_id,
        "id": span_id or new_span_id(),
        "kind": "SERVER",
        "name": f"{method} {path.partition('?')[0]}",
        "timestamp": start_us,
        "duration": max(1, duration_us),
        "localEndpoint": {"serviceName": service},
        "tags": {
            "http.method": method,
            "http.path": path.partition("?")[0],
            "http.status_code": str(status),
        },
    }
    remote = _endpoint(client)
    if remote:
        span["remoteEndpoint"] = remote
    if status >= 500:
        span["tags"]["error"] = str(status)
    return span


def collector_from_mesh_file(path: Path) -> str:
    """The ``traces_address`` a lab registration file names ('' if none or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    value = data.get("traces_address", "") if isinstance(data, dict) else ""
    return value if isinstance(value, str) else ""


class SpanReporter:
    """Queues spans and sends them from a task of the running loop (best effort)."""

    def __init__(
        self,
        service: str,
        *,
        collector: str = "",
        mesh_file: Path | None = None,
        limit: int = QUEUE_LIMIT,
    ) -> None:
        self.service = service
        self.collector = collector
        self.mesh_file = mesh_file
        self.dropped = 0
        self.sent = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_read = 0.0

    @classmethod
    def from_settings(cls, service: str, collector: str) -> SpanReporter | None:
        """A reporter from the flags and the environment; None when no collector can be
        known (no flag, no ``AMBIENT_ZIPKIN_ADDRESS``, no ``AMBIENT_LAB_MESH``)."""
        collector = collector or os.environ.get(ZIPKIN_ENV, "")
        mesh = os.environ.get(LAB_MESH_ENV, "")
        if not collector and not mesh:
            return None
        service = service or os.environ.get(SERVICE_ENV, "") or "http-echo"
        return cls(service, collector=collector, mesh_file=Path(mesh) if mesh else None)

    def record(self, span: dict[str, Any]) -> None:
        """Queues one span (dropped when the queue is full); never blocks."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return
        self._queue.append(span)
        self._wake.set()
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: sent never
                self._task = asyncio.get_running_loop().create_task(self._run())

    def address(self) -> str:
        """The collector's ``host:port`` ('' while none is known)."""
        if self.collector:
            return self.collector
        now = time.monotonic()
        if self.mesh_file is not None and now >= self._next_read:
            self._next_read = now + REREAD_INTERVAL
            found = collector_from_mesh_file(self.mesh_file)
            if found:
                self.collector = found
            return found
        return ""

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                address = self.address()
                if not address:
                    self.dropped += len(batch)
                    continue
                try:
                    await asyncio.wait_for(_post(address, batch), SEND_TIMEOUT)
                    self.sent += len(batch)
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                    self.dropped += len(batch)

    async def close(self) -> None:
        """Stops the sending task (spans still queued are dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _post(address: str, spans: list[dict[str, Any]]) -> None:
    """POSTs a batch of spans to a Zipkin collector; ValueError unless it answers 2xx."""
    host, _, port = address.rpartition(":")
    body = json.dumps(spans).encode()
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(
            (
                f"POST {SPANS_PATH} HTTP/1.1\r\nHost: {address}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        status = await reader.readline()
        parts = status.split()
        if len(parts) < 2 or not parts[1].startswith(b"2"):
            raise ValueError(f"collector answered {status!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
