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
        ["no-agents", "no-peer-authentication", "no-authorization-policy", "no-source-ip"]
    ),
    help="Break a property on purpose to watch its check FAIL (repeatable).",
)
def cli(name: str, keep: bool, sabotage: tuple[str, ...]) -> int:
    """The mesh tutorial on a two-node lab: real eBPF capture, real mTLS, seven checks.

    Applies deploy/examples/demo/, runs a node agent and a ztunnel on each node, and
    proves what a mesh promises, each check with PASS/FAIL and its evidence. Exits
    non-zero if any check failed. Ctrl-C at any moment tears everything down.
    """
    require("root", "netns", "kernel", "bpf", "bpffs", "bcc", what="ambient demo")
    from lab.demo import DemoConfig, run_demo, summary

    config = DemoConfig(name=name, keep=keep, sabotage=frozenset(sabotage))
    report = run_demo(config, sys.stdout)
    click.echo(summary(report, config))
    return 0 if report.passed else 1
