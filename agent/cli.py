"""The `ambient agent` commands."""

from __future__ import annotations

from pathlib import Path

import click

from ambient.output import emit, output_option


@click.group(name="agent")
def cli() -> None:
    """The node agent: load, attach and keep the eBPF capture programs in step."""


@cli.command("run")
@click.option("--node", "node_name", required=True, help="Kubernetes node name served.")
@click.option(
    "--node-id",
    default=None,
    help="Host-unique id for the pins under /sys/fs/bpf/ambient/ (default: --node).",
)
@click.option(
    "--config-dir",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of Namespace/Pod YAML (the lab's config folder).",
)
@click.option("--kubernetes", is_flag=True, help="Read pods from the Kubernetes API instead.")
@click.option("--kubeconfig", default=None, help="Kubeconfig (default: in-cluster config).")
@click.option("--uplink", default=None, help="Interface toward other nodes (default route's).")
@click.option("--metrics-port", default=15029, show_default=True, help="0 disables.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--exclude-port", "exclude_ports", multiple=True, type=int, help="Outbound port.")
@click.option("--exclude-inbound-port", "exclude_inbound_ports", multiple=True, type=int)
@click.option("--exclude-cidr", "exclude_cidrs", multiple=True, help="Outbound destinations.")
@click.option(
    "--exclude-namespace",
    "exclude_namespaces",
    multiple=True,
    default=("kube-system", "istio-system"),
    show_default=True,
    help="Namespace whose pods are never captured, even if labelled (repeatable; "
    "given once, it replaces the defaults; --exclude-namespace '' excludes none).",
)
@click.option("--mark", default=0x539, show_default=True, help="Mark of assigned packets.")
@click.option("--detach-on-exit", is_flag=True, help="Detach everything on a clean exit.")
@click.option(
    "--allow-host-namespace",
    is_flag=True,
    help="Allow running in the host's network namespace (a real node).",
)
def run(  # click passes every flag by name
    *,
    node_name: str,
    node_id: str | None,
    config_dir: Path | None,
    kubernetes: bool,
    kubeconfig: str | None,
    uplink: str | None,
    metrics_port: int,
    metrics_host: str,
    exclude_ports: tuple[int, ...],
    exclude_inbound_ports: tuple[int, ...],
    exclude_cidrs: tuple[str, ...],
    exclude_namespaces: tuple[str, ...],
    mark: int,
    detach_on_exit: bool,
    allow_host_namespace: bool,
) -> None:
    """Run the node agent in this (the node's) network namespace until SIGTERM."""
    from ambient.preflight import require

    require("root", "kernel", "bpf", "bpffs", "bcc", what="ambient agent run")
    from agent.check import log_startup_check

    log_startup_check()  # logs what this node lacks (WARN/FAIL); never stops the agent
    from agent.capture import HBONE_PORT, CaptureSettings
    from agent.config import AgentConfig
    from agent.daemon import run_agent

    capture = CaptureSettings(
        mark=mark,
        outbound_excluded_ports=tuple(dict.fromkeys((HBONE_PORT, *exclude_ports))),
        inbound_excluded_ports=tuple(exclude_inbound_ports),
        excluded_cidrs=tuple(exclude_cidrs),
    )
    config = AgentConfig(
        node_name=node_name,
        node_id=node_id or node_name,
        config_dir=config_dir,
        kubernetes=kubernetes,
        kubeconfig=kubeconfig,
        uplink=uplink,
        excluded_namespaces=frozenset(ns for ns in exclude_namespaces if ns),
        capture=capture,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        detach_on_exit=detach_on_exit,
        allow_host_namespace=allow_host_namespace,
    )
    run_agent(config)


@cli.command("cleanup")
@click.option("--node-id", "--node", "node_id", required=True, help="The id the agent ran with.")
@click.option(
    "--netns",
    default=None,
    help="Named network namespace of the node (default: this process's namespace).",
)
@click.option("--allow-host-namespace", is_flag=True, help="Clean the host's namespace.")
@output_option
def cleanup_cmd(node_id: str, netns: str | None, allow_host_namespace: bool, output: str) -> None:
    """Remove everything an agent attached, routed or pinned for a node."""
    from ambient.preflight import require

    require("root", "bpffs", what="ambient agent cleanup")
    from pyroute2 import IPRoute

    from agent.attach import LocalDelivery
    from agent.config import DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY
    from agent.daemon import cleanup, refuse_host_namespace
    from agent.pinned import BPFFS_ROOT, pin_dir_for

    delivery = LocalDelivery(0x539, 0xFFFFFFFF, DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY)
    pin_dir = pin_dir_for(node_id, BPFFS_ROOT)
    if netns is None:
        refuse_host_namespace(allow_host_namespace, "ambient agent cleanup")
        with IPRoute() as ipr:
            report = cleanup(pin_dir, ipr, delivery)
    elif Path("/run/netns", netns).exists():
        with IPRoute(netns=netns) as ipr:
            report = cleanup(pin_dir, ipr, delivery)
    else:
        report = cleanup(pin_dir, None, None)
        report["note"] = f"namespace {netns} is gone; its attachments went with it"
    emit(report, output)


@cli.command("check")
@click.option("--facts", is_flag=True, help="Print the raw facts gathered (for a bug report).")
@click.option("--quick", is_flag=True, help="Only read: no probe program, no capture programs.")
@output_option
def check(facts: bool, quick: bool, output: str) -> None:
    """Say what this node's kernel offers the agent and what to do: PASS/WARN/FAIL per need.

    Loads a bpf_sk_assign probe and attaches it only inside a scratch network namespace
    of a child process; compiles and loads both capture programs with their maps pinned
    under a throw-away folder. Exits 1 when any check fails.
    """
    from agent.check import CollectOptions, collect_facts, evaluate, rows_of

    gathered = collect_facts(CollectOptions(tc_probe=not quick, capture_programs=not quick))
    if facts:
        emit(gathered.to_json(), output)
        return
    checks = evaluate(gathered)
    emit(rows_of(checks), output)
    if any(c.status == "FAIL" for c in checks):
        raise SystemExit(1)
