"""The `ambient controlplane` commands."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import click

from ambient.errors import UsageError
from ambient.output import emit, output_option
from controlplane import DEFAULT_EXCLUDED_NAMESPACES


@click.group(name="controlplane")
def cli() -> None:
    """The control plane: CA, workload discovery, validation of configuration."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option
@click.option("--quiet", "-q", is_flag=True, help="Print errors only (no warnings, no summary).")
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], output: str, quiet: bool) -> None:
    """Check Kubernetes and Istio YAML files or folders the way the control plane reads them.

    Prints every problem as `file:line: kind/namespace/name: field: what is wrong`,
    warns about objects that are accepted but ignored, and exits 1 when any object
    would be rejected. A PATH of `-` reads standard input.
    """
    from controlplane.validate import issue_row, summary, validate_paths

    state = validate_paths(paths)
    issues = list(state.errors) if quiet else [*state.errors, *state.warnings]
    issues.sort(key=lambda i: (i.file, i.line))
    if output == "table":
        for issue in issues:
            click.echo(str(issue), err=False)
        if not quiet:
            click.echo(summary(state))
    else:
        emit([issue_row(i) for i in issues], output)
    ctx.exit(1 if state.errors else 0)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--kubernetes",
    "from_kubernetes",
    is_flag=True,
    help="Read the cluster through the Kubernetes API instead of files.",
)
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="With --kubernetes.")
@click.option("--context", "kube_context", help="Kubeconfig context, with --kubernetes.")
@click.option("--cluster-id", default="Kubernetes", show_default=True, help="Istio CLUSTER_ID.")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--domain-suffix", default="cluster.local", show_default=True)
@click.option("--root-namespace", default="istio-system", show_default=True)
@output_option
def resources(
    paths: tuple[Path, ...],
    *,
    from_kubernetes: bool,
    kubeconfig: str | None,
    kube_context: str | None,
    cluster_id: str,
    trust_domain: str,
    domain_suffix: str,
    root_namespace: str,
    output: str,
) -> None:
    """Show the workload-API resources ztunnel would receive for these files or folders.

    Rejected objects are left out (run `validate` to see why); the table lists one
    resource a line, `-o json|yaml` prints the messages themselves. With --kubernetes
    the objects come from the cluster (in-cluster configuration, or a kubeconfig).
    """
    from api.messages import to_readable_dict
    from controlplane.validate import validate_paths
    from controlplane.workloadapi import MeshConfig, translate
    from controlplane.workloadapi.summary import resource_rows

    if from_kubernetes == bool(paths):
        raise UsageError(
            "give either files/folders or --kubernetes",
            hint="ambient controlplane resources config/  or  ... resources --kubernetes",
        )
    if from_kubernetes:
        from controlplane.sources import KubernetesSource

        state = KubernetesSource(kubeconfig=kubeconfig, context=kube_context).load()
    else:
        state = validate_paths(paths)
    if state.errors:
        click.echo(
            f"note: {len(state.errors)} object(s) rejected and left out; "
            "see 'ambient controlplane validate'",
            err=True,
        )
    mesh = MeshConfig(
        cluster_id=cluster_id,
        trust_domain=trust_domain,
        domain_suffix=domain_suffix,
        root_namespace=root_namespace,
    )
    snapshot = translate(state, mesh)
    if output == "table":
        emit(resource_rows(snapshot), output, columns=["type", "name", "summary"])
        return
    emit(
        {
            "addresses": {k: to_readable_dict(v) for k, v in sorted(snapshot.addresses.items())},
            "authorizations": {
                k: to_readable_dict(v) for k, v in sorted(snapshot.authorizations.items())
            },
        },
        output,
    )


@cli.command()
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Standalone: the folder of Kubernetes/Istio YAML to serve.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="CA key and root, node-credential secret (created on first start).",
)
@click.option("--listen", default="127.0.0.1:15012", show_default=True, help="gRPC/TLS: xDS + CA.")
@click.option("--admin-listen", default="127.0.0.1:15014", show_default=True, help="Status (HTTP).")
@click.option("--kubernetes", "from_kubernetes", is_flag=True, help="Read the Kubernetes API.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="With --kubernetes.")
@click.option("--context", "kube_context", help="Kubeconfig context, with --kubernetes.")
@click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path), help="Your CA cert.")
@click.option("--ca-key", type=click.Path(dir_okay=False, path_type=Path), help="Its key (PEM).")
@click.option(
    "--ca-chain",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Issuers of --ca-cert up to the root (for an intermediate).",
)
@click.option("--cluster-id", default="Kubernetes", show_default=True)
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--domain-suffix", default="cluster.local", show_default=True)
@click.option("--root-namespace", default="istio-system", show_default=True)
@click.option(
    "--exclude-namespace",
    "excluded_namespaces",
    multiple=True,
    default=DEFAULT_EXCLUDED_NAMESPACES,
    show_default=True,
    help="Pods here are never HBONE workloads, labelled or not (repeatable; as the agents').",
)
@click.option(
    "--trusted-node-account",
    multiple=True,
    default=("istio-system/ztunnel",),
    show_default=True,
    help="With --kubernetes: ns/sa allowed to request its node's identities (repeatable).",
)
def run(
    *,
    config_dir: Path | None,
    state_dir: Path,
    listen: str,
    admin_listen: str,
    from_kubernetes: bool,
    kubeconfig: str | None,
    kube_context: str | None,
    ca_cert: Path | None,
    ca_key: Path | None,
    ca_chain: Path | None,
    cluster_id: str,
    trust_domain: str,
    domain_suffix: str,
    root_namespace: str,
    excluded_namespaces: tuple[str, ...],
    trusted_node_account: tuple[str, ...],
) -> None:
    """Serve delta xDS and the CA on 15012 (TLS) until interrupted.

    Clients trust STATE_DIR/root-cert.pem; each node authenticates with the token
    printed by 'ambient controlplane node-credential NODE' (or, with --kubernetes, a
    projected service-account token). 'ambient controlplane status' shows who is connected.
    """
    import asyncio

    from controlplane.ca.authority import CaFiles
    from controlplane.server import ControlPlaneConfig
    from controlplane.server import run as serve
    from controlplane.workloadapi import MeshConfig

    if (ca_cert is None) != (ca_key is None):
        raise UsageError("--ca-cert and --ca-key go together", hint="give both, or neither")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = ControlPlaneConfig(
        state_dir=state_dir,
        config_dir=config_dir,
        kubernetes=from_kubernetes,
        kubeconfig=kubeconfig,
        kube_context=kube_context,
        listen=listen,
        admin_listen=admin_listen,
        mesh=MeshConfig(
            cluster_id=cluster_id,
            trust_domain=trust_domain,
            domain_suffix=domain_suffix,
            root_namespace=root_namespace,
            excluded_namespaces=frozenset(excluded_namespaces),
        ),
        ca_files=CaFiles(ca_cert, ca_key, ca_chain) if ca_cert and ca_key else None,
        trusted_node_accounts=trusted_node_account,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))


