"""Kubernetes and Istio manifests applied to a lab (``ambient lab apply -f``).

- :mod:`lab.manifests.images`: which container images the lab stands in for;
- :mod:`lab.manifests.parse`: files to checked manifests, every problem as ``file:line``;
- :mod:`lab.manifests.planner`: the pure plan (placement, pod names, idempotency);
- :mod:`lab.manifests.apply`: the shell that runs a plan against a :class:`~lab.Lab`.

``from lab.manifests.apply import apply_manifests, delete_manifests``.
"""

from __future__ import annotations
