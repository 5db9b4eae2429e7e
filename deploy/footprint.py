"""The chart's requests and limits against the measured footprint (``deploy/footprint.json``).

``deploy/footprint.json`` is written from a run of the ``footprint`` benchmark
(``python -m bench.cases.footprint record bench/results/<run>``): each process's CPU
share and resident memory, per probe, median and maximum over the rounds. The rules
below say what each request and limit of the chart must cover; ``make deploy-check``
and ``tests/unit/test_deploy_footprint.py`` apply them to the chart's defaults, so a
value and the figure it was set from cannot drift apart silently. Pure: no I/O except
:func:`load_record` and :func:`chart_defaults`.

The rules:

- a **memory limit** is at least :data:`MEMORY_LIMIT_FACTOR` times the measured peak
  of everything in the container (for the agent, its resident set plus its start-up
  compile child's; for ztunnel, the supervisor plus ``workers`` times the largest
  worker): a container killed at its limit takes the node's capture (agent) or every
  connection of the node (ztunnel) with it;
- a **memory request** is at least the largest steady resident set measured;
- a **CPU request** covers the median share measured (ztunnel: half the loaded median,
  bursts above it use spare CPU up to the limit);
- a **CPU limit** is at least :data:`CPU_LIMIT_FACTOR` times the largest share measured
  and never below one core for processes that compile or load at start (the agent's
  BCC compile, the control plane's first full push), nor below ``workers`` cores for
  ztunnel (each worker is one single-threaded process).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
RECORD = DEPLOY / "footprint.json"
VALUES = DEPLOY / "charts" / "ambient-node" / "values.yaml"

MEMORY_LIMIT_FACTOR = 2.0
CPU_LIMIT_FACTOR = 2.0
NODE_PROBES = ("node-idle", "node-hold-1000", "node-bulk")
LOADED_PROBES = ("node-hold-1000", "node-bulk")
CP_PROBES = ("cp-100-pods", "cp-1000-pods")

_MEMORY_UNITS = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "": 1,
}
"""Every suffix of a Kubernetes memory quantity (``m`` aside: no memory is that small)."""


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity (``"200m"``, ``"2"``, ``1``) in cores."""
    text = str(quantity)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def memory_mb(quantity: str | int) -> float:
    """A Kubernetes memory quantity (``"512Mi"``, ``"1G"``, bytes) in MB (10^6 bytes)."""
    text = str(quantity)
    for suffix in sorted(_MEMORY_UNITS, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return float(text[: -len(suffix)]) * _MEMORY_UNITS[suffix] / 1e6
    return float(text) / 1e6


@dataclass(frozen=True)
class Need:
    """What one request or limit must be at least, and the figures that say so."""

    container: str
    """``node.agent``, ``node.ztunnel`` or ``controlPlane`` (where in values.yaml)."""
    kind: str
    """``requests`` or ``limits``."""
    resource: str
    """``cpu`` (cores) or ``memory`` (MB)."""
    minimum: float
    because: str


class Figures:
    """Read access to a footprint record's figures."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._figures: Mapping[str, Mapping[str, Mapping[str, float]]] = record["figures"]

    def get(self, probe: str, metric: str, stat: str = "max") -> float:
        """One figure (``stat`` is ``median`` or ``max``)."""
        try:
            return float(self._figures[probe][metric][stat])
        except KeyError as err:
            raise KeyError(
                f"deploy/footprint.json has no {stat} of {metric} in probe {probe}: record it "
                "again (python -m bench.cases.footprint record bench/results/<run>)"
            ) from err

    def worst(self, metric: str, probes: tuple[str, ...], stat: str = "max") -> float:
        """The largest ``stat`` of ``metric`` over ``probes``."""
        return max(self.get(p, metric, stat) for p in probes)


def needs(record: Mapping[str, Any], workers: int) -> list[Need]:
    """Every request and limit's minimum, from the record, for ``workers`` ztunnel workers."""
    f = Figures(record)
    agent_peak = f.worst("agent_peak_mb", NODE_PROBES) + f.get("agent-compile", "compile_peak_mb")
    zt_peak = f.worst("supervisor_peak_mb", NODE_PROBES) + workers * f.worst(
        "worker_peak_mb", NODE_PROBES
    )
    loaded = f.worst("ztunnel_cpu_pct", LOADED_PROBES, "median") / 100
    return [
        Need("node.agent", "requests", "memory", f.worst("agent_rss_mb", NODE_PROBES),
             "agent RSS"),
        Need("node.agent", "limits", "memory", MEMORY_LIMIT_FACTOR * agent_peak,
             f"{MEMORY_LIMIT_FACTOR} x (agent peak + its compile child's peak)"),
        Need("node.agent", "requests", "cpu",
             f.worst("agent_cpu_pct", NODE_PROBES, "median") / 100, "agent CPU median"),
        Need("node.agent", "limits", "cpu",
             max(1.0, CPU_LIMIT_FACTOR * f.worst("agent_cpu_pct", NODE_PROBES) / 100),
             "one core for the start-up compile"),
        Need("node.ztunnel", "requests", "memory", f.worst("ztunnel_rss_mb", NODE_PROBES),
             "ztunnel RSS (supervisor + workers)"),
        Need("node.ztunnel", "limits", "memory", MEMORY_LIMIT_FACTOR * zt_peak,
             f"{MEMORY_LIMIT_FACTOR} x (supervisor peak + {workers} x worker peak)"),
        Need("node.ztunnel", "requests", "cpu", loaded / 2, "half the loaded CPU median"),
        Need("node.ztunnel", "limits", "cpu",
             max(float(workers), CPU_LIMIT_FACTOR * f.worst("ztunnel_cpu_pct", NODE_PROBES) / 100),
             f"{workers} workers of one core each"),
        Need("controlPlane", "requests", "memory", f.worst("cp_rss_mb", CP_PROBES),
             "control-plane RSS at 1,000 pods"),
        Need("controlPlane", "limits", "memory",
             MEMORY_LIMIT_FACTOR * f.worst("cp_peak_mb", CP_PROBES),
             f"{MEMORY_LIMIT_FACTOR} x control-plane peak"),
        Need("controlPlane", "requests", "cpu", f.worst("cp_cpu_pct", CP_PROBES, "median") / 100,
             "control-plane CPU median under pushes"),
        Need("controlPlane", "limits", "cpu",
             max(1.0, CPU_LIMIT_FACTOR * f.worst("cp_cpu_pct", CP_PROBES) / 100),
             "one core for the first full push"),
    ]  # fmt: skip


def _resources(values: Mapping[str, Any], container: str) -> Mapping[str, Any]:
    node: Any = values
    for part in container.split("."):
        node = node[part]
    resources: Mapping[str, Any] = node["resources"]
    return resources


def footprint_problems(values: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """Requests and limits of ``values`` below what the record's figures need."""
    workers_value = values["node"]["ztunnel"].get("workers")
    if not workers_value:
        return [
            "node.ztunnel.workers is empty (one per CPU): the memory limit cannot follow "
            "the worker count; set a number"
        ]
    problems: list[str] = []
    for need in needs(record, int(workers_value)):
        resources = _resources(values, need.container)
        quantity = resources.get(need.kind, {}).get(need.resource)
        unit = "cores" if need.resource == "cpu" else "MB"
        where = f"{need.container}.resources.{need.kind}.{need.resource}"
        if quantity is None:
            problems.append(f"{where} is not set (needs >= {need.minimum:.3g} {unit})")
            continue
        have = cpu_cores(quantity) if need.resource == "cpu" else memory_mb(quantity)
        if have < need.minimum:
            problems.append(
                f"{where} = {quantity} ({have:.3g} {unit}) is below {need.minimum:.3g} {unit}: "
                f"{need.because}, deploy/footprint.json"
            )
    for container in ("node.agent", "node.ztunnel", "controlPlane"):
        resources = _resources(values, container)
        for resource, parse in (("cpu", cpu_cores), ("memory", memory_mb)):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            if request is not None and limit is not None and parse(request) > parse(limit):
                problems.append(f"{container}: {resource} request {request} above limit {limit}")
    return problems


def load_record(path: Path = RECORD) -> dict[str, Any]:
    """``deploy/footprint.json``."""
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def chart_defaults(path: Path = VALUES) -> dict[str, Any]:
    """The chart's ``values.yaml``."""
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values