@cli.command()
@click.option("--admin", default="127.0.0.1:15014", show_default=True, help="The status endpoint.")
@output_option
def status(admin: str, output: str) -> None:
    """Connected proxies, the version each acknowledged, the last NACK, CA counters."""
    import json
    import urllib.error
    import urllib.request

    from controlplane.errors import ControlPlaneError

    url = f"http://{admin}/debug/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ControlPlaneError(
            f"no control plane status at {url}: {err}",
            hint="is 'ambient controlplane run' running (and --admin-listen this address)?",
        ) from err
    if output != "table":
        emit(data, output)
        return
    rows = []
    for proxy in data.get("proxies", []):
        for type_url, t in proxy.get("types", {}).items():
            nack = t.get("lastNack") or {}
            rows.append(
                {
                    "node": proxy.get("node", ""),
                    "proxy": proxy.get("nodeId", ""),
                    "type": type_url.rsplit(".", 1)[-1],
                    "resources": t.get("resources", 0),
                    "acked": t.get("ackedVersion", ""),
                    "sent": t.get("sentVersion", ""),
                    "last_nack": nack.get("error", ""),
                }
            )
    emit(rows, output, columns=["node", "proxy", "type", "resources", "acked", "sent", "last_nack"])
    envoy_rows = []
    for proxy in data.get("envoyProxies", []):
        for type_url, t in proxy.get("types", {}).items():
            nack = t.get("lastNack") or {}
            envoy_rows.append(
                {
                    "node": proxy.get("node", ""),
                    "envoy": f"{proxy.get('kind', '')} {proxy.get('namespace', '')}/"
                    f"{proxy.get('gateway') or proxy.get('serviceAccount', '')}",
                    "api": proxy.get("api", "delta"),
                    "type": type_url.rsplit(".", 1)[-1],
                    "resources": t.get("resources", 0),
                    "acked": t.get("ackedVersion", ""),
                    "nacks": t.get("nacks", 0),
                    "last_nack": nack.get("error", "")[:80],
                }
            )
    if envoy_rows:
        click.echo("")
        columns = ["node", "envoy", "api", "type", "resources", "acked", "nacks", "last_nack"]
        emit(envoy_rows, output, columns=columns)
    ca = data.get("ca", {})
    click.echo(
        f"snapshot: {json.dumps(data.get('snapshot', {}))}\n"
        f"ca: issued {ca.get('issued', 0)}, refused "
        f"{ca.get('refusedUnauthenticated', 0)} unauthenticated / "
        f"{ca.get('refusedImpersonation', 0)} impersonation / {ca.get('refusedCsr', 0)} bad CSR"
    )
    envoy = data.get("envoy") or {}
    if envoy:
        ack = envoy.get("pushToAck", {})
        mean = ack.get("sum", 0.0) / ack["count"] * 1000 if ack.get("count") else 0.0
        click.echo(
            f"envoy: {envoy.get('connected', 0)} connected, pushes {envoy.get('pushes', {})}, "
            f"NACKs {envoy.get('nacks', {})}, refused {envoy.get('refused', 0)}, "
            f"push-to-ACK mean {mean:.1f} ms over {ack.get('count', 0)}"
        )


@cli.command("node-credential")
@click.argument("node")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The control plane's state folder (holds the credential secret).",
)
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the token to this file (0600) instead of printing it.",
)
def node_credential(
    node: str, state_dir: Path, trust_domain: str, days: int, out: Path | None
) -> None:
    """Issue NODE's bootstrap credential: a bearer token for xDS and the CA.

    The token is signed with STATE_DIR/node-token.key; give it to that node's ztunnel
    (its token file). It lets the node get certificates only for pods scheduled on it.
    Replacing node-token.key revokes every credential issued so far.
    """
    import datetime as dt

    from controlplane.ca.authority import write_private
    from controlplane.ca.credentials import NodeTokens

    tokens = NodeTokens.load_or_create(state_dir, trust_domain)
    token = tokens.issue(node, dt.datetime.now(dt.UTC), dt.timedelta(days=days))
    if out is None:
        click.echo(token)
    else:
        write_private(out, token.encode() + b"\n")
        click.echo(f"credential for {node} written to {out}", err=True)
