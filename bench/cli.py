"""``python -m bench`` (also ``ambient bench``): run benchmarks, list them, compare runs."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from bench import results
from bench.case import load_cases, registered
from bench.config import BenchConfig
from bench.report import fmt


@click.group(name="bench", invoke_without_command=True)
@click.option("--case", "cases", multiple=True, help="Run only this case (repeatable).")
@click.option("--rounds", type=int, default=None, help="Rounds per (probe, variant) [3; quick 1].")
@click.option("--duration", type=float, default=None, help="Seconds per measurement [3; quick 1].")
@click.option("--quick", is_flag=True, help="Smoke test: 1 round of 1 s measurements.")
@click.option(
    "--results",
    "results_root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("bench/results"),
    show_default=True,
    help="Folder for run folders and the 'latest' symlink.",
)
@click.option("--no-plots", is_flag=True, help="Skip the matplotlib plots.")
@click.option(
    "--lab-prefix",
    default="bnch",
    show_default=True,
    help="Prefix of the labs the cases build (1-6 lowercase letters/digits); "
    "give each concurrent run its own.",
)
@click.option("--list", "list_cases", is_flag=True, help="List the cases and exit.")
@click.pass_context
def cli(
    ctx: click.Context,
    *,
    cases: tuple[str, ...],
    rounds: int | None,
    duration: float | None,
    quick: bool,
    results_root: Path,
    no_plots: bool,
    lab_prefix: str,
    list_cases: bool,
) -> None:
    """Run the benchmarks (all, or those named with --case) and write a report.

    Every case is measured side by side with its baseline in the same run; see
    bench/README.md. `python -m bench compare OLD.json NEW.json` compares two runs.
    """
    if ctx.invoked_subcommand is not None:
        return
    if list_cases:
        failures = load_cases()
        for name, factory in registered().items():
            case = factory()
            click.echo(f"{name}: {case.description}")
        for module, reason in failures.items():
            click.echo(f"(could not import {module}: {reason})")
        return
    from ambient import preflight
    from bench.runner import run_all

    preflight.require("root", "netns", what="python -m bench")
    config = BenchConfig.from_flags(
        cases=cases,
        rounds=rounds,
        duration_s=duration,
        quick=quick,
        results_root=results_root,
        plots=not no_plots,
        lab_prefix=lab_prefix,
    )
    args = sys.argv[1:]
    if args[:1] == ["bench"]:  # invoked as `ambient bench ...`
        args = args[1:]
    command = "python -m bench " + shlex.join(args)
    # a SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C, so every lab and proxy the
    # cases started is torn down by its context manager instead of being left behind
    signal.signal(signal.SIGTERM, functools.partial(_exit_on_sigterm, os.getpid()))
    run, out_dir = run_all(config, command.strip())
    click.echo((out_dir / "report.md").read_text())
    click.echo(f"results: {out_dir}/results.json, report: {out_dir}/report.md")
    failed = [c.name for c in run.cases if c.error] + list(run.import_failures)
    if failed:
        raise click.ClickException(f"benchmark case(s) failed: {', '.join(failed)}")


def _exit_on_sigterm(owner: int, signum: int, frame: FrameType | None) -> None:
    del frame
    if os.getpid() != owner:
        # a forked helper (pyroute2 forks to create namespaces) inherits this handler;
        # it must die at once, never unwind the parent's stack and tear down its lab
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


@cli.command("compare")
@click.argument("old", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def compare_cmd(old: Path, new: Path) -> None:
    """Print NEW/OLD ratios of every median present in both results.json files."""
    rows = results.compare(results.read_summaries(old), results.read_summaries(new))
    if not rows:
        raise click.ClickException("the two runs have no figure in common")
    header = ("case", "probe", "metric", "variant", "unit", "old", "new", "new/old", "")
    table = [header]
    for row in rows:
        verdict = ""
        if row.ratio is not None and row.ratio != 1.0:
            improved = (row.ratio > 1.0) == row.higher_is_better
            verdict = "better" if improved else "worse"
        table.append((*row.key, row.unit, fmt(row.old), fmt(row.new), fmt(row.ratio), verdict))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
