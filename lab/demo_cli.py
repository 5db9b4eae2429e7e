"""The `ambient demo` command."""

from __future__ import annotations

import click


@click.group(name="demo", invoke_without_command=True)
def cli() -> None:
    """A two-node mesh in network namespaces, traffic through it, and a report."""
