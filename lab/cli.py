"""The `ambient lab` commands."""

from __future__ import annotations

import click


@click.group(name="lab")
def cli() -> None:
    """A cluster of network namespaces on this machine."""
