"""The harness around the cases: declarations, the alternating loop, results, reports.

The case used here is a real :class:`bench.case.Case` whose "load" is arithmetic, so
the loop, the summaries and the files can be checked exactly without root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import results
from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, check_case
from bench.cli import cli as main
from bench.config import BenchConfig
from bench.errors import BenchConfigError, CaseDefinitionError, ResultsError
from bench.report import case_table, fmt, plot_case, render_markdown
from bench.runner import run_case

RATE = Metric("rate", "op/s", higher_is_better=True, description="operations per second")
P99 = Metric("p99_us", "us", higher_is_better=False, description="99th percentile latency")


class Arithmetic(Case):
    """Variant 'fast' does twice the rate of 'slow' at half the latency."""

    name = "arith"
    description = "arithmetic stand-in"
    data_path = "none"
    variants = (Variant("slow", "baseline", baseline=True), Variant("fast", "twice as fast"))
    probes = (Probe("rr", "request/response", (RATE, P99)),)

    def __init__(self, fail_in_round: int | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.entered = False
        self.exited = False
        self.fail_in_round = fail_in_round

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        self.entered = True
        try:
            yield
        finally:
            self.exited = True

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        if round_index == self.fail_in_round:
            raise RuntimeError("load tool crashed")
        self.calls.append((probe.name, variant.name, round_index))
        factor = 2.0 if variant.name == "fast" else 1.0
        return {"rate": 100.0 * factor + round_index, "p99_us": 50.0 / factor}


def settings(tmp_path: Path, rounds: int = 3) -> RunSettings:
    return RunSettings(
        rounds=rounds, duration_s=1.0, quick=False, work_dir=tmp_path / "w", lab_prefix="t"
    )


def test_loop_alternates_variants_and_keeps_every_sample(tmp_path: Path) -> None:
    case = Arithmetic()
    result = run_case(case, settings(tmp_path))
    assert result.error is None
    assert case.entered and case.exited
    assert case.calls == [
        ("rr", "slow", 0),
        ("rr", "fast", 0),
        ("rr", "fast", 1),
        ("rr", "slow", 1),
        ("rr", "slow", 2),
        ("rr", "fast", 2),
    ]
    assert len(result.samples) == 6


def test_summaries_are_medians_and_ratios_to_baseline(tmp_path: Path) -> None:
    result = run_case(Arithmetic(), settings(tmp_path))
    by_key = {(s.metric, s.variant): s for s in results.summarize_case(result)}
    assert by_key[("rate", "slow")].summary.median == 101.0
    assert by_key[("rate", "fast")].summary.median == 201.0
    assert by_key[("rate", "fast")].ratio == pytest.approx(201.0 / 101.0)
    assert by_key[("p99_us", "fast")].ratio == pytest.approx(0.5)
    assert by_key[("rate", "slow")].ratio == 1.0


def test_failing_case_keeps_earlier_samples_and_tears_down(tmp_path: Path) -> None:
    case = Arithmetic(fail_in_round=1)
    result = run_case(case, settings(tmp_path))
    assert result.error is not None and "load tool crashed" in result.error
    assert len(result.samples) == 2
    assert case.exited


def test_undeclared_metric_is_an_error(tmp_path: Path) -> None:
    class Sloppy(Arithmetic):
        def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
            return {"rate": 1.0, "typo": 2.0}

    result = run_case(Sloppy(), settings(tmp_path, rounds=1))
    assert result.error is not None and "typo" in result.error


def test_case_needs_exactly_one_baseline() -> None:
    class TwoBaselines(Arithmetic):
        variants = (Variant("a", "", baseline=True), Variant("b", "", baseline=True))

    with pytest.raises(CaseDefinitionError, match="exactly one"):
        check_case(TwoBaselines())
    check_case(Arithmetic())


def _run(tmp_path: Path, scale: float = 1.0) -> results.RunResult:
    case_result = run_case(Arithmetic(), settings(tmp_path))
    scaled = tuple(
        results.Sample(s.probe, s.variant, s.round, {k: v * scale for k, v in s.metrics.items()}, 0)
        for s in case_result.samples
    )
    return results.RunResult(
        started_at="2026-11-26T11:00:00Z",
        finished_at="2026-11-26T11:01:00Z",
        settings={"rounds": 3, "duration_s": 1.0, "quick": False},
        machine={"cpu_count": 2},
        cases=(dataclasses.replace(case_result, samples=scaled),),
    )


def test_json_round_trip_and_compare(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    results.write_json(_run(tmp_path), old_path)
    results.write_json(_run(tmp_path, scale=1.5), new_path)
    doc = json.loads(new_path.read_text())
    assert doc["schema"] == results.SCHEMA
    assert len(doc["cases"][0]["samples"]) == 6
    rows = results.compare(results.read_summaries(old_path), results.read_summaries(new_path))
    assert {r.key[2] for r in rows} == {"rate", "p99_us"}
    assert all(r.ratio == pytest.approx(1.5) for r in rows)


def test_read_summaries_rejects_foreign_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ResultsError, match="not a benchmark results file"):
        results.read_summaries(path)


def test_compare_command_prints_ratios(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    results.write_json(_run(tmp_path), old_path)
    results.write_json(_run(tmp_path, scale=2.0), new_path)
    out = CliRunner().invoke(main, ["compare", str(old_path), str(new_path)])
    assert out.exit_code == 0, out.output
    assert "2.00" in out.output
    assert "better" in out.output and "worse" in out.output


def test_markdown_table_and_plot(tmp_path: Path) -> None:
    run = _run(tmp_path)
    case = run.cases[0]
    table = "\n".join(case_table(case, results.summarize_case(case)))
    assert "| rr | rate (higher is better) | op/s | 101 ±1% | 201 ±0% | 1.99 |" in table
    assert plot_case(case, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    text = render_markdown(run, "python -m bench", {"arith": "p.png"})
    assert "![arith](p.png)" in text and "## arith" in text


def test_fmt_three_significant_digits() -> None:
    assert fmt(39123.4) == "39,123"
    assert fmt(9.734) == "9.73"
    assert fmt(0.01234) == "0.0123"
    assert fmt(None) == "-"


def test_config_quick_defaults_and_bounds() -> None:
    quick = BenchConfig.from_flags(
        cases=(), rounds=None, duration_s=None, quick=True, results_root=Path("r")
    )
    assert (quick.rounds, quick.duration_s) == (1, 1.0)
    normal = BenchConfig.from_flags(
        cases=(), rounds=None, duration_s=None, quick=False, results_root=Path("r")
    )
    assert (normal.rounds, normal.duration_s) == (3, 3.0)
    with pytest.raises(BenchConfigError):
        BenchConfig(rounds=0)
    with pytest.raises(BenchConfigError):
        BenchConfig(duration_s=3600)


def test_list_shows_the_registered_cases() -> None:
    out = CliRunner().invoke(main, ["--list"])
    assert out.exit_code == 0, out.output
    assert "pod-to-pod:" in out.output


def test_case_notes_reach_the_result(tmp_path: Path) -> None:
    class Noted(Arithmetic):
        def notes(self) -> tuple[str, ...]:
            return (f"{len(self.calls)} measurements",)

    result = run_case(Noted(), settings(tmp_path, rounds=2))
    assert result.notes == ("4 measurements",)
    assert "- 4 measurements" in render_markdown(
        dataclasses.replace(_run(tmp_path), cases=(result,)), "cmd", {}
    )


def test_non_finite_measurement_is_an_error(tmp_path: Path) -> None:
    class Broken(Arithmetic):
        def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
            return {"rate": float("nan")}

    result = run_case(Broken(), settings(tmp_path, rounds=1))
    assert result.error is not None and "non-finite" in result.error


def test_cost_metrics_get_their_own_table(tmp_path: Path) -> None:
    cpu = Metric("cpu_s", "s", higher_is_better=False, description="cpu", cost=True)

    class WithCost(Arithmetic):
        probes = (Probe("rr", "request/response", (RATE, P99, cpu)),)

        def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
            return {**super().measure(variant, probe, round_index), "cpu_s": 1.5}

    result = run_case(WithCost(), settings(tmp_path, rounds=1))
    summaries = results.summarize_case(result)
    main_table = "\n".join(case_table(result, summaries))
    cost_table = "\n".join(case_table(result, summaries, costs=True))
    assert "cpu_s" not in main_table and "rate" in main_table
    assert "| rr | cpu_s (lower is better) | s | 1.50 | 1.50 | 1.00 |" in cost_table
    text = render_markdown(dataclasses.replace(_run(tmp_path), cases=(result,)), "cmd", {})
    assert "Costs and bounds" in text
