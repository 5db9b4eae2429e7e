"""The ztunnel benchmark case in quick mode: direct, Envoy pair and ztunnel pair in one run.

Builds the 2-node lab with the agents (eBPF capture) and a ztunnel per node, runs
every probe once for 1 s through each variant, and checks that the report holds sane
figures, that the ztunnel pair really carried the traffic (its own metrics), and that
nothing is left behind (namespaces, pins).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.benchrun import quick_case

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(240)]

PREFIX = f"bz{os.getpid() % 10000}"


def test_quick_run_compares_the_ztunnel_pair(tmp_path: Path) -> None:
    case, out_dir = quick_case("ztunnel", PREFIX, "zt", tmp_path)
    proxies = {n.split()[1] for n in case.notes if "CPU s" in n}
    assert proxies == {
        "envoy-client-sidecar",
        "envoy-server-sidecar",
        "ztunnel-node1",
        "ztunnel-node2",
    }
    # node1's ztunnel counted (as the source reporter) the probes' connections: at least
    # the hold probe's 1,000 and the connect probe's, all through HBONE
    counted = next(n for n in case.notes if "through HBONE" in n)
    assert int(counted.split("counted ")[1].split()[0]) > 1000, counted
    # and the bulk probes' bytes (iperf3 ends with a reset: the bytes must still count)
    assert float(counted.split(" and ")[1].split()[0]) > 0.01, counted

    report = (out_dir / "report.md").read_text()
    assert "## ztunnel" in report and "| bulk-1 | throughput" in report
    doc = json.loads((out_dir / "results.json").read_text())
    rows = {(r["probe"], r["metric"], r["variant"]): r for r in doc["summaries"]}
    for probe, metric in [
        ("bulk-1", "throughput"),
        ("bulk-4", "throughput"),
        ("rr-1", "rate"),
        ("rr-16", "rate"),
        ("connect", "rate"),
    ]:
        for variant in ("direct", "envoy-mtls", "ztunnel"):
            assert rows[(probe, metric, variant)]["median"] > 0, (probe, metric, variant)
        zt = rows[(probe, metric, "ztunnel")]
        assert zt["ratio"] == pytest.approx(
            zt["median"] / rows[(probe, metric, "direct")]["median"]
        )
    # a whole HBONE round trip cannot beat the bare path's request rate
    assert rows[("rr-1", "rate", "ztunnel")]["ratio"] < 1.0
    assert rows[("hold-1000", "held", "ztunnel")]["median"] == 1000
    assert rows[("bulk-1", "proxy_cpu_s", "ztunnel")]["median"] > 0
    # both ztunnels (supervisor and workers) together: real processes, bounded memory
    assert 20 < rows[("hold-1000", "proxy_rss_held_mb", "ztunnel")]["median"] < 2000
    # the largest single process of them (a worker): one process's figure, under the sum
    largest = rows[("hold-1000", "proxy_rss_largest_mb", "ztunnel")]["median"]
    assert 10 < largest < rows[("hold-1000", "proxy_rss_held_mb", "ztunnel")]["median"]
