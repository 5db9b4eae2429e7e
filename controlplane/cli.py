"""The `ambient controlplane` commands."""

from __future__ import annotations

import click


@click.group(name="controlplane")
def cli() -> None:
    """The control plane: CA, workload discovery, validation of configuration."""
