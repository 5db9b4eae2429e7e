"""Manifests as a user gives them to ``kubectl apply``, checked and turned into values.

Files and folders (sorted, recursively), multi-document YAML and ``kind: List`` are read
with the control plane's reader, so every document keeps its ``file:line``. Each object
is checked twice: by the control plane's decoder (the API server's and Istio's rules,
:func:`controlplane.sources.decode.decode`) and here, for what the lab itself needs
(a Deployment's selector, images it can stand in for). Every problem of every document
is collected before anything is applied. Pure apart from reading the files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from controlplane.model import EMPTY, FrozenMap, Severity, SourceIssue, deep_freeze
from controlplane.sources.decode import decode
from controlplane.sources.documents import Document, config_files, parse_text, read_file
from controlplane.sources.fields import Fields, Problem
from lab.manifests import images
from lab.manifests.errors import ManifestError
from lab.manifests.model import (
    POD_TEMPLATE_HASH,
    ConfigManifest,
    Manifest,
    NamespaceManifest,
    Origin,
    PodTemplate,
    PortManifest,
    ServiceAccountManifest,
    ServiceManifest,
    WorkloadManifest,
)

AMBIENT_LABEL = "istio.io/dataplane-mode=ambient"
INJECTION_LABEL = "istio-injection"
"""Sidecar mode's enrollment label (``enabled``), which this mesh does not use."""

CORE_KINDS = ("Namespace", "ServiceAccount", "Pod", "Service")
CONFIG_KINDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("security.istio.io", "PeerAuthentication"): ("v1", "v1beta1"),
    ("security.istio.io", "AuthorizationPolicy"): ("v1", "v1beta1"),
    ("networking.istio.io", "VirtualService"): ("v1", "v1beta1", "v1alpha3"),
    ("networking.istio.io", "DestinationRule"): ("v1", "v1beta1", "v1alpha3"),
    ("networking.istio.io", "Gateway"): ("v1", "v1beta1", "v1alpha3"),
    ("gateway.networking.k8s.io", "Gateway"): ("v1", "v1beta1"),
    ("gateway.networking.k8s.io", "HTTPRoute"): ("v1", "v1beta1"),
    ("", "Secret"): ("v1",),  # gateway certificates (credentialName), as Istio's tasks apply
}
"""Kinds written to the config folder unchanged: (group, kind) -> versions accepted."""

APPLIED_KINDS = "Namespace, ServiceAccount, Pod, Deployment (apps/v1), Service, " + ", ".join(
    f"{kind} ({group or 'v1'})" for group, kind in CONFIG_KINDS
)

_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""Kubernetes' ``rand.SafeEncodeString`` alphabet (no vowels, no look-alikes)."""


@dataclass(frozen=True)
class Parsed:
    """What a set of files asks for, and what is wrong or noteworthy in it."""

    manifests: tuple[Manifest, ...]
    errors: tuple[SourceIssue, ...] = ()
    warnings: tuple[SourceIssue, ...] = ()

    def check(self) -> Parsed:
        """Itself when nothing is wrong; raises :class:`ManifestError` listing every error."""
        if self.errors:
            raise ManifestError(self.errors)
        return self


def load(paths: Sequence[Path], *, namespace: str | None = None) -> Parsed:
    """Reads files and folders (sorted, recursively) and parses every document in them.

    ``-`` reads standard input. ``namespace`` is ``kubectl apply -n``: objects without
    one get it, objects naming another are an error. Never raises for bad content; see
    :meth:`Parsed.check`.
    """
    docs: list[Document] = []
    faults: list[SourceIssue] = []
    for path in paths:
        if str(path) == "-":
            content = parse_text(sys.stdin.read(), "<stdin>")
            docs += content.documents
            faults += [content.fault] if content.fault is not None else []
            continue
        if not path.exists():
            faults.append(SourceIssue.about_file(str(path), "no such file or folder"))
            continue
        files = list(config_files(path))
        if not files and path.is_dir():
            faults.append(SourceIssue.about_file(str(path), "no .yaml, .yml or .json file in it"))
        for file in files:
            content = read_file(file)
            docs += content.documents
            if content.fault is not None:
                faults.append(content.fault)
    parsed = parse_documents(docs, namespace=namespace)
    return replace(parsed, errors=(*faults, *parsed.errors))


