"""The waypoint benchmark case in quick mode: four paths side by side in one 3-node lab.

Runs ``--quick`` (one 1 s measurement per probe and variant; about 45-80 s, most of it
bringing up the lab, the control plane, agents, ztunnels and the waypoint's Envoy) and
checks that every variant answered, that the waypoint's Envoy really carried the
waypoint variant's requests, that the per-role costs and the ratios to the Envoy pair
are there, and that nothing is left behind (namespaces, pins).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.benchrun import quick_case

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(240)]

PREFIX = f"bw{os.getpid() % 10000}"
VARIANTS = ("direct", "envoy-mtls", "ztunnel", "waypoint")


def test_quick_run_compares_direct_sidecars_ztunnels_and_the_waypoint(tmp_path: Path) -> None:
    case, out_dir = quick_case("waypoint", PREFIX, "wp", tmp_path)

    doc = json.loads((out_dir / "results.json").read_text())
    rows = {(r["probe"], r["metric"], r["variant"]): r for r in doc["summaries"]}
    for probe in ("rr-1", "rr-16"):
        for variant in VARIANTS:
            assert rows[(probe, "rate", variant)]["median"] > 0, (probe, variant)
        for metric in ("waypoint_cpu_s", "waypoint_envoy_cpu_s", "waypoint_cpu_us_per_req"):
            assert rows[(probe, metric, "waypoint")]["median"] > 0, (probe, metric)
        assert (probe, "waypoint_cpu_s", "ztunnel") not in rows
        assert rows[(probe, "src_cpu_s", "ztunnel")]["median"] > 0

    # every waypoint measurement's requests went through the waypoint's Envoy
    completed = next(n for n in case.notes if "waypoint's Envoy completed" in n)
    streams = int(completed.split("completed ")[1].split()[0])
    assert streams >= rows[("rr-1", "rate", "waypoint")]["median"] * 0.9, completed
    assert any(n.startswith("rr-16 vs `envoy-mtls`") for n in case.notes), case.notes
    assert "## waypoint" in (out_dir / "report.md").read_text()
