"""The `ambient maps` commands."""

from __future__ import annotations

import click


@click.group(name="maps")
def cli() -> None:
    """Inspect the pinned redirect maps of a node (workloads, stats, settings, programs)."""
