"""The ``controlplane`` benchmark case end to end in quick mode (no root: 127.0.0.1 only).

Runs the case through the harness (three real control-plane processes at 1, 100 and
5,000 pods, xDS and CA clients) and checks that every (probe, variant) was measured,
the figures are plausible (a change reaches the clients in well under the case's 10 s
bound, certificates are issued both ways, the control plane's memory is measured) and
that no control-plane process is left behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.case import RunSettings
from bench.cases.controlplane import ControlPlaneCase
from bench.runner import run_case

pytestmark = pytest.mark.timeout(240)


def test_quick_run_measures_every_probe_and_variant(tmp_path: Path) -> None:
    case = ControlPlaneCase()
    settings = RunSettings(
        rounds=1, duration_s=1.0, quick=True, work_dir=tmp_path / "work", lab_prefix="tcp"
    )
    result = run_case(case, settings)
    assert result.error is None, result.error
    measured = {(s.probe, s.variant) for s in result.samples}
    assert measured == {(p.name, v.name) for p in case.probes for v in case.variants}
    for sample in result.samples:
        m = sample.metrics
        if sample.probe == "push":
            assert 0 < m["p50_ms"] <= m["p99_ms"] < 10_000
            assert m["state_p50_ms"] >= m["p50_ms"] * 0.5
            assert m["cp_rss_mb"] > 20
        elif sample.probe == "csr":
            assert m["grpc_per_s"] > 1 and m["inprocess_per_s"] > 1
        else:
            assert 0 <= m["idle_cpu_pct"] < 200
    for plane in case._planes.values():
        assert plane.process.poll() is not None, "a control plane outlived the case"
        with pytest.raises(ProcessLookupError):
            os.kill(plane.process.pid, 0)
