"""The lab's trace collector (Zipkin API v2, in memory) and what shows a trace.

Envoy's Zipkin tracer (``controlplane/envoy/telemetry.py``) in the gateway and the
waypoints POSTs JSON v2 spans to ``/api/v2/spans``. The collector keeps the last
:attr:`CollectorConfig.capacity` spans (oldest dropped first) and answers
``GET /api/v2/traces`` (recent traces, newest first), ``GET /api/v2/trace/<id>``
(one trace's spans) as Zipkin does. After each POST it also writes the spans it holds
to :attr:`CollectorConfig.snapshot` (atomically), so ``ambient lab traces`` reads
them from the lab's run folder without entering the fabric's namespace.

The lab starts it in the fabric namespace with :func:`collector_argv`
(``python -m lab.traces --listen 0.0.0.0:9411 --snapshot <run_dir>/traces/spans.json``).

The core (:class:`Span`, :func:`parse_spans`, :class:`SpanStore`, :func:`span_tree`,
:func:`trace_rows`) is pure; the asyncio server is a thin shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError

DEFAULT_PORT = 9411
"""Zipkin's port."""
DEFAULT_CAPACITY = 10_000
"""Spans kept in memory (and in the snapshot)."""
MAX_BODY = 8 * 1024 * 1024
"""Largest POST accepted (Envoy flushes spans in small batches)."""
SNAPSHOT_NAME = Path("traces") / "spans.json"
"""Where, under a lab's run folder, the collector writes its snapshot."""
SPANS_PATH = "/api/v2/spans"


class TraceError(LabError):
    """Spans could not be read or parsed, or a trace is not there."""


@dataclass(frozen=True)
class Span:
    """One Zipkin span, reduced to what a trace view shows."""

    trace_id: str
    span_id: str
    parent_id: str = ""
    name: str = ""
    kind: str = ""
    """``SERVER`` (a proxy received the request), ``CLIENT`` (it sent one upstream)."""
    service: str = ""
    """``localEndpoint.serviceName``: which proxy recorded the span."""
    remote: str = ""
    """``remoteEndpoint`` service name or ``ip:port``."""
    timestamp_us: int = 0
    duration_us: int = 0
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The span in Zipkin's JSON v2 shape."""
        out: dict[str, Any] = {"traceId": self.trace_id, "id": self.span_id, "name": self.name}
        if self.parent_id:
            out["parentId"] = self.parent_id
        if self.kind:
            out["kind"] = self.kind
        out["timestamp"], out["duration"] = self.timestamp_us, self.duration_us
        out["localEndpoint"] = {"serviceName": self.service}
        if self.remote:
            out["remoteEndpoint"] = {"serviceName": self.remote}
        out["tags"] = dict(self.tags)
        return out


def _endpoint_name(endpoint: Any) -> str:
    if not isinstance(endpoint, dict):
        return ""
    name = endpoint.get("serviceName") or ""
    ip = endpoint.get("ipv4") or endpoint.get("ipv6") or ""
    port = endpoint.get("port")
    address = f"{ip}:{port}" if ip and port else ip
    return str(name or address)


def parse_span(item: Any) -> Span:
    """One JSON v2 span; :class:`TraceError` if it lacks ``traceId`` or ``id``."""
    if not isinstance(item, dict):
        raise TraceError(f"a span must be a JSON object, not {type(item).__name__}")
    trace_id, span_id = item.get("traceId"), item.get("id")
    if not isinstance(trace_id, str) or not isinstance(span_id, str) or not trace_id:
        raise TraceError("a span needs string 'traceId' and 'id' fields")
    tags = item.get("tags") or {}
    if not isinstance(tags, dict):
        raise TraceError(f"span {span_id}: 'tags' must be an object")
    return Span(
        trace_id=trace_id.lower().rjust(32, "0"),
        span_id=span_id.lower(),
        parent_id=str(item.get("parentId") or "").lower(),
        name=str(item.get("name") or ""),
        kind=str(item.get("kind") or ""),
        service=_endpoint_name(item.get("localEndpoint")),
        remote=_endpoint_name(item.get("remoteEndpoint")),
        timestamp_us=int(item.get("timestamp") or 0),
        duration_us=int(item.get("duration") or 0),
        tags={str(k): str(v) for k, v in tags.items()},
    )


def parse_spans(payload: bytes | str) -> list[Span]:
    """A POSTed JSON v2 body (a list of spans)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise TraceError(f"spans are not JSON: {err}") from err
    if not isinstance(data, list):
        raise TraceError("the spans body must be a JSON list (Zipkin API v2)")
    return [parse_span(item) for item in data]


class SpanStore:
    """The last ``capacity`` spans, oldest dropped first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._spans: deque[Span] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._spans)

    def add(self, spans: Iterable[Span]) -> None:
        """Keep ``spans`` (dropping the oldest beyond the capacity)."""
        self._spans.extend(spans)

    def spans(self) -> list[Span]:
        """Every span held, oldest first."""
        return list(self._spans)

    def trace(self, trace_id: str) -> list[Span]:
        """One trace's spans (a short id matches the end of a 128-bit one)."""
        return spans_of_trace(self._spans, trace_id)

    def trace_ids(self, limit: int = 10) -> list[str]:
        """Ids of the most recently started traces, newest first."""
        return recent_trace_ids(self._spans, limit)


