"""Offline checks of ``deploy/``: one source of truth (the Helm chart), checked as far as
this machine allows without a cluster.

- The chart is rendered by Helm's own engine (Helm's Go SDK as a shared library, from
  PyPI's ``helm-python-sdk``), not by a look-alike: the plain manifests in
  ``deploy/manifests/`` are its output for ``deploy/manifests/values.yaml``.
- Every rendered object is validated against the OpenAPI schemas of the newest three
  Kubernetes minor versions ``kubernetes-validate`` ships, strictly (unknown fields fail).
- ``checkov`` scans the rendered objects; every finding must be skipped by an annotation
  on the object that says why (``checkov.io/skipN: CKV_...=reason``).
- ``helm lint --strict`` (Helm's engine again), ``yamllint`` over everything YAML that is
  not a Go template, ``hadolint`` over the Dockerfile.
- The commands and flags the manifests run must exist in our CLI.
- The chart's requests and limits cover the measured footprint (``deploy/footprint.py``).

Usage (``make deploy-check`` runs ``check``)::

    .venv/bin/python -m deploy.checks render   # rewrite deploy/manifests/ambient-node.yaml
    .venv/bin/python -m deploy.checks check    # every check above; exit 1 on a problem
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
CHART = DEPLOY / "charts" / "ambient-node"
MANIFESTS = DEPLOY / "manifests"
MANIFEST_VALUES = MANIFESTS / "values.yaml"
MANIFEST = MANIFESTS / "ambient-node.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
RELEASE = "ambient"
NAMESPACE = "istio-system"

CHECKOV_REQUIREMENTS = DEPLOY / "checkov-requirements.txt"
CHECKOV_INSTALL_TIMEOUT_S = 600.0
TOOL_TIMEOUT_S = 300.0

HEADER = (
    "# Generated from deploy/charts/ambient-node with deploy/manifests/values.yaml by\n"
    "# '.venv/bin/python -m deploy.checks render' (Helm's engine). Do not edit by hand:\n"
    "# edit the chart and render again; tests/unit/test_deploy_manifests.py checks this.\n"
)


class DeployCheckError(Exception):
    """A tool this check needs is missing or failed to run (not a finding)."""


# --- rendering ------------------------------------------------------------------------


def render_chart(
    values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text, by Helm's engine, as ``helm template`` would."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    rendered: dict[str, str] = chart.render(
        dict(values or {}), name=RELEASE, namespace=namespace, is_install=True
    )
    return rendered


def manifest_text(values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE) -> str:
    """The objects of a render as one multi-document YAML file (NOTES.txt left out)."""
    docs: list[str] = []
    for path, text in sorted(render_chart(values, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in text.split("\n---\n"):
            body = doc.strip("\n")
            if yaml.safe_load(body) is None:
                continue
            docs.append(f"# Source: {path}\n{body}\n")
    return HEADER + "---\n" + "---\n".join(docs)


def manifest_values() -> dict[str, Any]:
    """The values the plain manifests are rendered with."""
    loaded = yaml.safe_load(MANIFEST_VALUES.read_text())
    return dict(loaded or {})


def objects_of(text: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a multi-document YAML text."""
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def notes(values: Mapping[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    return next(t for p, t in render_chart(values).items() if p.endswith("NOTES.txt"))


def helm_lint_problems(values: Mapping[str, Any] | None = None) -> list[str]:
    """``helm lint --strict``: warnings and errors (severity 2+), one line each."""
    import helm_python

    report = helm_python.lint(str(CHART), dict(values or {}), strict=True, namespace=NAMESPACE)
    return [
        f"helm lint {m['path']}: {' '.join(str(m['error']).split())}"
        for m in report.get("messages", [])
        if int(m.get("severity", 0)) >= 2
    ]


# --- schema validation ------------------------------------------------------------------


def kubernetes_versions(count: int = 3) -> list[str]:
    """The newest ``count`` Kubernetes minor versions kubernetes-validate has schemas for."""
    from kubernetes_validate import utils  # type: ignore[import-untyped]

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split("."))

    versions = sorted(set(utils.all_versions()), key=key)
    newest_per_minor: dict[tuple[int, ...], str] = {}
    for version in versions:
        newest_per_minor[key(version)[:2]] = version
    return [newest_per_minor[m] for m in sorted(newest_per_minor)][-count:]


def schema_problems(objects: Iterable[Mapping[str, Any]], versions: Iterable[str]) -> list[str]:
    """Every object against every version's schema, strictly; one line per problem."""
    import kubernetes_validate  # type: ignore[import-untyped]

    problems: list[str] = []
    for version in versions:
        for obj in objects:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as err:
                problems.append(f"Kubernetes {version}: {name}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError as err:
                problems.append(f"Kubernetes {version}: {name}: no schema ({err})")
    return problems


# --- the commands the manifests run ------------------------------------------------------


@dataclass(frozen=True)
class ContainerCommand:
    """The argv one container of a rendered object runs."""

    obj: str
    container: str
    argv: tuple[str, ...]


def container_commands(objects: Iterable[Mapping[str, Any]]) -> Iterator[ContainerCommand]:
    """command + args of every container of every workload object."""
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            argv = tuple(
                str(a) for a in (*container.get("command", []), *container.get("args", []))
            )
            yield ContainerCommand(
                f"{obj['kind']}/{obj['metadata']['name']}", container["name"], argv
            )


def flag_problems(command: ContainerCommand) -> list[str]:
    """Subcommands and ``--flags`` of ``command`` that our click CLI does not have."""
    from ambient.cli import root

    where = f"{command.obj} container {command.container}"
    argv = list(command.argv)
    if not argv or argv[0] != "ambient":
        return [f"{where}: runs {argv[:1]}, not the ambient CLI"]
    cmd: click.Command = root
    ctx = click.Context(root)
    rest = argv[1:]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return [f"{where}: no command {rest[0]!r} under {cmd.name!r}"]
        cmd, rest = sub, rest[1:]
    if isinstance(cmd, click.Group):
        return [f"{where}: {' '.join(argv)} names a group, not a command"]
    known = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
    return [
        f"{where}: {cmd.name} has no option {arg.split('=')[0]}"
        for arg in rest
        if arg.startswith("--") and arg.split("=")[0] not in known
    ]


# --- external linters --------------------------------------------------------------------


def _run(argv: list[str], timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as err:
        raise DeployCheckError(f"{argv[0]} is not installed ({err}); run 'make setup'") from err
    except subprocess.TimeoutExpired as err:
        raise DeployCheckError(f"{argv[0]} did not finish in {timeout:.0f} s") from err


def _venv_bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def yamllint_problems(paths: Iterable[Path]) -> list[str]:
    """yamllint (config deploy/.yamllint) over the given files; one line per problem."""
    done = _run(
        [_venv_bin("yamllint"), "-f", "parsable", "-c", str(DEPLOY / ".yamllint"), *map(str, paths)]
    )
    return [line for line in done.stdout.splitlines() if line.strip()]


def yaml_files() -> list[Path]:
    """Our YAML files (chart templates are Go templates; deploy/examples/ is the lab's)."""
    return sorted(
        p
        for p in [*CHART.glob("*.yaml"), *MANIFESTS.glob("*.yaml"), DEPLOY / ".yamllint"]
        if p.is_file()
    )


def hadolint_problems(dockerfile: Path = DOCKERFILE) -> list[str]:
    """hadolint over the Dockerfile; one line per finding."""
    done = _run([_venv_bin("hadolint"), "--no-color", str(dockerfile)])
    return [line for line in done.stdout.splitlines() if line.strip()]


def checkov_venv() -> Path:
    """Where checkov's environment lives: a per-user cache keyed by its requirements.

    Outside the work tree on purpose, so fresh clones on one machine (CI's) share it.
    """
    digest = hashlib.sha256(CHECKOV_REQUIREMENTS.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ambient-node" / f"checkov-{digest}"


def ensure_checkov() -> Path:
    """checkov from its own virtual environment (its pins clash with our pytest's).

    Installed once per machine from ``deploy/checkov-requirements.txt`` (every version
    pinned); takes about two minutes the first time.
    """
    env = checkov_venv()
    binary, complete = env / "bin" / "checkov", env / ".complete"
    if binary.exists() and complete.exists():
        return binary
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    done = _run(
        [str(env / "bin" / "pip"), "install", "-q", "-r", str(CHECKOV_REQUIREMENTS)],
        timeout=CHECKOV_INSTALL_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise DeployCheckError(f"installing checkov failed: {done.stderr.strip()[-2000:]}")
    complete.touch()
    return binary


@dataclass(frozen=True)
class CheckovReport:
    """What checkov said about one manifest file."""

    failed: tuple[str, ...]
    """``CKV_ID name: kind/name`` per finding nobody justified."""
    skipped: tuple[tuple[str, str, str], ...]
    """(check id, object, justification) per finding skipped by an annotation."""
    passed: int


def checkov_reports(manifests: Iterable[Path]) -> dict[Path, CheckovReport]:
    """Runs checkov's Kubernetes checks over each manifest, in one run (it starts slowly)."""
    paths = [p.resolve() for p in manifests]
    binary = ensure_checkov()
    argv = [str(binary), "--framework", "kubernetes", "--compact", "--skip-download", "-o", "json"]
    for path in paths:
        argv += ["-f", str(path)]
    done = _run(argv)
    try:
        report = json.loads(done.stdout)
    except ValueError as err:
        raise DeployCheckError(f"checkov printed no report: {done.stderr.strip()[-2000:]}") from err
    results = report.get("results", {}) if isinstance(report, dict) else {}

    def of(kind: str, path: Path) -> list[dict[str, Any]]:
        return [c for c in results.get(kind, []) if Path(c.get("file_abs_path", "")) == path]

    return {
        path: CheckovReport(
            failed=tuple(
                f"{c['check_id']} {c['check_name']}: {c['resource']}"
                for c in of("failed_checks", path)
            ),
            skipped=tuple(
                (
                    c["check_id"],
                    c["resource"],
                    c.get("check_result", {}).get("suppress_comment") or "",
                )
                for c in of("skipped_checks", path)
            ),
            passed=len(of("passed_checks", path)),
        )
        for path in paths
    }


# --- the whole check --------------------------------------------------------------------


NON_DEFAULT_VALUES: dict[str, Any] = {
    "trustDomain": "example.org",
    "clusterName": "east-1",
    "logLevel": "debug",
    "image": {"repository": "registry.example/mesh/ambient-node", "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"kubernetes.io/os": "linux", "mesh": "on"},
    "capture": {
        "excludeCIDRs": ["10.0.0.0/16", "169.254.169.254/32"],
        "excludePorts": [22, 9100],
        "excludeInboundPorts": [9100],
    },
    "excludedNamespaces": ["kube-system", "infra"],
    "node": {"terminationGracePeriodSeconds": 60, "ztunnel": {"workers": 3}},
    "controlPlane": {
        "replicas": 2,
        "ca": {"existingSecret": "corp-intermediate-ca"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    },
}
"""A render with every value changed, to prove the templates handle each one."""


def problems_of_render(text: str, versions: list[str]) -> list[str]:
    """Schema and CLI problems of one rendered manifest text."""
    objects = objects_of(text)
    problems = schema_problems(objects, versions)
    for command in container_commands(objects):
        problems += flag_problems(command)
    return problems


def run_all() -> list[str]:
    """Every check; the problems found (empty: all good)."""
    problems: list[str] = []
    committed = MANIFEST.read_text()
    if manifest_text(manifest_values()) != committed:
        problems.append(
            f"{MANIFEST} is not the chart's render: run 'python -m deploy.checks render'"
        )
    from deploy.footprint import chart_defaults, footprint_problems, load_record

    problems += footprint_problems(chart_defaults(), load_record())
    versions = kubernetes_versions()
    problems += helm_lint_problems() + helm_lint_problems(NON_DEFAULT_VALUES)
    problems += problems_of_render(committed, versions)
    with tempfile.TemporaryDirectory(prefix="ambient-deploy-") as tmp:
        renders = {"default": manifest_text(), "non-default": manifest_text(NON_DEFAULT_VALUES)}
        for label, text in renders.items():
            problems += [f"{label} values: {p}" for p in problems_of_render(text, versions)]
            path = Path(tmp) / f"{label}.yaml"
            path.write_text(text)
        reports = checkov_reports([MANIFEST, Path(tmp) / "non-default.yaml"])
        for path, report in reports.items():
            problems += [f"checkov {path.name}: {f}" for f in report.failed]
            problems += [
                f"checkov {path.name}: {cid} on {obj} skipped without a reason"
                for cid, obj, why in report.skipped
                if not why.strip()
            ]
        problems += yamllint_problems([*yaml_files(), Path(tmp) / "default.yaml"])
    problems += hadolint_problems()
    return problems


@click.group()
def cli() -> None:
    """Offline checks of deploy/ (chart, manifests, Dockerfile)."""


@cli.command()
def render() -> None:
    """Rewrite deploy/manifests/ambient-node.yaml from the chart."""
    MANIFEST.write_text(manifest_text(manifest_values()))
    click.echo(f"wrote {MANIFEST.relative_to(REPO)}")


@cli.command()
def check() -> None:
    """Every offline check; exit 1 naming each problem."""
    problems = run_all()
    for problem in problems:
        click.echo(problem)
    click.echo(f"deploy check: {len(problems)} problems")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
