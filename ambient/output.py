"""Rendering of state for the CLI: tables for people, JSON and YAML for programs.

Every command that prints state takes ``-o table|json|yaml`` through :func:`output_option`
and hands a list of flat rows (or one mapping) to :func:`emit`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click
import yaml

FORMATS = ("table", "json", "yaml")

F = TypeVar("F", bound=Callable[..., Any])


def output_option(func: F) -> F:
    """The ``-o/--output`` option shared by every command that prints state."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Aligns rows under upper-case headers; an empty list renders as a header line only."""
    cols = list(columns) if columns is not None else _columns_of(rows)
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    headers = [c.upper().replace("_", " ") for c in cols]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def render(data: Any, fmt: str, columns: Sequence[str] | None = None) -> str:
    """Renders ``data`` (rows, or any JSON-able value) in one of :data:`FORMATS`."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()
    if fmt == "table":
        rows = data if isinstance(data, list) else [data]
        return render_table(rows, columns)
    raise ValueError(f"unknown output format {fmt!r}")


def emit(data: Any, fmt: str, columns: Sequence[str] | None = None) -> None:
    """Prints ``data`` in the chosen format."""
    click.echo(render(data, fmt, columns))


def _columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    return cols


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)
