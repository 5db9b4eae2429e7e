"""The measuring loop: environments up once, variants alternated, every sample kept."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from ambient.errors import AmbientError
from bench import stats
from bench.case import Case, RunSettings, load_cases, select
from bench.config import BenchConfig
from bench.errors import MeasurementError
from bench.procs import raise_fd_limit
from bench.report import plot_case, render_markdown
from bench.results import CaseResult, RunResult, Sample, write_json

log = logging.getLogger(__name__)


def check_measurement(case: Case, probe_name: str, variant: str, metrics: dict[str, float]) -> None:
    """Reject a measurement with unknown metric names or values that are not finite."""
    probe = next(p for p in case.probes if p.name == probe_name)
    declared = {m.name for m in probe.metrics}
    unknown = set(metrics) - declared
    if unknown:
        raise MeasurementError(
            f"case {case.name!r}, probe {probe_name!r}, variant {variant!r} returned "
            f"undeclared metrics {sorted(unknown)}",
            hint=f"declare them in the probe's metrics ({sorted(declared)})",
        )
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise MeasurementError(
            f"case {case.name!r}, probe {probe_name!r}, variant {variant!r} returned "
            f"non-finite values {bad}"
        )


def run_case(
    case: Case,
    settings: RunSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> CaseResult:
    """Measure every (round, probe, variant) of ``case`` and return all samples.

    A failure stops this case only: the result carries the error and the samples
    measured before it, and the caller goes on with the next case.
    """
    result = CaseResult.declare(case)
    samples: list[Sample] = []
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    names = [v.name for v in case.variants]
    try:
        with case.environment(settings):
            for round_index in range(settings.rounds):
                for probe in case.probes:
                    for variant_name in stats.alternating_order(names, round_index):
                        variant = case.variant(variant_name)
                        started = clock()
                        with case.activate(variant):
                            metrics = dict(case.measure(variant, probe, round_index))
                        elapsed = clock() - started
                        check_measurement(case, probe.name, variant.name, metrics)
                        log.info(
                            "%s round %d %s %s: %s",
                            case.name,
                            round_index + 1,
                            probe.name,
                            variant.name,
                            ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                        )
                        samples.append(
                            Sample(probe.name, variant.name, round_index, metrics, elapsed)
                        )
    except AmbientError as err:
        log.error("case %s failed: %s", case.name, err)
        message = err.message + (f" (hint: {err.hint})" if err.hint else "")
        return dataclasses.replace(
            result, samples=tuple(samples), error=message, notes=case.notes()
        )
    except Exception as err:  # any other failure is a bug in the case; keep going with others
        log.exception("case %s failed unexpectedly", case.name)
        return dataclasses.replace(
            result,
            samples=tuple(samples),
            error=f"{type(err).__name__}: {err}",
            notes=case.notes(),
        )
    return dataclasses.replace(result, samples=tuple(samples), notes=case.notes())


def case_work_dir(root: Path, case: Case) -> Path:
    """The folder a case keeps its certificates, configs and logs in during a run."""
    return root / "work" / case.name


def machine_info() -> dict[str, object]:
    """What the figures depend on: CPU count and model, kernel, Python."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "loadavg_before": loadavg(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (how busy the machine was besides us)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def utc_stamp(now: datetime.datetime) -> str:
    """A run folder name: ``20261126T114000Z``."""
    return now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def run_all(config: BenchConfig, command: str) -> tuple[RunResult, Path]:
    """Run the configured cases; write results.json, report.md and plots; return both.

    The run folder is ``<results_root>/<UTC timestamp>/``; ``latest`` points at it.
    """
    failures = load_cases()
    cases = select(config.cases)
    raise_fd_limit()
    machine = machine_info()
    started = datetime.datetime.now(datetime.UTC)
    out_dir = config.results_root / utc_stamp(started)
    out_dir.mkdir(parents=True, exist_ok=False)
    results: list[CaseResult] = []
    for case in cases:
        settings = RunSettings(
            rounds=config.rounds,
            duration_s=config.duration_s,
            quick=config.quick,
            work_dir=case_work_dir(out_dir, case),
            lab_prefix=config.lab_prefix,
        )
        log.info("case %s: %d round(s) of %.1f s", case.name, config.rounds, config.duration_s)
        results.append(run_case(case, settings))
    finished = datetime.datetime.now(datetime.UTC)
    run = RunResult(
        started_at=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        finished_at=finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        settings={
            "rounds": config.rounds,
            "duration_s": config.duration_s,
            "quick": config.quick,
            "cases": [c.name for c in cases],
            "command": command,
        },
        machine={**machine, "loadavg_after": loadavg()},
        cases=tuple(results),
        import_failures=failures if not config.cases else {},
    )
    write_json(run, out_dir / "results.json")
    plots: dict[str, str] = {}
    if config.plots:
        for case_result in run.cases:
            png = f"{case_result.name}.png"
            if plot_case(case_result, out_dir / png):
                plots[case_result.name] = png
    (out_dir / "report.md").write_text(render_markdown(run, command, plots))
    latest = config.results_root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out_dir.name)
    return run, out_dir
