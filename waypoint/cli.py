"""``ambient waypoint``: declare, list, remove and inspect waypoints, as ``istioctl waypoint``.

A waypoint is a Gateway API ``Gateway`` of class ``istio-waypoint`` with one HBONE
listener ``mesh`` on 15008, labelled ``istio.io/waypoint-for``. These commands write
and read such objects where the control plane reads the cluster:

- ``--dir FOLDER``: a folder of YAML (standalone use; the file is edited in place when
  the object is already defined in it);
- ``--kubeconfig PATH`` (or ``--kube`` for the in-cluster/default configuration): the
  Kubernetes API;
- otherwise the running lab (``--lab NAME`` when several run): through the lab's own
  apply, so that the lab starts the waypoint's pod and Service.

The pure part (:func:`waypoint_gateway`, :func:`waypoint_rows`) takes and returns data;
the stores do the I/O.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click
import yaml

from ambient.errors import AmbientError
from ambient.output import emit, output_option
from controlplane.model import (
    GATEWAY_NAME_LABEL,
    WAYPOINT_CLASS,
    ClusterState,
)
from controlplane.sources.documents import config_files
from controlplane.sources.fields import is_dns1123_label, is_dns1123_subdomain
from controlplane.workloadapi.waypoints import (
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
    WAYPOINT_FOR_LABEL,
    WAYPOINT_HBONE_PORT,
    Binding,
    TrafficType,
    WaypointIndex,
    has_waypoint_label,
)
from waypoint.run_cli import run

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
DEFAULT_NAME = "waypoint"
COLUMNS = ["namespace", "name", "for", "address", "ready", "bound", "problems"]


class WaypointCommandError(AmbientError):
    """A waypoint command cannot do what was asked (no such waypoint, no cluster)."""


# --- pure -------------------------------------------------------------------------------


def waypoint_gateway(namespace: str, name: str, traffic: TrafficType) -> dict[str, Any]:
    """The ``Gateway`` ``istioctl waypoint apply`` writes for a waypoint."""
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {WAYPOINT_FOR_LABEL: traffic.value},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": WAYPOINT_HBONE_PORT, "protocol": "HBONE"}],
        },
    }


def _bindings(state: ClusterState, index: WaypointIndex) -> list[tuple[str, Binding]]:
    """(object reference, binding) of every object that asks for a waypoint."""
    found: list[tuple[str, Binding]] = []
    for ns in sorted(state.namespaces.values(), key=lambda n: n.name):
        if has_waypoint_label(ns.labels):
            found.append(
                (f"namespace/{ns.name}", index.resolve(ns.name, ns.labels, "namespace", None))
            )
    for svc in sorted(state.services.values(), key=lambda s: s.key):
        if has_waypoint_label(svc.labels) or index.for_service(svc).waypoint is not None:
            found.append((f"service/{svc.namespace}/{svc.name}", index.for_service(svc)))
    for pod in sorted(state.pods.values(), key=lambda p: p.key):
        if has_waypoint_label(pod.labels) or index.for_pod(pod).waypoint is not None:
            found.append((f"pod/{pod.namespace}/{pod.name}", index.for_pod(pod)))
    return found


def waypoint_rows(state: ClusterState, namespace: str | None = None) -> list[dict[str, Any]]:
    """One row per waypoint (of ``namespace``, or all): address, readiness, what uses it.

    ``bound`` lists what sends traffic through it (namespace, services, pods);
    ``problems`` what asks for it but cannot use it, and why.
    """
    index = WaypointIndex(state)
    bound: dict[tuple[str, str], list[str]] = {}
    problems: dict[tuple[str, str], list[str]] = {}
    for ref, binding in _bindings(state, index):
        if binding.waypoint is not None:
            bound.setdefault(binding.waypoint.key, []).append(ref)
        elif binding.problem and binding.requested is not None:
            problems.setdefault(binding.requested, []).append(f"{ref}: {binding.problem}")
    rows = []
    for key, wp in sorted(index.waypoints.items()):
        if namespace is not None and wp.namespace != namespace:
            continue
        pods = [
            p
            for p in state.pods.values()
            if p.namespace == wp.namespace and p.labels.get(GATEWAY_NAME_LABEL) == wp.name
        ]
        ready = sum(1 for p in pods if p.ready and not p.deleting)
        rows.append(
            {
                "namespace": wp.namespace,
                "name": wp.name,
                "for": wp.traffic_type.value,
                "address": wp.address,
                "ready": f"{ready}/{len(pods)}",
                "bound": bound.get(key, []),
                "problems": problems.get(key, []),
            }
        )
    return rows


# --- where the objects live -------------------------------------------------------------


class Store(Protocol):
    """Where waypoints are written and the cluster read."""

    where: str

    def state(self) -> ClusterState:
        """The cluster as the control plane sees it."""
        ...

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Creates or replaces a Gateway."""
        ...

    def delete(self, namespace: str, name: str) -> bool:
        """Removes a Gateway; False when there was none."""
        ...

    def label_namespace(self, namespace: str, labels: Mapping[str, str | None]) -> None:
        """Sets (or, with None, removes) labels on a Namespace."""
        ...


