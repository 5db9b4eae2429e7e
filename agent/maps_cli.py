"""The `ambient maps` commands: the pinned capture maps of a node, for people and programs.

They read ``/sys/fs/bpf/ambient/<node-id>/`` directly, so they work while the agent
runs and after it stopped, from any network namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ambient.output import emit, output_option

NODE_ID_HELP = "Node id the agent pins under (e.g. <lab>-node1); see /sys/fs/bpf/ambient/."


def _node_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--node-id", required=True, help=NODE_ID_HELP)(func)


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--pod-ip", default=None, help="Only this pod address.")(func)
    return click.option("--namespace", "-n", default=None, help="Only this namespace.")(func)


def _open(node_id: str) -> Any:
    from ambient.preflight import require

    require("root", "bpffs", what="ambient maps")
    from agent.nodemaps import NodeMaps
    from agent.pinned import BPFFS_ROOT, pin_dir_for

    return NodeMaps(pin_dir_for(node_id, BPFFS_ROOT))


def filter_rows(
    rows: list[dict[str, Any]], pod_ip: str | None, namespace: str | None
) -> list[dict[str, Any]]:
    """Rows of that pod address and/or namespace."""
    return [
        r
        for r in rows
        if (pod_ip is None or r.get("pod_ip") == pod_ip)
        and (namespace is None or r.get("namespace") == namespace)
    ]


@click.group(name="maps")
def cli() -> None:
    """Inspect the pinned redirect maps of a node (workloads, stats, settings, programs)."""


@cli.command("workloads")
@_node_option
@_filter_options
@output_option
def workloads(node_id: str, pod_ip: str | None, namespace: str | None, output: str) -> None:
    """Pods the capture programs know: address, enrollment, host interface."""
    with _open(node_id) as maps:
        emit(filter_rows(maps.workload_rows(), pod_ip, namespace), output)


@cli.command("stats")
@_node_option
@_filter_options
@output_option
def stats(node_id: str, pod_ip: str | None, namespace: str | None, output: str) -> None:
    """Per-pod counters: redirected connections, fail-closed drops, passed packets."""
    with _open(node_id) as maps:
        emit(filter_rows(maps.stats_rows(), pod_ip, namespace), output)


@cli.command("verdicts")
@_node_option
@output_option
def verdicts(node_id: str, output: str) -> None:
    """Node-wide TCP packets by verdict, and fail-closed packets by reason (codes.h)."""
    with _open(node_id) as maps:
        emit(maps.verdict_rows(), output)


@cli.command("settings")
@_node_option
@output_option
def settings(node_id: str, output: str) -> None:
    """Listener ports, the mark and the exclusions the programs apply."""
    from dataclasses import asdict

    with _open(node_id) as maps:
        current = maps.read_settings()
    if current is None:
        from agent.errors import PinnedStateError

        raise PinnedStateError(
            f"the settings of node {node_id} were never written",
            hint="the agent writes them when it starts; is it running?",
        )
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(current).items()}
    data["mark"] = f"{current.mark:#x}"
    emit(data, output)


@cli.command("programs")
@_node_option
@_filter_options
@output_option
def programs(node_id: str, pod_ip: str | None, namespace: str | None, output: str) -> None:
    """Which program is attached where (kernel program id, tag, interface, pod)."""
    with _open(node_id) as maps:
        rows = maps.program_rows()
    for row in rows:
        row["namespace"] = row["pod"].partition("/")[0] if row["pod_ip"] else None
    emit(filter_rows(rows, pod_ip, namespace), output)


@cli.command("nodes")
@output_option
def nodes(output: str) -> None:
    """Node ids that have pins on this host."""
    from agent.pinned import BPFFS_ROOT

    root = Path(BPFFS_ROOT)
    rows = [{"node_id": p.name, "pin_dir": str(p)} for p in sorted(root.glob("*")) if p.is_dir()]
    emit(rows, output)
