"""Cluster sources: where the control plane and the agent learn the cluster's objects.

Two sources share one interface, ``load() -> ClusterState`` and
``async watch(interval) -> AsyncIterator[ClusterState]``:

- :class:`FolderSource`: a folder of Kubernetes YAML (the lab's, or standalone use);
- :class:`KubernetesSource`: the Kubernetes API through the official client.

Objects become the frozen domain values of :mod:`controlplane.model` here; problems
become :class:`~controlplane.model.SourceIssue` values on the state, never exceptions.
"""

from __future__ import annotations

from controlplane.model import ClusterState, SourceIssue
from controlplane.sources.folder import FolderSource
from controlplane.sources.kube import KubernetesSource

__all__ = ["ClusterState", "FolderSource", "KubernetesSource", "SourceIssue"]
