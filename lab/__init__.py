"""The lab: a cluster of network namespaces on one machine, and its workload programs.

``from lab import Lab, LabSpec``; see ``docs/lab.md``. The names are loaded on first
use, so workload programs (``python -m lab.workloads.<prog>``) start without pyroute2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.cluster import Lab, LabSpec
    from lab.model import Host, Node, Pod, Service, ServicePort
    from lab.processes import LabProcess
    from lab.teardown import TeardownReport

_EXPORTS = {
    "Host": "lab.model",
    "Lab": "lab.cluster",
    "LabProcess": "lab.processes",
    "LabSpec": "lab.cluster",
    "Node": "lab.model",
    "Pod": "lab.model",
    "Service": "lab.model",
    "ServicePort": "lab.model",
    "TeardownReport": "lab.teardown",
}

__all__ = [
    "Host",
    "Lab",
    "LabProcess",
    "LabSpec",
    "Node",
    "Pod",
    "Service",
    "ServicePort",
    "TeardownReport",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lab' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