@dataclass
class _Doc:
    path: Path
    docs: list[Any]
    index: int


def _is(doc: Any, kind: str, namespace: str | None, name: str) -> bool:
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        return False
    if kind == "Gateway" and not str(doc.get("apiVersion", "")).startswith(
        "gateway.networking.k8s.io/"
    ):
        return False
    meta = doc.get("metadata") or {}
    ns = None if kind == "Namespace" else (meta.get("namespace") or "default")
    return bool(meta.get("name") == name and ns == namespace)


class FolderStore:
    """A folder of YAML the control plane reads (``--dir``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = f"folder {folder}"

    def state(self) -> ClusterState:
        from controlplane.sources.folder import FolderSource

        if not self.folder.is_dir():
            raise WaypointCommandError(
                f"{self.folder} is not a folder", hint="pass --dir with the control plane's folder"
            )
        return FolderSource(self.folder).load()

    def _find(self, kind: str, namespace: str | None, name: str) -> _Doc | None:
        if not self.folder.is_dir():
            return None
        for path in config_files(self.folder):
            try:
                docs = list(yaml.safe_load_all(path.read_text()))
            except (OSError, yaml.YAMLError):
                continue
            for i, doc in enumerate(docs):
                if _is(doc, kind, namespace, name):
                    return _Doc(path, docs, i)
        return None

    @staticmethod
    def _write(path: Path, docs: list[Any]) -> None:
        from lab.objects import write_atomic

        kept = [d for d in docs if d is not None]
        if not kept:
            path.unlink(missing_ok=True)
            return
        write_atomic(path, yaml.safe_dump_all(kept, sort_keys=False, default_flow_style=False))

    def apply(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        found = self._find("Gateway", meta["namespace"], meta["name"])
        if found is not None:
            found.docs[found.index] = dict(obj)
            self._write(found.path, found.docs)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(self.folder / f"gateway.{meta['namespace']}.{meta['name']}.yaml", [dict(obj)])

    def delete(self, namespace: str, name: str) -> bool:
        found = self._find("Gateway", namespace, name)
        if found is None:
            return False
        found.docs[found.index] = None
        self._write(found.path, found.docs)
        return True

    def label_namespace(self, namespace: str, labels: Mapping[str, str | None]) -> None:
        found = self._find("Namespace", None, namespace)
        if found is None:
            doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace"}
            doc["metadata"] = {"name": namespace, "labels": {}}
            target = _Doc(self.folder / f"namespace.{namespace}.yaml", [doc], 0)
        else:
            target = found
        meta = target.docs[target.index].setdefault("metadata", {})
        current = (meta.get("labels") or {}) if isinstance(meta, dict) else None
        if not isinstance(current, dict):
            raise WaypointCommandError(
                f"namespace {namespace} in {target.path}: metadata.labels is not a mapping",
                hint="fix that file (labels: {key: value}), then run the command again",
            )
        for key, value in labels.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        meta["labels"] = current
        self._write(target.path, target.docs)


class LabStore:
    """The running lab: its apply starts the waypoint's pod and Service."""

    def __init__(self, name: str | None, run_root: Path) -> None:
        from lab.cli import _resolve_name
        from lab.cluster import Lab

        self.lab = Lab.attach(_resolve_name(name, run_root), run_root)
        self.where = f"lab {self.lab.name}"
        self.notes: list[str] = []

    def state(self) -> ClusterState:
        from controlplane.sources.folder import FolderSource

        return FolderSource(self.lab.config_dir).load()

    @contextlib.contextmanager
    def _manifest(self, obj: Mapping[str, Any]) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(dir=self.lab.run_dir, prefix=".waypoint-") as tmp:
            path = Path(tmp) / "gateway.yaml"
            path.write_text(yaml.safe_dump(dict(obj), sort_keys=False))
            yield path

    def apply(self, obj: Mapping[str, Any]) -> None:
        from lab.manifests.apply import apply_manifests

        with self._manifest(obj) as path:
            result = apply_manifests(self.lab, [path])
        self.notes += result.notes

    def delete(self, namespace: str, name: str) -> bool:
        from lab.manifests.apply import delete_manifests

        if (namespace, name) not in self.state().gateways:
            return False
        with self._manifest(waypoint_gateway(namespace, name, TrafficType.SERVICE)) as path:
            result = delete_manifests(self.lab, [path])
        self.notes += result.notes
        return True

    def label_namespace(self, namespace: str, labels: Mapping[str, str | None]) -> None:
        self.lab.set_namespace_labels(namespace, dict(labels))


