"""``ambient waypoint``: waypoints and gateways (apply|list|delete|status come with binding)."""

from __future__ import annotations

import click

from waypoint.run_cli import run


@click.group(name="waypoint")
def cli() -> None:
    """Waypoint and gateway proxies (Envoy, configured by the control plane)."""


cli.add_command(run)
