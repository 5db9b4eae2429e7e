"""The `ambient controlplane` commands."""

from __future__ import annotations

from pathlib import Path

import click

from ambient.errors import UsageError
from ambient.output import emit, output_option


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
