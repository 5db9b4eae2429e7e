"""``ambient controlplane validate``: what the sources would make of some files.

Reads files and folders exactly as the folder source does and returns every problem:
errors for objects that would be rejected, warnings for objects accepted but ignored.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from controlplane.analyze import analyze
from controlplane.model import DEFAULT_ROOT_NAMESPACE, ClusterState, Severity, SourceIssue
from controlplane.sources.documents import config_files, parse_text, read_file
from controlplane.sources.folder import FileResult, decode_file, merge_files


def validate_paths(
    paths: Iterable[Path],
    stdin: TextIO | None = None,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> ClusterState:
    """The state the given files and folders describe, with every problem found.

    A path of ``-`` stands for ``stdin`` (for ``kubectl get -o yaml | ...``). Besides
    each object's own problems, warnings say how the objects fit together.
    """
    results: list[FileResult] = []
    for root in paths:
        if str(root) == "-":
            text = (stdin or sys.stdin).read()
            results.append(decode_file("<stdin>", parse_text(text, "<stdin>"), {}))
            continue
        if not root.exists():
            results.append(FileResult(str(root), issues=(_path_issue(root, "does not exist"),)))
            continue
        try:
            files = list(config_files(root))
        except OSError as err:
            issue = _path_issue(root, f"cannot be listed: {err.strerror or err}")
            results.append(FileResult(str(root), issues=(issue,)))
            continue
        if not files:
            issue = _path_issue(root, "holds no .yaml, .yml or .json files", Severity.WARNING)
            results.append(FileResult(str(root), issues=(issue,)))
        for path in files:
            results.append(decode_file(str(path), read_file(path), {}))
    state = merge_files(results)
    origins = {
        key: (result.file, result.lines.get(key, 0))
        for result in reversed(results)
        for key in result.objects
    }
    extra = analyze(state, origins, root_namespace)
    errors = tuple(i for i in extra if i.severity is Severity.ERROR)
    warnings = tuple(i for i in extra if i.severity is not Severity.ERROR)
    return replace(state, errors=(*state.errors, *errors), warnings=(*state.warnings, *warnings))


def issue_row(issue: SourceIssue) -> dict[str, Any]:
    """One issue as a flat row for JSON/YAML output."""
    return {
        "severity": issue.severity.value,
        "file": issue.file,
        "line": issue.line,
        "kind": issue.kind,
        "namespace": issue.namespace,
        "name": issue.name,
        "field": issue.field,
        "message": issue.message,
    }


def summary(state: ClusterState) -> str:
    """One line: how many objects were read and how many problems found."""
    counts = {
        "namespaces": len(state.namespaces),
        "pods": len(state.pods),
        "services": len(state.services),
        "service accounts": len(state.service_accounts),
        "peer authentications": len(state.peer_authentications),
        "authorization policies": len(state.authorization_policies),
        "virtual services": len(state.virtual_services),
        "destination rules": len(state.destination_rules),
    }
    read = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "no objects"
    return f"{len(state.errors)} error(s), {len(state.warnings)} warning(s); valid: {read}"


def _path_issue(path: Path, what: str, severity: Severity = Severity.ERROR) -> SourceIssue:
    return SourceIssue.about_file(str(path), what, severity=severity)
