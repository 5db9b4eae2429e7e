"""The trace collector's core: parsing Zipkin v2 spans, the bounded store, the tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lab.traces import (
    Collector,
    CollectorConfig,
    Span,
    SpanStore,
    TraceError,
    collector_argv,
    parse_spans,
    read_snapshot,
    select_trace,
    span_tree,
    trace_document,
    trace_rows,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"


def _span(span_id: str, parent: str = "", ts: int = 0, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": extra.pop("trace", TRACE),
        "id": span_id,
        "name": extra.pop("name", f"op-{span_id}"),
        "timestamp": 1_700_000_000_000_000 + ts,
        "duration": extra.pop("duration", 1000),
        "localEndpoint": {"serviceName": extra.pop("service", "waypoint.demo")},
        **extra,
    }
    if parent:
        out["parentId"] = parent
    return out


# gateway server -> gateway client -> waypoint server -> waypoint client (the backend)
REQUEST = [
    _span("a1", ts=0, kind="SERVER", service="istio-ingressgateway.istio-system", duration=9000),
    _span("a2", "a1", ts=100, kind="CLIENT", service="istio-ingressgateway.istio-system"),
    _span("b1", "a2", ts=300, kind="SERVER", service="waypoint.demo", duration=5000),
    _span(
        "b2",
        "b1",
        ts=400,
        kind="CLIENT",
        remoteEndpoint={"ipv4": "10.244.2.7", "port": 8080},
        tags={"http.status_code": "200"},
    ),
]


def test_parse_spans() -> None:
    spans = parse_spans(json.dumps(REQUEST))
    assert spans[3] == Span(
        trace_id=TRACE,
        span_id="b2",
        parent_id="b1",
        name="op-b2",
        kind="CLIENT",
        service="waypoint.demo",
        remote="10.244.2.7:8080",
        timestamp_us=1_700_000_000_000_400,
        duration_us=1000,
        tags={"http.status_code": "200"},
    )
    short = parse_spans(json.dumps([_span("c1", trace="8448EB211C80319C")]))
    assert short[0].trace_id == "0000000000000000" + "8448eb211c80319c"


@pytest.mark.parametrize(
    "body",
    ["{", '{"traceId": "x"}', '[{"id": "1"}]', "[1]", '[{"traceId":"a","id":"b","tags":["x"]}]'],
)
def test_bad_bodies(body: str) -> None:
    with pytest.raises(TraceError):
        parse_spans(body)


def test_store_is_bounded_and_keeps_the_newest() -> None:
    store = SpanStore(capacity=3)
    store.add(parse_spans(json.dumps(REQUEST)))
    assert len(store) == 3
    assert [s.span_id for s in store.spans()] == ["a2", "b1", "b2"]
    other = "1" * 32
    store.add(parse_spans(json.dumps([_span("z", trace=other, ts=10_000)])))
    assert store.trace_ids() == [other, TRACE]
    assert [s.span_id for s in store.trace("8448eb211c80319c")] == ["b1", "b2"]
    with pytest.raises(ValueError):
        SpanStore(0)


def test_tree_across_gateway_waypoint_backend() -> None:
    shuffled = parse_spans(json.dumps(list(reversed(REQUEST))))
    tree = span_tree(shuffled)
    assert [(depth, s.span_id) for depth, s in tree] == [(0, "a1"), (1, "a2"), (2, "b1"), (3, "b2")]
    rows = trace_rows(shuffled)
    assert rows[3]["span"] == "      op-b2"
    assert rows[3]["remote"] == "10.244.2.7:8080"
    assert rows[3]["start_ms"] == 0.4 and rows[0]["duration_ms"] == 9.0
    assert rows[3]["status"] == "200"
    doc = trace_document(shuffled)
    assert doc["roots"][0]["id"] == "a1"
    assert doc["roots"][0]["children"][0]["children"][0]["children"][0]["id"] == "b2"


def test_orphans_and_cycles_stay_roots_and_finish() -> None:
    spans = parse_spans(json.dumps([_span("x", "missing"), _span("y", "y", ts=5)]))
    assert [(d, s.span_id) for d, s in span_tree(spans)] == [(0, "x"), (0, "y")]


def test_collector_handles_requests(tmp_path: Path) -> None:
    snapshot = tmp_path / "traces" / "spans.json"
    collector = Collector(CollectorConfig(capacity=100, snapshot=snapshot))
    assert collector.handle("POST", "/api/v2/spans", json.dumps(REQUEST).encode()) == (202, None)
    assert collector.handle("POST", "/api/v2/spans", b"nope")[0] == 400
    status, spans = collector.handle("GET", f"/api/v2/trace/{TRACE}", b"")
    assert status == 200 and len(spans) == 4
    assert collector.handle("GET", "/api/v2/trace/ffff", b"")[0] == 404
    status, traces = collector.handle("GET", "/api/v2/traces?limit=5", b"")
    assert status == 200 and [len(t) for t in traces] == [4]
    assert collector.handle("DELETE", "/api/v2/spans", b"")[0] == 405
    assert len(read_snapshot(snapshot)) == 4
    assert select_trace(read_snapshot(snapshot), None)[0].span_id == "a1"
    with pytest.raises(TraceError, match="no spans of trace"):
        select_trace(read_snapshot(snapshot), "ffff")
    with pytest.raises(TraceError, match="no spans at"):
        read_snapshot(tmp_path / "none.json")


def test_collector_argv() -> None:
    argv = collector_argv(Path("/run/x/traces/spans.json"), port=9412, python="py")
    assert argv[:3] == ["py", "-m", "lab.traces"]
    assert "0.0.0.0:9412" in argv


def test_lab_traces_command(tmp_path: Path) -> None:
    from lab.cli import cli

    run_dir = tmp_path / "t1"
    (run_dir / "traces").mkdir(parents=True)
    (run_dir / "traces" / "spans.json").write_text(json.dumps(REQUEST))
    runner = CliRunner()
    args = ["traces", "--name", "t1", "--run-root", str(tmp_path)]
    table = runner.invoke(cli, args)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:3] == ["SPAN", "SERVICE", "KIND"]
    assert "istio-ingressgateway.istio-system" in lines[1]
    assert lines[4].startswith("      op-b2")
    as_json = runner.invoke(cli, [*args, "-o", "json", "--trace-id", TRACE[-16:]])
    assert json.loads(as_json.output)["traceId"] == TRACE
    missing = runner.invoke(cli, [*args, "--trace-id", "abc"])
    assert missing.exit_code != 0