def spans_of_trace(spans: Iterable[Span], trace_id: str) -> list[Span]:
    """The spans of ``trace_id`` (also given as its last 16 hex digits)."""
    wanted = trace_id.lower()
    return [s for s in spans if s.trace_id == wanted.rjust(32, "0") or s.trace_id.endswith(wanted)]


def recent_trace_ids(spans: Iterable[Span], limit: int = 10) -> list[str]:
    """Trace ids by their earliest span's start, newest first."""
    started: dict[str, int] = {}
    for span in spans:
        started[span.trace_id] = min(
            started.get(span.trace_id, span.timestamp_us), span.timestamp_us
        )
    return sorted(started, key=lambda t: started[t], reverse=True)[:limit]


def span_tree(spans: Sequence[Span]) -> list[tuple[int, Span]]:
    """Depth-first (depth, span) in start order; a span whose parent is missing is a root."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for span in spans:
        if span.parent_id and span.parent_id in ids and span.parent_id != span.span_id:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    out: list[tuple[int, Span]] = []
    seen: set[int] = set()

    def walk(span: Span, depth: int) -> None:
        if id(span) in seen:
            return
        seen.add(id(span))
        out.append((depth, span))
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.timestamp_us):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.timestamp_us):
        walk(root, 0)
    return out


TRACE_COLUMNS = ("span", "service", "kind", "remote", "start_ms", "duration_ms", "status")


def trace_rows(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """One row per span of a trace, as a tree (the name indented by depth)."""
    tree = span_tree(spans)
    start = min((s.timestamp_us for _, s in tree), default=0)
    return [
        {
            "span": "  " * depth + (span.name or span.span_id),
            "service": span.service,
            "kind": span.kind.lower(),
            "remote": span.remote or span.tags.get("upstream_address", ""),
            "start_ms": round((span.timestamp_us - start) / 1000, 3),
            "duration_ms": round(span.duration_us / 1000, 3),
            "status": span.tags.get("http.status_code", span.tags.get("error", "")),
        }
        for depth, span in tree
    ]


def trace_document(spans: Sequence[Span]) -> dict[str, Any]:
    """A trace as nested data (for ``-o json|yaml``)."""
    roots: list[dict[str, Any]] = []
    stack: list[dict[str, Any]] = []
    for depth, span in span_tree(spans):
        node = {**span.to_json(), "children": []}
        del stack[depth:]
        (stack[-1]["children"] if stack else roots).append(node)
        stack.append(node)
    trace_id = spans[0].trace_id if spans else ""
    return {"traceId": trace_id, "spans": len(spans), "roots": roots}


def fetch_spans(collector: str, trace_id: str | None, *, timeout_s: float = 5.0) -> list[Span]:
    """A trace's spans (the newest trace without ``trace_id``) from a running
    collector at ``collector`` (``http://host:port``)."""
    base = collector.rstrip("/")
    url = f"{base}/api/v2/trace/{trace_id}" if trace_id else f"{base}/api/v2/traces?limit=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310 (lab URL)
            data = json.loads(answer.read())
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return []
        raise TraceError(f"collector {base} answered {err.code}") from err
    except (OSError, ValueError) as err:
        raise TraceError(
            f"cannot read spans from {base}: {err}",
            hint="is the collector running, and reachable from this namespace?",
        ) from err
    if not trace_id:
        data = data[0] if data else []
    return parse_spans(json.dumps(data))


def select_trace(spans: Sequence[Span], trace_id: str | None) -> list[Span]:
    """The spans of ``trace_id``, or of the newest trace; :class:`TraceError` if none."""
    if trace_id is None:
        newest = recent_trace_ids(spans, 1)
        if not newest:
            raise TraceError(
                "the collector holds no spans yet",
                hint="send a request through the gateway or a waypoint, then wait for "
                "Envoy's flush (up to 5 s)",
            )
        trace_id = newest[0]
    chosen = spans_of_trace(spans, trace_id)
    if not chosen:
        raise TraceError(
            f"no spans of trace {trace_id}",
            hint="list recent traces with 'ambient lab traces -o json' (or it was dropped: "
            "the collector keeps the last spans only)",
        )
    return chosen


def show_trace(run_dir: Path, trace_id: str | None, collector: str | None, output: str) -> None:
    """``ambient lab traces``: print one trace as a tree (table) or nested data."""
    from ambient.output import emit

    spans = (
        fetch_spans(collector, trace_id) if collector else read_snapshot(run_dir / SNAPSHOT_NAME)
    )
    chosen = select_trace(spans, trace_id)
    if output == "table":
        emit(trace_rows(chosen), "table", TRACE_COLUMNS)
    else:
        emit(trace_document(chosen), output)


# --- the collector process -------------------------------------------------------------


@dataclass(frozen=True)
class CollectorConfig:
    """How one collector runs."""

    host: str = "0.0.0.0"
    """Address to listen on (the fabric's, in the lab)."""
    port: int = DEFAULT_PORT
    capacity: int = DEFAULT_CAPACITY
    """Spans kept."""
    snapshot: Path | None = None
    """File rewritten with every span held after each POST; None: memory only."""


def write_snapshot(spans: Sequence[Span], path: Path) -> None:
    """The spans as a JSON list at ``path``, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([s.to_json() for s in spans]))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> list[Span]:
    """The spans a collector wrote to ``path``."""
    try:
        payload = path.read_text()
    except FileNotFoundError as err:
        raise TraceError(
            f"no spans at {path}: no trace collector has written there",
            hint="the lab starts the collector when waypoints or gateways trace "
            "(lab.traces.collector_argv); or pass --collector URL",
        ) from err
    return parse_spans(payload)


class Collector:
    """The HTTP shell around a :class:`SpanStore`."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.store = SpanStore(config.capacity)
        self._server: asyncio.Server | None = None
        self.port = 0
        """The bound port (after :meth:`start`)."""

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._serve, self.config.host, self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """One request: (status, JSON-able answer). Pure apart from the snapshot write."""
        path, _, query = target.partition("?")
        if path == SPANS_PATH and method == "POST":
            return self._post_spans(body)
        if method != "GET":
            return 405, {"error": "method not allowed"}
        if path == "/api/v2/traces":
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            limit = int(params["limit"]) if params.get("limit", "").isdigit() else 10
            traces = [self.store.trace(t) for t in self.store.trace_ids(limit)]
            return 200, [[s.to_json() for s in spans] for spans in traces]
        spans = []
        if path.startswith("/api/v2/trace/"):
            spans = [s.to_json() for s in self.store.trace(path.rsplit("/", 1)[1])]
        elif path == "/health":
            return 200, {"status": "UP", "spans": len(self.store)}
        return (200, spans) if spans else (404, {"error": "not found"})

    def _post_spans(self, body: bytes) -> tuple[int, Any]:
        try:
            spans = parse_spans(body)
        except TraceError as err:
            return 400, {"error": str(err)}
        self.store.add(spans)
        if self.config.snapshot is not None:
            write_snapshot(self.store.spans(), self.config.snapshot)
        return 202, None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = [*lines[0].split(" "), "", ""][:3]
            headers = {
                name.strip().lower(): value.strip()
                for name, sep, value in (line.partition(":") for line in lines[1:])
                if sep
            }
            body = await asyncio.wait_for(_read_body(reader, headers), timeout=10)
            if body is None:
                status, answer = 413, {"error": "body too large"}
            else:
                status, answer = self.handle(method, target, body)
            payload = b"" if answer is None else json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        except ValueError:
            with contextlib.suppress(OSError):
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes | None:
    """The request body, by ``content-length`` or chunked (Envoy's Zipkin reporter
    sends chunked); None when it exceeds :data:`MAX_BODY`."""
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        length = int(headers.get("content-length", "0") or 0)
        return None if length > MAX_BODY else await reader.readexactly(length)
    chunks: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the empty trailer section
            return b"".join(chunks)
        total += size
        if total > MAX_BODY:
            return None
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found"}
_REASONS |= {405: "Method Not Allowed", 413: "Payload Too Large"}


async def serve_collector(config: CollectorConfig) -> None:
    """Run a collector until cancelled."""
    collector = Collector(config)
    await collector.start()
    try:
        await asyncio.Event().wait()
    finally:
        await collector.stop()


def collector_argv(
    snapshot: Path,
    *,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    capacity: int = DEFAULT_CAPACITY,
    python: str = sys.executable,
) -> list[str]:
    """The command line that runs a collector (for ``Lab.spawn(lab.fabric, ...)``);
    ``snapshot`` is ``<lab run_dir>/traces/spans.json`` (:data:`SNAPSHOT_NAME`) so that
    ``ambient lab traces`` finds the spans."""
    return [
        python,
        "-m",
        "lab.traces",
        "--listen",
        f"{host}:{port}",
        "--capacity",
        str(capacity),
        "--snapshot",
        str(snapshot),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lab.traces``: run a collector until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m lab.traces", description=__doc__)
    parser.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", help="host:port")
    parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY)
    parser.add_argument("--snapshot", type=Path, default=None)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    config = CollectorConfig(host or "0.0.0.0", int(port), args.capacity, args.snapshot)

    async def run() -> None:
        task = asyncio.create_task(serve_collector(config))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