class KubeStore:
    """The Kubernetes API (a kubeconfig, or the in-cluster configuration)."""

    def __init__(
        self, kubeconfig: str | None, context: str | None, api_client: Any | None = None
    ) -> None:
        from controlplane.sources.kube import KubernetesSource

        self.source = KubernetesSource(api_client, kubeconfig=kubeconfig, context=context)
        self.where = "the Kubernetes API"

    def state(self) -> ClusterState:
        return self.source.load()

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.source._client())

    def apply(self, obj: Mapping[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = obj["metadata"]
        args = ("gateway.networking.k8s.io", "v1", meta["namespace"], "gateways")
        api = self._custom()
        try:
            api.create_namespaced_custom_object(*args, dict(obj))
        except ApiException as err:
            if err.status != 409:
                raise WaypointCommandError(f"cannot create the Gateway: {err.reason}") from err
            try:
                current = api.get_namespaced_custom_object(*args, meta["name"])
                body = dict(obj)
                body["metadata"] = {
                    **meta,
                    "resourceVersion": current["metadata"]["resourceVersion"],
                }
                api.replace_namespaced_custom_object(*args, meta["name"], body)
            except ApiException as again:
                raise WaypointCommandError(
                    f"cannot replace the Gateway: {again.reason}",
                    hint="it changed meanwhile; run the command again",
                ) from again

    def delete(self, namespace: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self._custom().delete_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", namespace, "gateways", name
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise WaypointCommandError(f"cannot delete the Gateway: {err.reason}") from err
        return True

    def label_namespace(self, namespace: str, labels: Mapping[str, str | None]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.source._client())
        try:
            core.patch_namespace(namespace, {"metadata": {"labels": dict(labels)}})
        except ApiException as err:
            raise WaypointCommandError(
                f"cannot label namespace {namespace}: {err.reason}",
                hint="does the namespace exist, and may you patch it?"
                if err.status in (403, 404)
                else None,
            ) from err


# --- the commands -----------------------------------------------------------------------


def _store(
    folder: Path | None, kubeconfig: str | None, kube: bool, lab: str | None, run_root: Path
) -> Store:
    if folder is not None:
        return FolderStore(folder)
    if kubeconfig is not None or kube:
        return KubeStore(kubeconfig, None)
    return LabStore(lab, run_root)


def _target_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--dir",
                "folder",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="The folder of YAML the control plane reads (standalone mode).",
            ),
            click.option(
                "--kubeconfig",
                default=None,
                envvar="AMBIENT_KUBECONFIG",
                help="Act on the Kubernetes API of this kubeconfig.",
            ),
            click.option(
                "--kube", is_flag=True, help="Act on the Kubernetes API (in-cluster or default)."
            ),
            click.option("--lab", "lab", default=None, help="The lab (when several run)."),
            click.option(
                "--run-root",
                type=click.Path(file_okay=False, path_type=Path),
                default="/run/ambient/lab",
                show_default=True,
                envvar="AMBIENT_LAB_RUN_ROOT",
                help="Folder holding each lab's state.",
            ),
        ]
    ):
        func = option(func)
    return func


def _checked_name(what: str, valid: Callable[[str], bool]) -> Any:
    """A click callback: the value must be a Kubernetes name (it also names files and pods)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        values = value if isinstance(value, tuple) else (value,)
        for one in values:
            if one is not None and not valid(one):
                raise WaypointCommandError(
                    f"{one!r} is not a valid {what}",
                    hint="use lower-case letters, digits and '-' (a Kubernetes name)",
                )
        return value

    return check


_namespace_option = click.option(
    "-n",
    "--namespace",
    required=True,
    callback=_checked_name("namespace name", is_dns1123_label),
    help="Namespace of the waypoint(s).",
)


def _gateway_options(func: Any) -> Any:
    """-n/--namespace, --name, --for: which waypoint, for what traffic."""
    for option in reversed(
        [
            _namespace_option,
            click.option(
                "--name",
                default=DEFAULT_NAME,
                show_default=True,
                callback=_checked_name("waypoint name", is_dns1123_subdomain),
                help="Name of the waypoint.",
            ),
            click.option(
                "--for",
                "traffic",
                type=click.Choice([t.value for t in TrafficType]),
                default="service",
                show_default=True,
                help="The traffic it takes (label istio.io/waypoint-for).",
            ),
        ]
    ):
        func = option(func)
    return func


@click.group(name="waypoint")
def cli() -> None:
    """Waypoints: the L7 proxies of ambient mode (as 'istioctl waypoint')."""


@cli.command()
@_gateway_options
def generate(namespace: str, name: str, traffic: str) -> None:
    """Print the waypoint's Gateway YAML without applying it."""
    click.echo(
        yaml.safe_dump(waypoint_gateway(namespace, name, TrafficType(traffic)), sort_keys=False),
        nl=False,
    )


