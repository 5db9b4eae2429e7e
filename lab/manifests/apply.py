"""``ambient lab apply -f`` / ``delete -f``: manifests in, lab changes out.

The shell around the pure parts: it reads the files (:mod:`lab.manifests.parse`), takes
a view of the lab, plans (:mod:`lab.manifests.planner`) and only then runs the plan's
actions through the :class:`~lab.cluster.Lab` API. Every document is checked and every
object placed and resolved before the first action, so a bad manifest changes nothing.
What each apply made is recorded in ``<run_dir>/manifests.json``, so re-applying is
idempotent and ``delete -f`` finds a Deployment's pods.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.model import FrozenMap, SourceIssue
from lab import objects
from lab.cluster import Lab
from lab.errors import LabBusyError, LabError
from lab.manifests import gateways, parse, planner, proxies
from lab.manifests.model import (
    POD_TEMPLATE_HASH,
    ConfigManifest,
    Manifest,
    ServiceAccountManifest,
)
from lab.manifests.planner import (
    Action,
    AddNamespace,
    AddPod,
    AddService,
    LabView,
    Outcome,
    Plan,
    PodView,
    RemoveFile,
    RemoveNamespace,
    RemovePod,
    ServiceView,
    SetNamespaceLabels,
    SetPodLabels,
    SetServiceLabels,
    WriteFile,
)
from lab.model import Pod
from lab.objects import object_filename, write_atomic

RECORD_FILE = "manifests.json"
"""What earlier applies made, in the lab's run folder (removed with the lab)."""
LOCK_FILE = ".manifests.lock"
LOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class ApplyResult:
    """What an apply or delete did: an outcome per object, warnings, actions run."""

    outcomes: tuple[Outcome, ...]
    warnings: tuple[SourceIssue, ...]
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()
    """What a user wants to know after the change (a gateway's address, an idle proxy)."""

    def rows(self) -> list[dict[str, Any]]:
        """One row per object, for ``emit``."""
        return [{"object": o.ref, "result": o.result, "detail": o.detail} for o in self.outcomes]


def apply_manifests(
    lab: Lab, paths: Sequence[Path], *, namespace: str | None = None, dry_run: bool = False
) -> ApplyResult:
    """Makes the lab hold what the files describe; raises before changing anything if
    a document is bad (:class:`~lab.manifests.errors.ManifestError`)."""
    parsed = parse.load(paths, namespace=namespace).check()
    with _locked(lab) if not dry_run else contextlib.nullcontext():
        record = _load_record(lab)
        plan = planner.plan_apply(parsed.manifests, _view(lab, parsed.manifests, record), record)
        return _execute(lab, plan, parsed.warnings, dry_run)


def delete_manifests(
    lab: Lab, paths: Sequence[Path], *, namespace: str | None = None, dry_run: bool = False
) -> ApplyResult:
    """Removes what the files name (a Namespace with everything in it)."""
    parsed = parse.load(paths, namespace=namespace).check()
    with _locked(lab) if not dry_run else contextlib.nullcontext():
        record = _load_record(lab)
        plan = planner.plan_delete(parsed.manifests, _view(lab, parsed.manifests, record), record)
        return _execute(lab, plan, parsed.warnings, dry_run)


def workload_pods(lab: Lab, namespace: str, name: str) -> list[Pod]:
    """The pods of Deployment (or Pod) ``name`` in ``namespace``, by name order.

    For callers that know the Deployment, not the generated pod names (the demo, tests).
    """
    found = []
    for pod in lab.pods:
        view = PodView(pod.namespace, pod.name, pod.node, FrozenMap(pod.labels))
        if pod.namespace == namespace and (pod.name == name or planner.is_replica_of(view, name)):
            found.append(pod)
    return sorted(found, key=lambda p: p.name)


def _execute(lab: Lab, plan: Plan, warnings: tuple[SourceIssue, ...], dry_run: bool) -> ApplyResult:
    notes: list[str] = []
    if not dry_run:
        try:
            for action in plan.actions:
                run_action(lab, action)
        finally:
            # Saved also after a failed action: the next plan compares with the lab itself,
            # so what was not made is made then.
            write_atomic(lab.run_dir / RECORD_FILE, planner.record_to_json(plan.record))
        if any(isinstance(a, AddPod | RemovePod | RemoveNamespace) for a in plan.actions):
            notes += proxies.publish_gateways(lab)
        # Also restarts a proxy that died since (re-applying is how a user asks for it).
        new_proxy = any(isinstance(a, AddPod) and _is_proxy(a) for a in plan.actions)
        notes += proxies.start_proxies(lab, quiet_if_idle=not new_proxy)
    return ApplyResult(plan.outcomes, warnings, plan.actions, tuple(notes))


def _is_proxy(action: AddPod) -> bool:
    return any(p.program == gateways.PROXY_PROGRAM for p in action.programs)


