"""The `ambient demo` command."""

from __future__ import annotations

import sys

import click

from ambient.preflight import require


@click.command(name="demo")
@click.option("--name", default="demo", show_default=True, help="Lab name (namespace prefix).")
@click.option("--keep", is_flag=True, help="Leave the lab running and print how to explore it.")
@click.option(
    "--no-agents",
    is_flag=True,
    help="Do not start the node agents (shows what the checks catch without capture).",
)
def cli(name: str, keep: bool, no_agents: bool) -> int:
    """A two-node mesh lab in network namespaces, traffic through it, and a report.

    Exits non-zero if any check failed. Ctrl-C at any moment tears everything down.
    """
    require("root", "netns", "kernel", "bpf", "bpffs", "bcc", what="ambient demo")
    from lab.demo import DemoConfig, run_demo, summary

    config = DemoConfig(name=name, keep=keep, run_agents=not no_agents)
    report = run_demo(config, sys.stdout)
    click.echo(summary(report, config))
    return 0 if report.passed else 1
