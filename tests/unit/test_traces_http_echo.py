"""http_echo's spans: trace context parsing, the span, and reporting to a collector."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lab import traces
from lab.workloads import http_echo, spans
from lab.workloads.spans import SpanReporter, TraceContext, server_span, trace_context

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": f"00-{TRACE}-{PARENT}-01"}, TraceContext(TRACE, PARENT)),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": PARENT}, TraceContext(TRACE, PARENT)),
        ({"x-b3-traceid": TRACE[16:], "x-b3-spanid": PARENT}, TraceContext(TRACE[16:], PARENT)),
        ({"b3": f"{TRACE}-{PARENT}-1"}, TraceContext(TRACE, PARENT)),
        ({"b3": f"{TRACE}-{PARENT}"}, TraceContext(TRACE, PARENT)),
        # B3 first, as Envoy's USE_B3_WITH_W3C_PROPAGATION (it sends both, equal)
        (
            {
                "x-b3-traceid": TRACE,
                "x-b3-spanid": PARENT,
                "traceparent": f"00-{'1' * 32}-{'2' * 16}-01",
            },
            TraceContext(TRACE, PARENT),
        ),
        ({"traceparent": f"00-{TRACE}-{PARENT}-00"}, None),  # not sampled
        ({"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "0"}, None),
        ({"b3": f"{TRACE}-{PARENT}-0"}, None),
        ({"b3": "0"}, None),
        ({"traceparent": f"00-{'0' * 32}-{PARENT}-01"}, None),
        ({"traceparent": f"ff-{TRACE}-{PARENT}-01"}, None),
        ({"traceparent": "garbage"}, None),
        ({"x-b3-traceid": "xyz", "x-b3-spanid": PARENT}, None),
        ({}, None),
    ],
)
def test_trace_context(headers: dict[str, str], expected: TraceContext | None) -> None:
    assert trace_context(headers) == expected


def test_server_span_is_a_child_of_the_caller() -> None:
    span = server_span(
        TraceContext(TRACE, PARENT),
        service="backend-v1.demo",
        method="GET",
        path="/x?y=1",
        status=503,
        client="10.1.0.9:4242",
        start_us=1_000,
        duration_us=0,
    )
    assert span["traceId"] == TRACE
    assert span["parentId"] == PARENT
    assert len(span["id"]) == 16 and span["id"] != PARENT
    assert span["kind"] == "SERVER"
    assert span["localEndpoint"] == {"serviceName": "backend-v1.demo"}
    assert span["remoteEndpoint"] == {"ipv4": "10.1.0.9", "port": 4242}
    assert span["tags"]["http.status_code"] == "503" and span["tags"]["error"] == "503"
    assert span["name"] == "GET /x" and span["duration"] == 1
    assert traces.parse_span(span).parent_id == PARENT  # the lab's collector reads it


def test_reporter_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (spans.ZIPKIN_ENV, spans.LAB_MESH_ENV, spans.SERVICE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert SpanReporter.from_settings("", "") is None
    mesh = tmp_path / "mesh.json"
    monkeypatch.setenv(spans.LAB_MESH_ENV, str(mesh))
    monkeypatch.setenv(spans.SERVICE_ENV, "backend-v1.demo")
    reporter = SpanReporter.from_settings("", "")
    assert reporter is not None and reporter.service == "backend-v1.demo"
    assert reporter.address() == ""  # no registration yet
    mesh.write_text(json.dumps({"traces_address": "10.0.0.1:9411"}))
    reporter._next_read = 0.0
    assert reporter.address() == "10.0.0.1:9411"


def test_queue_is_bounded_and_never_blocks() -> None:
    reporter = SpanReporter("s", collector="127.0.0.1:1", limit=3)
    for _ in range(5):
        reporter.record({"id": "x"})  # no running loop: only queued
    assert reporter.dropped == 2


async def _get(port: int, headers: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /hello HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


@pytest.mark.timeout(20)
def test_echo_reports_one_span_per_traced_request() -> None:
    async def scenario() -> None:
        collector = traces.Collector(traces.CollectorConfig(host="127.0.0.1", port=0))
        await collector.start()
        config = http_echo.parse_args(["-text=hi", "-listen=127.0.0.1:5678"])
        reporter = SpanReporter("backend-v1.demo", collector=f"127.0.0.1:{collector.port}")
        server = await asyncio.start_server(
            lambda r, w: http_echo._handle(config, r, w, reporter), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            answer = await _get(port, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n")
            assert answer.startswith(b"HTTP/1.1 200")
            await _get(port, "")  # no context: no span
            await _get(port, f"x-b3-traceid: {TRACE}\r\nx-b3-spanid: {'3' * 16}\r\n")
            for _ in range(100):
                if len(collector.store) >= 2:
                    break
                await asyncio.sleep(0.02)
            got = collector.store.trace(TRACE)
            assert sorted(s.parent_id for s in got) == sorted([PARENT, "3" * 16])
            assert {s.service for s in got} == {"backend-v1.demo"}
            assert all(s.kind == "SERVER" for s in got)
            assert len(collector.store) == 2
        finally:
            server.close()
            await reporter.close()
            await collector.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_echo_answers_when_the_collector_is_down() -> None:
    async def scenario() -> None:
        config = http_echo.parse_args(["-text=hi", "-listen=127.0.0.1:5678"])
        reporter = SpanReporter("s", collector="127.0.0.1:1")  # nothing listens
        server = await asyncio.start_server(
            lambda r, w: http_echo._handle(config, r, w, reporter), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            for _ in range(3):
                answer = await _get(port, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n")
                assert answer.startswith(b"HTTP/1.1 200")
            for _ in range(100):
                if reporter.dropped == 3:
                    break
                await asyncio.sleep(0.02)
            assert reporter.dropped == 3 and reporter.sent == 0
        finally:
            server.close()
            await reporter.close()

    asyncio.run(scenario())


def test_flags() -> None:
    config = http_echo.parse_args(["-zipkin=10.0.0.1:9411", "-trace-service=b.demo"])
    assert (config.zipkin, config.trace_service) == ("10.0.0.1:9411", "b.demo")
    with pytest.raises(SystemExit):
        http_echo.parse_args(["-zipkin=nope"])
