"""A real Envoy reports to the exporter and the trace collector (all on 127.0.0.1).

Envoy runs the bootstrap built from ``controlplane/envoy/telemetry.py`` snippets alone
(``telemetry_bootstrap``): a listener proxying to a local HTTP server, the HTTP gRPC
access log to the exporter, Zipkin spans to the collector. After N requests,
``/metrics`` counts exactly N with the labels the entries carried; a retried request
shows its attempts; a request's ``traceparent`` reaches the backend and the collector.
No root needed; about 5 s.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient.errors import AmbientError
from bench.envoy.proxy import envoy_argv, envoy_binary
from controlplane.envoy import telemetry
from lab.traces import Collector, CollectorConfig
from tests.unit.test_waypoint_telemetry_config import PEER, telemetry_bootstrap
from waypoint.telemetry import Exporter, ExporterConfig

REQUESTS = 20
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Backend(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []  # noqa: RUF012 (one backend per test run)

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        status = 500 if self.path.startswith("/fail") else 200
        body = b"hello\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    _Backend.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()
            status: int = answer.status
            return status
    except urllib.error.HTTPError as err:
        return err.code


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"envoy exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"envoy did not listen on {port} within {timeout_s}s")


def _samples(metrics_port: int, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port}/stats/prometheus", timeout=5
    ) as r:
        text = r.read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _total(metrics_port: int, name: str, **labels: str) -> float:
    return sum(
        value
        for got, value in _samples(metrics_port, name)
        if all(got.get(k) == v for k, v in labels.items())
    )


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
def test_envoy_reports_metrics_and_spans(tmp_path: Path, backend: int) -> None:
    try:
        subprocess.run(
            [str(envoy_binary()), "--version"], capture_output=True, timeout=30, check=True
        )
    except (AmbientError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the envoy binary cannot run here: {err}")
    asyncio.run(_scenario(tmp_path, backend))


async def _scenario(tmp_path: Path, backend_port: int) -> None:
    exporter = Exporter(
        ExporterConfig(access_log_address=("127.0.0.1", 0), metrics_address=("127.0.0.1", 0))
    )
    collector = Collector(CollectorConfig(host="127.0.0.1", port=0, capacity=1000))
    await exporter.start()
    await collector.start()
    listen = _free_port()
    config = telemetry_bootstrap(
        listen_port=listen,
        backend_port=backend_port,
        telemetry_port=exporter.access_log_port,
        collector=("127.0.0.1", collector.port),
        retries=2,
    )
    # Spans go out one by one (default: batches of 5 or every 5 s).
    config["layered_runtime"] = {
        "layers": [{"name": "static", "static_layer": telemetry.TRACING_RUNTIME}]
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        envoy_argv(path, concurrency=1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        await asyncio.to_thread(_wait_port, listen, proc)
        base = f"http://127.0.0.1:{listen}"
        for _ in range(REQUESTS):
            assert await asyncio.to_thread(_get, f"{base}/") == 200
        traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        assert await asyncio.to_thread(_get, f"{base}/traced", {"traceparent": traceparent}) == 200
        assert await asyncio.to_thread(_get, f"{base}/fail") == 500

        port = exporter.metrics_port
        await _until(lambda: _total(port, "istio_requests_total") >= REQUESTS + 2)
        await _until(lambda: _total(port, "istio_request_attempts_total") >= REQUESTS + 4)
        ok = {
            "reporter": "waypoint",
            "response_code": "200",
            "source_principal": PEER,
            "source_workload_namespace": "demo",
            # from the CONNECT's baggage (the exporter's directory is empty here)
            "source_workload": "frontend",
            "source_version": "v7",
            "destination_service": "backend.demo.svc.cluster.local",
            "destination_service_name": "backend",
            "destination_workload": "backend-v1",
            "destination_version": "v1",
            "destination_app": "backend",
            "connection_security_policy": "mutual_tls",
            "response_flags": "-",
            "request_protocol": "http",
        }
        assert await asyncio.to_thread(_total, port, "istio_requests_total", **ok) == REQUESTS + 1
        failed = await asyncio.to_thread(_samples, port, "istio_requests_total")
        failed_labels = [labels for labels, _ in failed if labels["response_code"] == "500"]
        assert len(failed_labels) == 1, failed
        # 5xx retried until the limit (a loaded Envoy may add DC: the client had gone)
        assert "URX" in failed_labels[0]["response_flags"].split(","), failed_labels
        assert (
            await asyncio.to_thread(
                _total, port, "istio_request_retries_total", response_code="500"
            )
            == 2
        )
        attempts = await asyncio.to_thread(_samples, port, "istio_request_attempts_total")
        by_code = {labels["response_code"]: value for labels, value in attempts}
        assert by_code == {"200": REQUESTS + 1, "500": 3}, attempts
        count = await asyncio.to_thread(
            _total, port, "istio_request_duration_milliseconds_count", **ok
        )
        assert count == REQUESTS + 1
        assert await asyncio.to_thread(_total, port, "istio_response_bytes_sum", **ok) > 0

        # The caller's trace context reached the backend and the collector.
        traced = [h for h in _Backend.seen if TRACE_ID in h.get("traceparent", "")]
        traced += [h for h in _Backend.seen if h.get("x-b3-traceid") == TRACE_ID]
        assert traced, _Backend.seen[-1]
        await _until(lambda: bool(collector.store.trace(TRACE_ID)))
        spans = collector.store.trace(TRACE_ID)
        assert {s.kind for s in spans} >= {"SERVER"}, spans
        assert {s.service for s in spans} == {"waypoint.demo"}
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await exporter.stop()
        await collector.stop()
