"""The `ambient lab` commands: build, inspect, use and remove a lab from a shell.

A lab outlives the command that built it: its state lives under the run folder
(``/run/ambient/lab/<name>/``), so every command here works from any process, and
``down`` also after the builder was killed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ambient.output import emit, output_option
from ambient.preflight import require

F = TypeVar("F", bound=Callable[..., Any])

EXEC_TIMEOUT = 600.0


def _lab_options(func: F) -> F:
    func = click.option(
        "--run-root",
        type=click.Path(file_okay=False, path_type=Path),
        default="/run/ambient/lab",
        show_default=True,
        envvar="AMBIENT_LAB_RUN_ROOT",
        help="Folder holding each lab's state, logs and config.",
    )(func)
    return click.option(
        "--name",
        default=None,
        help="Lab name (prefix of its namespaces); optional when one lab runs.",
    )(func)


def _resolve_name(name: str | None, run_root: Path) -> str:
    from lab.cluster import Lab
    from lab.errors import LabNotFoundError, LabSpecError

    if name is not None:
        return name
    labs = Lab.list_labs(run_root)
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabNotFoundError(
            f"no lab is running (nothing under {run_root})", hint="start one with 'ambient lab up'"
        )
    # State left by a builder that was killed has no namespaces: not a candidate.
    alive = [lab for lab in labs if _has_namespaces(lab)]
    if len(alive) == 1:
        return alive[0]
    stale = sorted(set(labs) - set(alive))
    hint = "say which with --name"
    if stale:
        hint += f"; {', '.join(stale)} left only state behind ('ambient lab down --name X')"
    raise LabSpecError(f"several labs are running: {', '.join(alive or labs)}", hint=hint)


def _has_namespaces(lab: str, netns_dir: Path = Path("/run/netns")) -> bool:
    """Whether any network namespace of ``lab`` exists (all are named ``<lab>-...``)."""
    try:
        return any(entry.name.startswith(f"{lab}-") for entry in netns_dir.iterdir())
    except OSError:
        return False


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    from lab.errors import LabSpecError

    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabSpecError(f"{what} {item!r} is not key=value")
        out[key] = value
    return out


@click.group(name="lab")
def cli() -> None:
    """A cluster of network namespaces on this machine."""


def _remote_options(func: F) -> F:
    """``up``'s flags for one node of a lab spanning machines (lab/remote.py)."""
    for option in reversed(
        (
            click.option("--node-index", type=int, default=None,
                         help="Build only node<N> of a lab spanning machines (lab/remote.py)."),
            click.option("--uplink-device", default=None,
                         help="With --node-index: this machine's interface to the others."),
            click.option("--fabric-ip", default=None,
                         help="With --node-index: the node's ADDRESS/PREFIX on that network."),
            click.option("--peer", "peers", multiple=True, metavar="INDEX=ADDRESS",
                         help="With --node-index: another node's address (repeatable)."),
            click.option("--host-netns", default=None,
                         help="With --node-index: namespace holding the device (default: ours)."),
            click.option("--allow-host-namespace", is_flag=True,
                         help="With --node-index: take the device from this namespace (a VM)."),
        )
    ):  # fmt: skip
        func = option(func)
    return func


@cli.command()
@_lab_options
@click.option("--nodes", type=int, default=2, show_default=True, help="Number of nodes.")
@click.option(
    "--pods-per-node", type=int, default=0, show_default=True, help="Pods to create on each node."
)
@click.option("--namespace", default="default", show_default=True, help="Namespace of those pods.")
@click.option("--no-outside", is_flag=True, help="Do not create the 'outside' host.")
@click.option("--keep-logs", is_flag=True, help="Keep the logs folder when the lab goes down.")
@_remote_options
@output_option
def up(
    *,
    name: str | None,
    run_root: Path,
    nodes: int,
    pods_per_node: int,
    namespace: str,
    no_outside: bool,
    keep_logs: bool,
    output: str,
    **remote: Any,
) -> None:
    """Build a lab (fabric, nodes, outside, optional pods) and leave it running.

    With --node-index, build only that node of a lab spanning machines (lab/remote.py).
    """
    require("root", "netns", what="ambient lab up")
    from lab.cluster import Lab, LabSpec

    lab: Lab
    if remote["node_index"] is not None:
        from lab.remote import remote_lab_from_flags

        lab = remote_lab_from_flags(name or "lab", run_root, keep_logs, remote)
    else:
        spec = LabSpec(
            name=name or "lab",
            nodes=nodes,
            run_root=run_root,
            outside=not no_outside,
            keep_logs=keep_logs,
        )
        lab = Lab.create(spec)
    try:
        for node in lab.nodes:
            for i in range(1, pods_per_node + 1):
                lab.add_pod(f"pod-{node.name}-{i}", namespace=namespace, node=node)
    except BaseException:
        lab.destroy()
        raise
    _emit_status(lab, output)


