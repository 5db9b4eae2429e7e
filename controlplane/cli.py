"""The `ambient controlplane` commands."""

from __future__ import annotations

from pathlib import Path

import click

from ambient.output import emit, output_option


@click.group(name="controlplane")
def cli() -> None:
    """The control plane: CA, workload discovery, validation of configuration."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option
@click.option("--quiet", "-q", is_flag=True, help="Print errors only (no warnings, no summary).")
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], output: str, quiet: bool) -> None:
    """Check Kubernetes and Istio YAML files or folders the way the control plane reads them.

    Prints every problem as `file:line: kind/namespace/name: field: what is wrong`,
    warns about objects that are accepted but ignored, and exits 1 when any object
    would be rejected.
    """
    from controlplane.validate import issue_row, summary, validate_paths

    state = validate_paths(paths)
    issues = list(state.errors) if quiet else [*state.errors, *state.warnings]
    issues.sort(key=lambda i: (i.file, i.line))
    if output == "table":
        for issue in issues:
            click.echo(str(issue), err=False)
        if not quiet:
            click.echo(summary(state))
    else:
        emit([issue_row(i) for i in issues], output)
    ctx.exit(1 if state.errors else 0)