def parse_documents(docs: Iterable[Document], *, namespace: str | None = None) -> Parsed:
    """Turns documents into manifests; duplicates and every bad field are errors."""
    manifests: list[Manifest] = []
    issues: list[SourceIssue] = []
    seen: dict[tuple[str, str, str], Origin] = {}
    for doc in docs:
        origin = Origin(doc.file, doc.line)
        manifest, found = parse_document(doc.data, origin, namespace=namespace)
        issues += found
        if manifest is None:
            continue
        key = (_kind_key(manifest), manifest.namespace, manifest.name)
        if key in seen:
            issues.append(
                _issue(origin, manifest.kind, manifest.namespace, manifest.name)(
                    Problem("metadata.name", f"defined twice (first at {seen[key]})")
                )
            )
            continue
        seen[key] = origin
        manifests.append(manifest)
    return Parsed(
        manifests=tuple(manifests),
        errors=tuple(i for i in issues if i.severity is Severity.ERROR),
        warnings=tuple(i for i in issues if i.severity is Severity.WARNING),
    )


def parse_document(
    raw: Any, origin: Origin, *, namespace: str | None = None
) -> tuple[Manifest | None, list[SourceIssue]]:
    """One document to a manifest (None when rejected) and its issues."""
    if not isinstance(raw, Mapping):
        return None, [
            SourceIssue(
                origin.file, origin.line, "", "", "", "", "not a Kubernetes object (not a mapping)"
            )
        ]
    kind = _text(raw, "kind")
    api_version = _text(raw, "apiVersion")
    meta: Mapping[str, Any] = raw.get("metadata") or {}
    if not isinstance(meta, Mapping):
        meta = {}
    name = _text(meta, "name")
    namespaced = kind != "Namespace"
    written_ns = _text(meta, "namespace")
    ns = (written_ns or namespace or "default") if namespaced else ""
    problems: list[Problem] = []
    report = _issue(origin, kind, ns, name)
    if namespace and written_ns and written_ns != namespace and namespaced:
        problems.append(
            Problem(
                "metadata.namespace",
                f"is {written_ns!r}, but the command says -n {namespace!r}; drop one of the two",
            )
        )
    group, _, version = api_version.rpartition("/")
    if namespaced and not written_ns:
        raw = {**raw, "metadata": {**meta, "namespace": ns}}
    manifest: Manifest | None = None
    if not kind or not api_version:
        problems += _decoded_problems(raw, "")
    elif (group, kind) == ("apps", "Deployment"):
        if version != "v1":
            problems.append(Problem("apiVersion", f"{api_version} is not apps/v1"))
        manifest = _deployment(raw, origin, ns, name, problems)
    elif group == "" and kind in CORE_KINDS:
        problems += _decoded_problems(raw, kind)
        manifest = _core(raw, origin, kind=kind, ns=ns, name=name, problems=problems)
    elif (group, kind) in CONFIG_KINDS:
        versions = CONFIG_KINDS[(group, kind)]
        if version not in versions:
            problems.append(
                Problem(
                    "apiVersion",
                    f"{api_version} is not a version of {kind} "
                    f"(use {' or '.join(f'{group}/{v}' for v in versions)})",
                )
            )
        problems += _decoded_problems(raw, kind)
        manifest = ConfigManifest(api_version, kind, ns, name, origin, deep_freeze(raw))
    else:
        problems.append(
            Problem(
                "kind",
                f"{api_version} {kind} is not a kind the lab applies; it applies {APPLIED_KINDS}",
            )
        )
    issues = [report(p) for p in problems]
    if any(i.severity is Severity.ERROR for i in issues):
        return None, issues
    return manifest, issues


