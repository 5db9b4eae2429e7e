"""One benchmark case in quick mode, checked to leave nothing behind (shared by test_bench_*)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.config import BenchConfig
from bench.results import CaseResult
from bench.runner import run_all


def quick_case(case: str, prefix: str, lab: str, results_root: Path) -> tuple[CaseResult, Path]:
    """Run ``case`` with ``--quick`` under lab prefix ``prefix``; the case's labs are named
    ``<prefix><lab>-...``. Asserts that no network namespace or BPF pin of those labs is
    left, even when the run fails, and that the case reported no error; returns the
    case's result and the run folder."""
    from agent.pinned import BPFFS_ROOT

    config = BenchConfig.from_flags(
        cases=(case,),
        rounds=None,
        duration_s=None,
        quick=True,
        results_root=results_root,
        lab_prefix=prefix,
    )
    labs = f"{prefix}{lab}-"
    try:
        run, out_dir = run_all(config, f"python -m bench --quick --case {case}")
    finally:
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=30
        )
        leftovers = [
            line.split()[0] for line in listed.stdout.splitlines() if line.startswith(labs)
        ]
        pins = sorted(p.name for p in BPFFS_ROOT.glob(f"{labs}*")) if BPFFS_ROOT.exists() else []
    assert leftovers == [], f"the case left namespaces behind: {leftovers}"
    assert pins == [], f"the case left BPF pins behind: {pins}"
    result = run.cases[0]
    assert result.error is None, result.error
    return result, out_dir