@cli.command()
@_lab_options
@output_option
def status(name: str | None, run_root: Path, output: str) -> None:
    """Show the lab's nodes, pods, Services and processes."""
    from lab.cluster import Lab

    names = [name] if name else Lab.list_labs(run_root)
    labs = [Lab.attach(n, run_root) for n in names]
    if output != "table":
        data: Any = [lab.describe() for lab in labs]
        emit(data[0] if name else data, output)
        return
    rows: list[dict[str, Any]] = []
    for lab in labs:
        rows += status_rows(lab.describe())
    emit(rows, "table", STATUS_COLUMNS)


@cli.command()
@_lab_options
@click.option("--keep-logs", is_flag=True, help="Keep the lab's logs folder.")
@output_option
def down(name: str | None, run_root: Path, keep_logs: bool, output: str) -> None:
    """Remove a lab: its processes, namespaces, /etc/netns files and run folder."""
    require("root", "netns", what="ambient lab down")
    from lab.cluster import Lab
    from lab.errors import LabError

    report = Lab.destroy_by_name(
        _resolve_name(name, run_root), run_root, keep_logs=keep_logs or None
    )
    emit(
        {
            "lab": report.name,
            "netns_removed": len(report.netns_removed),
            "processes_killed": len(report.processes_killed),
            "etc_netns_removed": len(report.etc_netns_removed),
            "left_over": list(report.left_over),
        },
        output,
    )
    if report.left_over:
        raise LabError(
            f"lab {report.name!r} was not removed completely: {'; '.join(report.left_over)}",
            hint="run 'ambient lab down' again; a process that ignores SIGKILL is in D state",
        )


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@_lab_options
@click.option(
    "--timeout", type=float, default=EXEC_TIMEOUT, show_default=True, help="Seconds at most."
)
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(
    name: str | None, run_root: Path, timeout: float, target: str, command: tuple[str, ...]
) -> int:
    """Run COMMAND in TARGET: a pod (name or namespace/name), node<N>, outside or fabric.

    In pods, Services resolve by name (backend, backend.<ns>, ...). 'python' means the
    lab's interpreter, so 'python -m lab.workloads.client ...' works anywhere.
    """
    require("root", "netns", what="ambient lab exec")
    from lab.cluster import Lab
    from lab.errors import LabProcessError

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    argv, env = lab.command(target, list(command))
    try:
        done = subprocess.run(argv, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise LabProcessError(f"{' '.join(command)!r} in {target} ran over {timeout:.0f}s") from err
    return done.returncode


@cli.command(name="add-pod")
@_lab_options
@click.argument("pod")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--node", default="node1", show_default=True, help="node<N>")
@click.option("--label", "-l", "labels", multiple=True, help="key=value (repeatable)")
@click.option("--service-account", default="default", show_default=True)
@output_option
def add_pod(
    *,
    name: str | None,
    run_root: Path,
    pod: str,
    namespace: str,
    node: str,
    labels: tuple[str, ...],
    service_account: str,
    output: str,
) -> None:
    """Create a pod (namespace, veth, routes, DNS files, Pod object)."""
    require("root", "netns", what="ambient lab add-pod")
    from lab.cluster import Lab

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    made = lab.add_pod(
        pod,
        namespace=namespace,
        node=node,
        labels=_pairs(labels, "label"),
        service_account=service_account,
    )
    emit({"pod": made.key, "node": made.node, "ip": made.ip, "netns": made.netns}, output)


@cli.command(name="remove-pod")
@_lab_options
@click.argument("pod")
def remove_pod(name: str | None, run_root: Path, pod: str) -> None:
    """Delete a pod (its processes, namespace, DNS files and Pod object)."""
    require("root", "netns", what="ambient lab remove-pod")
    from lab.cluster import Lab

    Lab.attach(_resolve_name(name, run_root), run_root).remove_pod(pod)


@cli.command(name="add-service")
@_lab_options
@click.argument("service")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--selector", "-s", "selector", multiple=True, required=True, help="key=value")
@click.option(
    "--port",
    "-p",
    "ports",
    multiple=True,
    required=True,
    help="PORT[:TARGET][/NAME], e.g. 80:8080/http (repeatable)",
)
@click.option("--label", "-l", "labels", multiple=True, help="key=value (repeatable)")
@output_option
def add_service(
    *,
    name: str | None,
    run_root: Path,
    service: str,
    namespace: str,
    selector: tuple[str, ...],
    ports: tuple[str, ...],
    labels: tuple[str, ...],
    output: str,
) -> None:
    """Add a ClusterIP Service: a VIP, a Service object, and names pods resolve."""
    require("root", what="ambient lab add-service")
    from lab.cluster import Lab

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    svc = lab.add_service(
        service,
        namespace=namespace,
        selector=_pairs(selector, "selector"),
        ports=[_service_port(p) for p in ports],
        labels=_pairs(labels, "label"),
    )
    emit(
        {
            "service": svc.key,
            "vip": svc.vip,
            "ports": [f"{p.port}->{p.target_port}" for p in svc.ports],
        },
        output,
    )


@cli.command()
@_lab_options
@click.argument("kind", type=click.Choice(["namespace", "pod", "service"]))
@click.argument("target")
@click.argument("changes", nargs=-1, required=True)
def label(
    name: str | None, run_root: Path, kind: str, target: str, changes: tuple[str, ...]
) -> None:
    """Change labels of a namespace, pod or service: key=value sets, key- removes.

    The object's file in the config folder is rewritten (atomically), as 'kubectl
    label' changes it in a cluster (e.g. istio.io/use-waypoint on a service).
    """
    require("root", what="ambient lab label")
    from lab.cluster import Lab
    from lab.errors import LabSpecError

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    change: dict[str, str | None] = {}
    for item in changes:
        if item.endswith("-") and "=" not in item:
            change[item[:-1]] = None
        elif "=" in item:
            key, _, value = item.partition("=")
            change[key] = value
        else:
            raise LabSpecError(f"label change {item!r} is neither key=value nor key-")
    if kind == "namespace":
        lab.set_namespace_labels(target, change)
    elif kind == "service":
        lab.set_service_labels(target, change)
    else:
        lab.set_pod_labels(target, change)


@cli.command()
@_lab_options
@click.argument("pod")
@click.argument("program", type=click.Choice(["http-echo", "tcp-echo", "client"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--process-name", default=None, help="Name of the process (and its log file).")
def start(
    *,
    name: str | None,
    run_root: Path,
    pod: str,
    program: str,
    args: tuple[str, ...],
    process_name: str | None,
) -> None:
    """Start a workload program in a pod; it keeps running after this command."""
    require("root", "netns", what="ambient lab start")
    from lab.cluster import Lab

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    proc = lab.start_workload(pod, program, list(args), name=process_name)
    click.echo(f"{proc.name} pid {proc.pid} log {proc.log_path}")


@cli.command()
@_lab_options
@click.argument("process")
def stop(name: str | None, run_root: Path, process: str) -> None:
    """Stop a process the lab started (by its name, as 'status' shows it)."""
    require("root", what="ambient lab stop")
    from lab.cluster import Lab

    Lab.attach(_resolve_name(name, run_root), run_root).stop(process)


def _manifest_options(func: F) -> F:
    func = click.option("--dry-run", is_flag=True, help="Check and plan only; change nothing.")(
        func
    )
    func = click.option(
        "--namespace", "-n", default=None, help="Namespace of objects that name none."
    )(func)
    return click.option(
        "--filename",
        "-f",
        "files",
        multiple=True,
        required=True,
        type=click.Path(path_type=Path),
        help="A YAML file or a folder of them (repeatable).",
    )(func)


@cli.command()
@_lab_options
@_manifest_options
@output_option
def apply(
    *,
    name: str | None,
    run_root: Path,
    files: tuple[Path, ...],
    namespace: str | None,
    dry_run: bool,
    output: str,
) -> None:
    """Apply Kubernetes and Istio manifests, as 'kubectl apply -f' would.

    Namespaces, ServiceAccounts, Pods, Deployments (replicas spread over the nodes),
    Services, and Istio and Gateway API objects (written to the config folder). Images
    the lab stands in for: hashicorp/http-echo, curlimages/curl, busybox/alpine with
    sleep, pause. Every document is checked before anything changes; --dry-run
    checks and plans only (and needs no root).
    """
    if not dry_run:  # a dry run only reads the saved state
        require("root", "netns", what="ambient lab apply")
    from lab.cluster import Lab
    from lab.manifests.apply import apply_manifests

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    result = apply_manifests(lab, list(files), namespace=namespace, dry_run=dry_run)
    for warning in result.warnings:
        click.echo(str(warning), err=True)
    emit(result.rows(), output, ["object", "result", "detail"])
    for note in result.notes:
        click.echo(note, err=True)


@cli.command()
@_lab_options
@_manifest_options
@output_option
def delete(
    *,
    name: str | None,
    run_root: Path,
    files: tuple[Path, ...],
    namespace: str | None,
    dry_run: bool,
    output: str,
) -> None:
    """Delete what manifests name, as 'kubectl delete -f' would (a Namespace with its objects)."""
    if not dry_run:
        require("root", "netns", what="ambient lab delete")
    from lab.cluster import Lab
    from lab.manifests.apply import delete_manifests

    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    result = delete_manifests(lab, list(files), namespace=namespace, dry_run=dry_run)
    emit(result.rows(), output, ["object", "result", "detail"])
    for note in result.notes:
        click.echo(note, err=True)


@cli.command()
@_lab_options
@click.option("--trace-id", default=None, help="Trace to show (default: the newest).")
@click.option(
    "--collector", default=None, help="Ask this collector (http://host:port), not the lab's."
)
@output_option
def traces(
    name: str | None, run_root: Path, trace_id: str | None, collector: str | None, output: str
) -> None:
    """Show a request's spans across gateway, waypoint and backend (lab/traces.py)."""
    from lab.traces import show_trace

    run_dir = run_root / _resolve_name(name, run_root) if collector is None else run_root
    show_trace(run_dir, trace_id, collector, output)


@cli.command()
@_lab_options
@click.option("--xds-address", required=True, help="The control plane's xDS, host:port.")
@click.option(
    "--xds-root-cert",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The mesh root (root-cert.pem) that verifies it.",
)
@click.option("--xds-server-name", default="istiod.istio-system.svc", show_default=True)
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="NODE=FILE",
    help="A node's bootstrap token (repeatable; what its ztunnel uses).",
)
def connect(
    *,
    name: str | None,
    run_root: Path,
    xds_address: str,
    xds_root_cert: Path,
    xds_server_name: str,
    trust_domain: str,
    tokens: tuple[str, ...],
) -> None:
    """Register the lab's control plane; start the waypoint and gateway proxies.

    Waypoints and gateways made by 'apply' run 'ambient waypoint run' against it (with
    the token of their node) from now on; those already made start now.
    """
    require("root", "netns", what="ambient lab connect")
    from lab import mesh
    from lab.cluster import Lab
    from lab.errors import LabSpecError
    from lab.manifests import proxies

    by_node: dict[str, str] = {}
    for item in tokens:
        node, sep, file = item.partition("=")
        if not sep or not node or not file:
            raise LabSpecError(f"--token {item!r} is not NODE=FILE")
        by_node[node] = str(Path(file).resolve())
    lab = Lab.attach(_resolve_name(name, run_root), run_root)
    mesh.register(
        lab.run_dir,
        mesh.MeshEndpoint(
            xds_address=xds_address,
            xds_server_name=xds_server_name,
            root_cert=str(xds_root_cert.resolve()),
            trust_domain=trust_domain,
            tokens=by_node,
        ),
    )
    for note in proxies.start_proxies(lab, quiet_if_idle=True):
        click.echo(note)


def _service_port(text: str) -> Any:
    from lab.errors import LabSpecError
    from lab.model import ServicePort

    spec, _, port_name = text.partition("/")
    port, _, target = spec.partition(":")
    try:
        number = int(port)
        return ServicePort(port=number, target_port=int(target or number), name=port_name)
    except ValueError:
        raise LabSpecError(f"port {text!r} is not PORT[:TARGET][/NAME]") from None


STATUS_COLUMNS = ["lab", "kind", "name", "namespace", "node", "ip", "netns", "detail"]


def status_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat table rows from :meth:`lab.cluster.Lab.describe`; absent namespaces are flagged."""
    missing = set(data.get("missing_netns", []))
    rows: list[dict[str, Any]] = []

    def row(kind: str, name: str, netns: str | None = None, **cols: Any) -> None:
        detail = cols.pop("detail", None)
        if netns in missing:
            detail = f"NETNS MISSING {detail or ''}".strip()
        rows.append(
            {
                "lab": data["name"],
                "kind": kind,
                "name": name,
                "netns": netns,
                "detail": detail,
                **cols,
            }
        )

    fabric = data["fabric"]
    row("fabric", "fabric", fabric["netns"], ip=fabric["ip"], detail=fabric["cidr"])
    if data.get("outside"):
        row("host", "outside", data["outside"]["netns"], ip=data["outside"]["ip"])
    for n in data["nodes"]:
        row(
            "node",
            n["name"],
            n["netns"],
            node=n["name"],
            ip=n["ip"],
            detail=f"pods {n['pod_cidr']}",
        )
    for p in data["pods"]:
        row(
            "pod",
            p["name"],
            p["netns"],
            namespace=p["namespace"],
            node=p["node"],
            ip=p["ip"],
            detail=p["labels"],
        )
    for svc in data["services"]:
        row(
            "service",
            svc["name"],
            namespace=svc["namespace"],
            ip=svc["vip"],
            detail=",".join(svc["ports"]),
        )
    for pr in data["processes"]:
        state = "running" if pr["alive"] else "exited"
        row("process", pr["name"], pr["netns"], detail=f"pid {pr['pid']} {state}")
    return rows


def _emit_status(lab: Any, output: str) -> None:
    if output == "table":
        emit(status_rows(lab.describe()), "table", STATUS_COLUMNS)
    else:
        emit(lab.describe(), output)