def template_hash(template: Any) -> str:
    """A ``pod-template-hash`` as Kubernetes makes it: FNV-32a, digits safe-encoded."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str).encode()
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHABET[int(c) % len(_SAFE_ALPHABET)] for c in str(value))


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _kind_key(manifest: Manifest) -> str:
    if isinstance(manifest, ConfigManifest):
        return f"{manifest.kind}.{manifest.group}"
    return manifest.kind


def _issue(origin: Origin, kind: str, ns: str, name: str) -> Callable[[Problem], SourceIssue]:
    def make(problem: Problem) -> SourceIssue:
        return SourceIssue(
            origin.file,
            origin.line,
            kind,
            ns,
            name,
            problem.field,
            problem.message,
            problem.severity,
        )

    return make


def _decoded_problems(raw: Mapping[str, Any], kind: str) -> list[Problem]:
    """The control plane decoder's verdict, less what the lab says better itself."""
    result = decode(raw)
    out: list[Problem] = []
    for issue in result.issues("", 0):
        if issue.field == f"metadata.labels.{INJECTION_LABEL}" and kind == "Namespace":
            continue
        out.append(Problem(issue.field, issue.message, issue.severity))
    return out


def _core(
    raw: Mapping[str, Any],
    origin: Origin,
    *,
    kind: str,
    ns: str,
    name: str,
    problems: list[Problem],
) -> Manifest | None:
    top = Fields(raw, "", problems)
    meta = top.mapping("metadata")
    labels = (meta.str_map("labels") if meta else None) or EMPTY
    if kind == "Namespace":
        if labels.get(INJECTION_LABEL) == "enabled":
            top.warn(
                f"metadata.labels.{INJECTION_LABEL}",
                "is sidecar mode, which this mesh does not run; ambient enrollment is the "
                f"label {AMBIENT_LABEL} (the namespace is created, but not in the mesh)",
            )
        return NamespaceManifest(name, labels, origin)
    if kind == "ServiceAccount":
        return ServiceAccountManifest(ns, name, origin)
    if kind == "Pod":
        spec = top.mapping("spec", required=True)
        if spec is None:
            return None
        return WorkloadManifest("Pod", ns, name, origin, _template(spec, labels))
    return _service(top, origin, ns, name, labels)


def _service(
    top: Fields, origin: Origin, ns: str, name: str, labels: FrozenMap[str, str]
) -> ServiceManifest | None:
    spec = top.mapping("spec", required=True)
    if spec is None:
        return None
    kind = spec.string("type", default="ClusterIP")
    if kind in ("NodePort", "LoadBalancer"):
        spec.warn("type", f"{kind} has no meaning in the lab; the Service gets a ClusterIP only")
    elif kind == "ExternalName":
        spec.error("type", "ExternalName Services have no VIP; the lab cannot make one")
    vip = spec.string("clusterIP")
    if vip == "None":
        spec.error("clusterIP", "headless Services are not supported by the lab; leave it out")
    elif vip and not vip.startswith("10.96."):
        spec.error("clusterIP", f"{vip} is outside the lab's Service range 10.96.0.0/16")
    selector = spec.str_map("selector")
    if not selector:
        spec.error("selector", "the lab needs a selector to find the Service's pods")
    ports: list[PortManifest] = []
    for entry in spec.mappings("ports", nonempty=True):
        port = entry.port("port", required=True)
        raw_target = entry.data.get("targetPort", port)
        target: int | str | None = raw_target
        if isinstance(raw_target, str) and raw_target.isdigit():
            target = int(raw_target)
        if port is not None and isinstance(target, int | str):
            ports.append(
                PortManifest(
                    port, target, entry.string("name"), entry.string("protocol", default="TCP")
                )
            )
    if not spec.data.get("ports"):
        spec.error("ports", "required: a Service needs at least one port")
    return ServiceManifest(ns, name, origin, selector or EMPTY, tuple(ports), labels, vip)


