"""Kubernetes objects the lab writes into its config folder, and per-pod DNS files.

One YAML file per object, named ``<kind>.<namespace>.<name>.yaml`` (cluster-scoped:
``<kind>.<name>.yaml``), written to a hidden temporary file and renamed over the old
one, so a folder watcher never reads half an object.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lab.model import Node, Pod, Service

CREATED = "2026-01-01T00:00:00Z"
"""Fixed creation timestamp: the objects stay byte-identical when rewritten unchanged."""


def namespace_object(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A ``Namespace`` with its labels (plus the standard ``kubernetes.io/metadata.name``)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/metadata.name": name, **dict(labels)},
        },
        "status": {"phase": "Active"},
    }


def pod_object(pod: Pod, node: Node) -> dict[str, Any]:
    """A running, ready ``Pod`` as the API server would hold it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "labels": dict(pod.labels),
            "creationTimestamp": CREATED,
        },
        "spec": {
            "nodeName": pod.node,
            "serviceAccountName": pod.service_account,
            "containers": [{"name": "app", "image": "ambient-node/lab-workload"}],
        },
        "status": {
            "phase": "Running",
            "hostIP": node.ip,
            "hostIPs": [{"ip": node.ip}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        },
    }


def service_object(svc: Service) -> dict[str, Any]:
    """A ``ClusterIP`` ``Service``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": dict(svc.labels)},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.vip,
            "clusterIPs": [svc.vip],
            "selector": dict(svc.selector),
            "ports": [
                {
                    "name": p.name or f"{p.protocol.lower()}-{p.port}",
                    "port": p.port,
                    "targetPort": p.target_port,
                    "protocol": p.protocol,
                }
                for p in svc.ports
            ],
        },
    }


def service_account_object(name: str, namespace: str) -> dict[str, Any]:
    """A ``ServiceAccount`` (the identity a pod's certificate names)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }


def object_filename(kind: str, name: str, namespace: str | None = None) -> str:
    """File name of one object in the config folder."""
    if namespace is None:
        return f"{kind.lower()}.{name}.yaml"
    return f"{kind.lower()}.{namespace}.{name}.yaml"


def object_path(config_dir: Path, obj: Mapping[str, Any]) -> Path:
    """Where ``obj`` lives in ``config_dir``."""
    meta = obj["metadata"]
    return config_dir / object_filename(str(obj["kind"]), meta["name"], meta.get("namespace"))


def write_object(config_dir: Path, obj: Mapping[str, Any]) -> Path:
    """Writes ``obj`` atomically (hidden temporary file, fsync, rename); returns its path."""
    path = object_path(config_dir, obj)
    text = yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False)
    write_atomic(path, text)
    return path


def remove_object(config_dir: Path, kind: str, name: str, namespace: str | None = None) -> None:
    """Removes one object's file; absent is fine."""
    (config_dir / object_filename(kind, name, namespace)).unlink(missing_ok=True)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replaces ``path`` with ``text`` in one rename, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