@cli.command()
@_gateway_options
@click.option(
    "--enroll-namespace",
    is_flag=True,
    help="Also label the namespace istio.io/use-waypoint=<name>.",
)
@_target_options
def apply(
    *,
    namespace: str,
    name: str,
    traffic: str,
    enroll_namespace: bool,
    folder: Path | None,
    kubeconfig: str | None,
    kube: bool,
    lab: str | None,
    run_root: Path,
) -> None:
    """Declare a waypoint (a Gateway of class istio-waypoint) in a namespace."""
    store = _store(folder, kubeconfig, kube, lab, run_root)
    store.apply(waypoint_gateway(namespace, name, TrafficType(traffic)))
    click.echo(f"waypoint {namespace}/{name} applied (for {traffic}) to {store.where}")
    if enroll_namespace:
        store.label_namespace(
            namespace, {USE_WAYPOINT_LABEL: name, USE_WAYPOINT_NAMESPACE_LABEL: None}
        )
        click.echo(f"namespace {namespace} labelled {USE_WAYPOINT_LABEL}={name}")
    for note in getattr(store, "notes", []):
        click.echo(note, err=True)


@cli.command(name="list")
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace (the default).")
@_target_options
@output_option
def list_(
    *,
    namespace: str | None,
    all_namespaces: bool,
    folder: Path | None,
    kubeconfig: str | None,
    kube: bool,
    lab: str | None,
    run_root: Path,
    output: str,
) -> None:
    """List waypoints."""
    state = _store(folder, kubeconfig, kube, lab, run_root).state()
    rows = waypoint_rows(state, None if all_namespaces else namespace)
    if output == "table":
        rows = [{k: r[k] for k in ("namespace", "name", "for", "address", "ready")} for r in rows]
        emit(rows, output, ["namespace", "name", "for", "address", "ready"])
    else:
        emit(rows, output)


@cli.command()
@click.argument("names", nargs=-1, callback=_checked_name("waypoint name", is_dns1123_subdomain))
@_namespace_option
@click.option("--all", "delete_all", is_flag=True, help="Every waypoint of the namespace.")
@_target_options
def delete(
    *,
    names: tuple[str, ...],
    namespace: str,
    delete_all: bool,
    folder: Path | None,
    kubeconfig: str | None,
    kube: bool,
    lab: str | None,
    run_root: Path,
) -> None:
    """Remove waypoints (by name, or --all of a namespace)."""
    store = _store(folder, kubeconfig, kube, lab, run_root)
    if delete_all:
        names = tuple(
            n for (ns, n) in sorted(WaypointIndex(store.state()).waypoints) if ns == namespace
        )
    elif not names:
        names = (DEFAULT_NAME,)
    missing = []
    for name in names:
        if store.delete(namespace, name):
            click.echo(f"waypoint {namespace}/{name} deleted from {store.where}")
        else:
            missing.append(name)
    if missing:
        raise WaypointCommandError(
            f"no waypoint {', '.join(f'{namespace}/{n}' for n in missing)} in {store.where}",
            hint="'ambient waypoint list' shows the waypoints there",
        )


@cli.command()
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option("--name", default=None, help="Only this waypoint.")
@_target_options
@output_option
def status(
    *,
    namespace: str | None,
    name: str | None,
    folder: Path | None,
    kubeconfig: str | None,
    kube: bool,
    lab: str | None,
    run_root: Path,
    output: str,
) -> None:
    """Show each waypoint's address, readiness, what is bound to it, and binding problems."""
    state = _store(folder, kubeconfig, kube, lab, run_root).state()
    rows = [r for r in waypoint_rows(state, namespace) if name is None or r["name"] == name]
    if name is not None and not rows:
        raise WaypointCommandError(
            f"no waypoint named {name!r}" + (f" in namespace {namespace}" if namespace else ""),
            hint="'ambient waypoint list' shows the waypoints there",
        )
    emit(rows, output, COLUMNS)


cli.add_command(run)