def _deployment(
    raw: Mapping[str, Any], origin: Origin, ns: str, name: str, problems: list[Problem]
) -> WorkloadManifest | None:
    top = Fields(raw, "", problems)
    meta = top.mapping("metadata", required=True)
    if meta is not None:
        meta.string("name", required=True)
    spec = top.mapping("spec", required=True)
    if spec is None:
        return None
    replicas: int = 1
    written = spec.data.get("replicas", 1)
    if isinstance(written, int) and not isinstance(written, bool) and written >= 0:
        replicas = written
    else:
        spec.error("replicas", f"must be a whole number >= 0, not {written!r}")
    selector = spec.mapping("selector", required=True)
    match: FrozenMap[str, str] = EMPTY
    if selector is not None:
        if selector.has("matchExpressions"):
            selector.error("matchExpressions", "not supported by the lab; use matchLabels")
        match = selector.str_map("matchLabels") or EMPTY
        if not match and not selector.has("matchExpressions"):
            selector.error("matchLabels", "required: a Deployment selects its pods by labels")
    template = spec.mapping("template", required=True)
    if template is None:
        return None
    tmeta = template.mapping("metadata")
    labels = (tmeta.str_map("labels") if tmeta else None) or EMPTY
    if any(labels.get(k) != v for k, v in match.items()):
        template.error(
            "metadata.labels",
            f"do not match spec.selector.matchLabels {dict(match)} "
            "(the Deployment would not own its pods)",
        )
    if POD_TEMPLATE_HASH in labels:
        template.error(f"metadata.labels.{POD_TEMPLATE_HASH}", "is set by the ReplicaSet")
    pod_meta = dict(tmeta.data) if tmeta else {}
    as_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**pod_meta, "name": name, "namespace": ns},
        "spec": template.data.get("spec"),
    }
    for p in _decoded_problems(as_pod, "Pod"):
        problems.append(Problem("spec.template." + p.field, p.message, p.severity))
    tspec = template.mapping("spec", required=True)
    if tspec is None:
        return None
    return WorkloadManifest(
        "Deployment",
        ns,
        name,
        origin,
        _template(tspec, labels),
        replicas=replicas,
        template_hash=template_hash(template.data),
    )


def _template(spec: Fields, labels: FrozenMap[str, str]) -> PodTemplate:
    """A pod spec (of a Pod, or a Deployment's template) to what the lab runs for it."""
    if spec.boolean("hostNetwork"):
        spec.error("hostNetwork", "host-network pods are not supported by the lab")
    if spec.has("initContainers"):
        spec.warn("initContainers", "init containers are not run by the lab")
    account = spec.string("serviceAccountName") or spec.string("serviceAccount") or "default"
    programs: list[images.Program] = []
    port_names: dict[str, int] = {}
    notes: list[str] = []
    for container in spec.mappings("containers", nonempty=True):
        for port in container.mappings("ports"):
            number = port.data.get("containerPort")
            port_name = port.data.get("name")
            if isinstance(port_name, str) and isinstance(number, int):
                port_names[port_name] = number
        env = {
            str(e.data.get("name")): str(e.data.get("value"))
            for e in container.mappings("env")
            if e.has("value")
        }
        image = container.string("image", required=True)
        if not image:
            continue
        choice = images.stand_in(
            image, container.str_list("command"), container.str_list("args"), env
        )
        if isinstance(choice, images.Refused):
            container.error(choice.field, choice.message)
        elif isinstance(choice, images.Program):
            programs.append(choice)
        elif choice.note:
            container.warn("command", choice.note)
            notes.append(choice.note)
    if not spec.data.get("containers"):
        spec.error("containers", "required: a pod needs at least one container")
    listening = [program.port for program in programs]
    for number in sorted({n for n in listening if listening.count(n) > 1}):
        spec.error("containers", f"two containers listen on port {number}")
    return PodTemplate(
        labels=labels,
        service_account=account,
        node=spec.string("nodeName"),
        programs=tuple(programs),
        port_names=FrozenMap(port_names),
        notes=tuple(notes),
    )
