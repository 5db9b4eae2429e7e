"""The results of a run: samples, summaries and ratios, and their JSON form.

Everything here is data and pure functions; ``bench.report`` renders it and
``bench.runner`` fills it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import stats
from bench.case import Case
from bench.errors import ResultsError

SCHEMA = "ambient-bench/1"


@dataclass(frozen=True)
class Sample:
    """One measurement: a probe through a variant in one round."""

    probe: str
    variant: str
    round: int
    metrics: Mapping[str, float]
    elapsed_s: float
    """Wall time the measurement took, set-up of the load tool included."""


@dataclass(frozen=True)
class MetricInfo:
    """A metric's declaration as stored in the results (no code needed to read them)."""

    probe: str
    name: str
    unit: str
    higher_is_better: bool
    description: str
    cost: bool = False


@dataclass(frozen=True)
class CaseResult:
    """Everything one case produced in a run."""

    name: str
    description: str
    data_path: str
    baseline: str
    variants: tuple[str, ...]
    variant_descriptions: Mapping[str, str]
    probe_descriptions: Mapping[str, str]
    metrics: tuple[MetricInfo, ...]
    samples: tuple[Sample, ...] = ()
    error: str | None = None
    """Why the case stopped early, if it did (its samples so far are kept)."""
    notes: tuple[str, ...] = ()

    @staticmethod
    def declare(case: Case) -> CaseResult:
        """An empty result carrying the case's declarations."""
        return CaseResult(
            name=case.name,
            description=case.description,
            data_path=case.data_path,
            baseline=case.baseline().name,
            variants=tuple(v.name for v in case.variants),
            variant_descriptions={v.name: v.description for v in case.variants},
            probe_descriptions={p.name: p.description for p in case.probes},
            metrics=tuple(
                MetricInfo(p.name, m.name, m.unit, m.higher_is_better, m.description, m.cost)
                for p in case.probes
                for m in p.metrics
            ),
        )


@dataclass(frozen=True)
class MetricSummary:
    """One variant's figure for one metric, and its ratio to the baseline's."""

    case: str
    probe: str
    metric: str
    unit: str
    higher_is_better: bool
    variant: str
    summary: stats.Summary
    ratio: float | None
    """median(variant) / median(baseline); ``None`` without a usable baseline figure."""


def summarize_case(result: CaseResult) -> list[MetricSummary]:
    """Medians per (probe, metric, variant) and ratios to the baseline's median."""
    out: list[MetricSummary] = []
    for info in result.metrics:
        per_variant: dict[str, list[float]] = {}
        for sample in result.samples:
            if sample.probe == info.probe and info.name in sample.metrics:
                per_variant.setdefault(sample.variant, []).append(sample.metrics[info.name])
        base_values = per_variant.get(result.baseline)
        base_median = stats.median(base_values) if base_values else None
        for variant in result.variants:
            values = per_variant.get(variant)
            if not values:
                continue
            summary = stats.summarize(values)
            ratio = None if base_median is None else stats.ratio(summary.median, base_median)
            out.append(
                MetricSummary(
                    case=result.name,
                    probe=info.probe,
                    metric=info.name,
                    unit=info.unit,
                    higher_is_better=info.higher_is_better,
                    variant=variant,
                    summary=summary,
                    ratio=ratio,
                )
            )
    return out


@dataclass(frozen=True)
class RunResult:
    """A whole run: when, where, with what settings, and every case's result."""

    started_at: str
    finished_at: str
    settings: Mapping[str, Any]
    machine: Mapping[str, Any]
    cases: tuple[CaseResult, ...]
    import_failures: Mapping[str, str] = field(default_factory=dict)

    def summaries(self) -> list[MetricSummary]:
        """Summaries of every case, in case order."""
        return [s for case in self.cases for s in summarize_case(case)]


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def to_json(run: RunResult) -> dict[str, Any]:
    """The JSON document written as ``results.json`` (samples and summaries both)."""
    doc: dict[str, Any] = {"schema": SCHEMA, **asdict(run)}
    doc["summaries"] = [
        {
            "case": s.case,
            "probe": s.probe,
            "metric": s.metric,
            "unit": s.unit,
            "higher_is_better": s.higher_is_better,
            "variant": s.variant,
            "n": s.summary.n,
            "median": s.summary.median,
            "min": s.summary.minimum,
            "max": s.summary.maximum,
            "spread": s.summary.spread,
            "ratio": _finite_or_none(s.ratio),
        }
        for s in run.summaries()
    ]
    return doc


def write_json(run: RunResult, path: Path) -> None:
    """Write :func:`to_json` of ``run`` to ``path``."""
    path.write_text(json.dumps(to_json(run), indent=2, sort_keys=False) + "\n")


@dataclass(frozen=True)
class StoredSummary:
    """A summary row read back from a results file (for ``compare``)."""

    case: str
    probe: str
    metric: str
    variant: str
    unit: str
    higher_is_better: bool
    median: float
    ratio: float | None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies the same figure in two runs."""
        return (self.case, self.probe, self.metric, self.variant)


def read_summaries(path: Path) -> list[StoredSummary]:
    """The summary rows of a ``results.json`` written by this harness."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(
            f"cannot read benchmark results {path}: {err}",
            hint="pass a results.json written by `python -m bench` (bench/results/<run>/)",
        ) from err
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(
            f"{path} is not a benchmark results file (schema {SCHEMA!r} expected)",
            hint="pass bench/results/<run>/results.json",
        )
    rows = doc.get("summaries")
    if not isinstance(rows, list):
        raise ResultsError(f"{path} has no 'summaries' list")
    out: list[StoredSummary] = []
    for index, row in enumerate(rows):
        try:
            ratio_raw = row.get("ratio")
            out.append(
                StoredSummary(
                    case=str(row["case"]),
                    probe=str(row["probe"]),
                    metric=str(row["metric"]),
                    variant=str(row["variant"]),
                    unit=str(row["unit"]),
                    higher_is_better=bool(row["higher_is_better"]),
                    median=float(row["median"]),
                    ratio=None if ratio_raw is None else float(ratio_raw),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ResultsError(f"{path}: summary row {index} is malformed ({err})") from err
    return out


@dataclass(frozen=True)
class Comparison:
    """The same figure in an old and a new run."""

    key: tuple[str, str, str, str]
    unit: str
    higher_is_better: bool
    old: float
    new: float
    ratio: float | None
    """new / old."""


def compare(old: Sequence[StoredSummary], new: Sequence[StoredSummary]) -> list[Comparison]:
    """Figures present in both runs, with new/old ratios, in the new run's order."""
    old_by_key = {s.key: s for s in old}
    out: list[Comparison] = []
    for row in new:
        before = old_by_key.get(row.key)
        if before is None:
            continue
        out.append(
            Comparison(
                key=row.key,
                unit=row.unit,
                higher_is_better=row.higher_is_better,
                old=before.median,
                new=row.median,
                ratio=stats.ratio(row.median, before.median),
            )
        )
    return out
