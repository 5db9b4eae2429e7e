"""The benchmark harness end to end: the pod-to-pod case in quick mode, through the lab."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.benchrun import quick_case

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

# unique per process: another checkout's test suite may run the same test at once
PREFIX = f"bt{os.getpid() % 10000}"


def test_quick_run_writes_sane_reports(tmp_path: Path) -> None:
    case, out_dir = quick_case("pod-to-pod", PREFIX, "p2p", tmp_path)
    proxies = {n.split()[1] for n in case.notes if "CPU s" in n}
    assert proxies == {"envoy-client-sidecar", "envoy-server-sidecar"}
    handshakes = next(n for n in case.notes if "TLS handshakes" in n)
    assert int(handshakes.split("client sidecar: ")[1].split()[0]) > 10, handshakes

    assert (tmp_path / "latest").resolve() == out_dir.resolve()
    report = (out_dir / "report.md").read_text()
    assert "## pod-to-pod" in report and "| bulk-1 | throughput" in report
    assert (out_dir / "pod-to-pod.png").stat().st_size > 10_000

    doc = json.loads((out_dir / "results.json").read_text())
    rows = {(r["probe"], r["metric"], r["variant"]): r for r in doc["summaries"]}
    # wrk's latencies are dropped when they contradict its request count (see
    # bench.load.latency_consistent), so they are checked where present
    latencies = [
        (probe, metric)
        for probe, metric in [("rr-1", "p50"), ("rr-1", "p99"), ("rr-16", "p50")]
        if {(probe, metric, "direct"), (probe, metric, "envoy-mtls")} <= rows.keys()
    ]
    assert latencies, "no latency figure survived"
    for probe, metric in [
        ("bulk-1", "throughput"),
        ("bulk-4", "throughput"),
        ("rr-1", "rate"),
        ("rr-16", "rate"),
        ("connect", "rate"),
        *latencies,
    ]:
        direct = rows[(probe, metric, "direct")]
        envoy = rows[(probe, metric, "envoy-mtls")]
        assert direct["median"] > 0 and envoy["median"] > 0, (probe, metric)
        assert envoy["ratio"] == pytest.approx(envoy["median"] / direct["median"])
        assert direct["ratio"] == 1.0
    # the direct path has no proxy; the Envoy pair's cost is measured from /proc
    assert ("bulk-1", "proxy_cpu_s", "direct") not in rows
    assert rows[("bulk-1", "proxy_cpu_s", "envoy-mtls")]["median"] > 0
    assert 5 < rows[("bulk-1", "proxy_rss_mb", "envoy-mtls")]["median"] < 2000
    # a thousand connections held open through each path; the proxies' memory grows
    assert rows[("hold-1000", "held", "direct")]["median"] == 1000
    assert rows[("hold-1000", "held", "envoy-mtls")]["median"] == 1000
    assert rows[("hold-1000", "rss_per_conn_kb", "envoy-mtls")]["median"] > 0
    # a new mTLS session per connection cannot be cheaper than a bare TCP connect
    assert rows[("connect", "rate", "envoy-mtls")]["ratio"] < 1.0
