"""The Markdown report and its plots, rendered from a :class:`~bench.results.RunResult`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench.results import CaseResult, MetricSummary, RunResult, summarize_case


def fmt(value: float | None) -> str:
    """A figure with three significant digits (``-`` for a missing one)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, 2 - magnitude)
    return f"{value:,.{decimals}f}"


def _cell(summary: MetricSummary | None) -> str:
    if summary is None:
        return "-"
    text = fmt(summary.summary.median)
    if summary.summary.n > 1:
        text += f" ±{summary.summary.spread * 50:.0f}%"
    return text


def case_table(
    result: CaseResult, summaries: Sequence[MetricSummary], *, costs: bool = False
) -> list[str]:
    """Markdown table: one row per metric, medians per variant, ratios to the baseline.

    ``costs`` selects the resource metrics (CPU, memory) instead of the probes' results.
    """
    others = [v for v in result.variants if v != result.baseline]
    header = (
        ["probe", "metric", "unit", f"{result.baseline} (baseline)"]
        + list(others)
        + [f"{v} / {result.baseline}" for v in others]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(s.probe, s.metric, s.variant): s for s in summaries}
    for info in result.metrics:
        if info.cost != costs:
            continue
        row_summaries = [by_key.get((info.probe, info.name, v)) for v in result.variants]
        if all(s is None for s in row_summaries):
            continue
        direction = "higher" if info.higher_is_better else "lower"
        cells = [info.probe, f"{info.name} ({direction} is better)", info.unit]
        cells.append(_cell(by_key.get((info.probe, info.name, result.baseline))))
        cells += [_cell(by_key.get((info.probe, info.name, v))) for v in others]
        for v in others:
            s = by_key.get((info.probe, info.name, v))
            cells.append(fmt(s.ratio) if s is not None and s.ratio is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(run: RunResult, command: str, plots: dict[str, str]) -> str:
    """The whole ``report.md``: settings, machine, then one section per case."""
    settings = run.settings
    machine = run.machine
    out = [
        f"# Benchmark run {run.started_at}",
        "",
        f"Command: `{command}`  ",
        f"Started {run.started_at}, finished {run.finished_at}.  ",
        f"Machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"kernel {machine.get('kernel')}, Python {machine.get('python')}; load average "
        f"{machine.get('loadavg_before')} before, {machine.get('loadavg_after')} after "
        "(other work on the machine shares the CPUs and widens the spreads).  ",
        f"Rounds: {settings.get('rounds')}, {settings.get('duration_s')} s per measurement"
        + (" (quick mode: figures are indicative only)" if settings.get("quick") else "")
        + ". Each cell is the median over the rounds, ± half the spread (max-min) "
        "relative to the median; ratios divide medians measured in this same run, "
        "variants alternating within every round.",
        "",
    ]
    for module, reason in run.import_failures.items():
        out += [f"**Case module {module} could not be imported:** {reason}", ""]
    for case in run.cases:
        summaries = summarize_case(case)
        out += [f"## {case.name}", "", case.description, "", f"Data path: {case.data_path}", ""]
        out += [f"- `{name}`: {text}" for name, text in case.variant_descriptions.items()]
        out.append("")
        if case.error:
            out += [f"**The case stopped early:** {case.error}", ""]
        if summaries:
            out += case_table(case, summaries)
            out.append("")
            cost_rows = case_table(case, summaries, costs=True)
            if len(cost_rows) > 2:
                out += ["Costs and bounds (what the figures above paid, and who was busy):", ""]
                out += [*cost_rows, ""]
        if case.name in plots:
            out += [f"![{case.name}]({plots[case.name]})", ""]
        out += ["Probes:", ""]
        out += [f"- `{name}`: {text}" for name, text in case.probe_descriptions.items()]
        out.append("")
        if case.notes:
            out += ["Whole run:", ""]
            out += [f"- {note}" for note in case.notes]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def plot_case(case: CaseResult, path: Path) -> bool:
    """One PNG per case: a panel per result metric (costs are in the table), a bar per
    variant (median, min-max whiskers). Returns False when there is nothing to plot.
    """
    summaries = summarize_case(case)
    if not summaries:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    infos = [
        m
        for m in case.metrics
        if not m.cost and any(s.probe == m.probe and s.metric == m.name for s in summaries)
    ]
    if not infos:
        return False
    columns = min(4, len(infos))
    rows = math.ceil(len(infos) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.0 * rows), squeeze=False)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    color_of = {v: palette[i % len(palette)] for i, v in enumerate(case.variants)}
    by_key = {(s.probe, s.metric, s.variant): s for s in summaries}
    for index, info in enumerate(infos):
        ax = axes[index // columns][index % columns]
        names, medians, low, high = [], [], [], []
        for variant in case.variants:
            s = by_key.get((info.probe, info.name, variant))
            if s is None:
                continue
            names.append(variant)
            medians.append(s.summary.median)
            low.append(s.summary.median - s.summary.minimum)
            high.append(s.summary.maximum - s.summary.median)
        ax.bar(names, medians, yerr=[low, high], capsize=4, color=[color_of[n] for n in names])
        ax.set_title(f"{info.probe}: {info.name}", fontsize=9)
        ax.set_ylabel(info.unit, fontsize=8)
        ax.tick_params(labelsize=7)
    for index in range(len(infos), rows * columns):
        axes[index // columns][index % columns].axis("off")
    fig.suptitle(f"{case.name} (median of rounds, whiskers min-max)", fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
