"""The `ambient ztunnel` commands."""

from __future__ import annotations

import click


@click.group(name="ztunnel")
def cli() -> None:
    """ztunnel, the node-local L4 proxy."""
