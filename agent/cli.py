"""The `ambient agent` commands."""

from __future__ import annotations

import click


@click.group(name="agent")
def cli() -> None:
    """The node agent: load, attach and keep the eBPF capture programs in step."""