def run_action(lab: Lab, action: Action) -> None:
    """Runs one planned action through the lab's API."""
    if isinstance(action, AddNamespace):
        lab.add_namespace(action.name, action.labels)
    elif isinstance(action, SetNamespaceLabels):
        lab.set_namespace_labels(action.name, action.changes)
    elif isinstance(action, RemoveNamespace):
        lab.remove_namespace(action.name)
    elif isinstance(action, WriteFile):
        write_atomic(lab.config_dir / action.filename, action.text)
    elif isinstance(action, RemoveFile):
        (lab.config_dir / action.filename).unlink(missing_ok=True)
    elif isinstance(action, AddPod):
        _add_pod(lab, action)
    elif isinstance(action, RemovePod):
        lab.remove_pod(f"{action.namespace}/{action.name}")
    elif isinstance(action, SetPodLabels):
        lab.set_pod_labels(f"{action.namespace}/{action.name}", action.changes)
    elif isinstance(action, AddService):
        lab.add_service(
            action.name,
            namespace=action.namespace,
            selector=action.selector,
            ports=action.ports,
            vip=action.vip or None,
            labels=action.labels,
        )
    elif isinstance(action, SetServiceLabels):
        lab.set_service_labels(f"{action.namespace}/{action.name}", action.changes)
    else:
        lab.remove_service(f"{action.namespace}/{action.name}")


def _add_pod(lab: Lab, action: AddPod) -> None:
    pod = lab.add_pod(
        action.name,
        namespace=action.namespace,
        node=action.node,
        labels=action.labels,
        service_account=action.service_account,
    )
    if action.owner:
        _write_owned(lab, pod, action.owner)
    for program in action.programs:
        if program.program == gateways.PROXY_PROGRAM:
            continue  # started once every pod and Service exists (proxies.start_proxies)
        lab.start_workload(
            pod,
            program.program,
            list(program.args),
            name=f"{pod.name}.{pod.namespace}-{program.program}-{program.port}",
            wait_port=program.port,
            env={"AMBIENT_TRACE_SERVICE": f"{_workload_name(action)}.{pod.namespace}"},
        )


def _workload_name(action: AddPod) -> str:
    """The pod's workload as the control plane names it: its Deployment, else itself."""
    suffix = "-" + action.labels.get(POD_TEMPLATE_HASH, "")
    if action.owner and suffix != "-" and action.owner.endswith(suffix):
        return action.owner[: -len(suffix)]
    return action.owner or action.name


def _write_owned(lab: Lab, pod: Pod, replica_set: str) -> None:
    """Rewrites a Deployment's pod object with its ReplicaSet as controlling owner.

    The control plane names a workload after its owner (``backend-v1``, not the pod),
    as istiod does; the lab's own pod object has no owner, so it is added here.
    """
    obj = objects.pod_object(pod, lab.node(pod.node))
    uid = uuid.uuid5(uuid.NAMESPACE_URL, f"lab:{lab.name}/{pod.namespace}/{replica_set}")
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": replica_set,
            "uid": str(uid),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    objects.write_object(lab.config_dir, obj)


def _view(lab: Lab, manifests: Sequence[Manifest], record: planner.Record) -> LabView:
    """What the plan needs to know of the lab, files included."""
    names: set[str] = {f for applied in record.values() for f in applied.files}
    for m in manifests:
        if isinstance(m, ConfigManifest):
            names.add(m.filename)
        elif isinstance(m, ServiceAccountManifest):
            names.add(object_filename("ServiceAccount", m.name, m.namespace))
    files: dict[str, str] = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            files[name] = (lab.config_dir / name).read_text()
    return LabView(
        nodes=tuple(n.name for n in lab.nodes),
        namespaces=lab.namespaces,
        pods={p.key: PodView(p.namespace, p.name, p.node, FrozenMap(p.labels)) for p in lab.pods},
        services={
            s.key: ServiceView(
                s.namespace, s.name, s.vip, FrozenMap(s.selector), s.ports, FrozenMap(s.labels)
            )
            for s in lab.services
        },
        files=files,
    )


def _load_record(lab: Lab) -> dict[str, planner.Applied]:
    path = lab.run_dir / RECORD_FILE
    try:
        return planner.record_from_json(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise LabError(
            f"the record of applied manifests {path} is damaged: {err}",
            hint=f"remove {path}; the next apply compares with the lab itself",
        ) from err


@contextlib.contextmanager
def _locked(lab: Lab) -> Iterator[None]:
    """One apply or delete at a time per lab (their plans read what the other changes)."""
    path = lab.run_dir / LOCK_FILE
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabBusyError(
                        f"another apply or delete holds {path} for over {LOCK_TIMEOUT:.0f}s",
                        hint="wait for it to finish",
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
