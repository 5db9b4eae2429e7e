"""The `ambient demo` command."""

from __future__ import annotations

import sys

import click

from ambient.preflight import require


@click.command(name="demo")
@click.option("--name", default="demo", show_default=True, help="Lab name (namespace prefix).")
@click.option("--keep", is_flag=True, help="Leave the mesh running and print how to explore it.")
@click.option(
    "--break",
    "sabotage",
    multiple=True,
    type=click.Choice(
        [
            "no-agents",
            "no-peer-authentication",
            "no-authorization-policy",
            "no-source-ip",
            "no-waypoint",
            "no-canary-change",
            "no-header-routing",
            "no-retries",
            "no-circuit-breaking",
            "no-l7-authorization",
            "no-ingress",
        ]
    ),
    help="Break a property on purpose to watch its check FAIL (repeatable).",
)
@click.option(
    "--check",
    "checks",
    multiple=True,
    type=click.IntRange(1, 13),
    help="Run only this check (repeatable); the mesh comes up as always.",
)
def cli(name: str, keep: bool, sabotage: tuple[str, ...], checks: tuple[int, ...]) -> int:
    """The mesh tutorial on a two-node lab: real eBPF capture, real mTLS, L7 on Envoy.

    Applies deploy/examples/demo/, runs a node agent and a ztunnel on each node, and
    proves what a mesh promises (checks 1-7); then the tutorial
    (deploy/examples/tutorial/) behind its waypoint and the ingress gateway: canary,
    header routing, retries, circuit breaking, L7 authorization, ingress from outside
    (checks 8-13). Each check with PASS/FAIL and its evidence. Exits non-zero if any
    check failed. Ctrl-C at any moment tears everything down.
    """
    require("root", "netns", "kernel", "bpf", "bpffs", "bcc", what="ambient demo")
    from lab.demo import DemoConfig, run_demo, summary

    config = DemoConfig(
        name=name, keep=keep, sabotage=frozenset(sabotage), checks=frozenset(checks)
    )
    report = run_demo(config, sys.stdout)
    click.echo(summary(report, config))
    return 0 if report.passed else 1
