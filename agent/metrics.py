"""The agent's Prometheus metrics, on a localhost port of its namespace.

Counters the programs keep (per pod, in the ``stats`` map) and map sizes are read at
scrape time by a collector, so they are exact at that moment; what the agent itself
does (attach failures) it counts as it goes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.nodemaps import NodeMaps

log = logging.getLogger("agent.metrics")

_REDIRECT_FIELDS = {
    "redirected_outbound": "outbound",
    "redirected_inbound": "inbound",
    "redirected_hbone": "hbone",
}
_DROP_FIELDS = {"dropped_no_listener": "no_listener", "dropped_assign_failed": "assign_failed"}


class MapsCollector(Collector):
    """Reads the pinned maps on every scrape."""

    def __init__(self, maps: NodeMaps, node: str) -> None:
        self.maps = maps
        self.node = node

    def collect(self) -> Iterator[Any]:
        """Workloads, map sizes and the per-pod counters of the programs."""
        workloads = self.maps.workload_rows()
        enrolled = GaugeMetricFamily(
            "ambient_agent_workloads",
            "Pods of this node known to the capture programs, by enrollment.",
            labels=["node", "enrolled"],
        )
        for flag in (True, False):
            count = sum(1 for w in workloads if w["enrolled"] is flag)
            enrolled.add_metric([self.node, str(flag).lower()], count)
        yield enrolled

        sizes = GaugeMetricFamily(
            "ambient_agent_map_entries", "Entries in each pinned map.", labels=["node", "map"]
        )
        sizes.add_metric([self.node, "workloads"], len(workloads))
        stats = self.maps.stats_rows()
        sizes.add_metric([self.node, "stats"], len(stats))
        sizes.add_metric([self.node, "attachments"], len(self.maps.attachments_list()))
        yield sizes

        labels = ["node", "namespace", "pod", "pod_ip"]
        redirected = CounterMetricFamily(
            "ambient_agent_redirected_connections",
            "Connections the programs handed to a ztunnel listener.",
            labels=[*labels, "listener"],
        )
        dropped = CounterMetricFamily(
            "ambient_agent_dropped_packets",
            "Packets dropped to fail closed.",
            labels=[*labels, "reason"],
        )
        assigned = CounterMetricFamily(
            "ambient_agent_assigned_packets",
            "Packets handed to an existing node-namespace socket.",
            labels=labels,
        )
        passed = CounterMetricFamily(
            "ambient_agent_passed_packets", "Packets of a pod left untouched.", labels=labels
        )
        for row in stats:
            base = [self.node, row["namespace"] or "", row["pod"] or "", row["pod_ip"]]
            for field, listener in _REDIRECT_FIELDS.items():
                redirected.add_metric([*base, listener], row[field])
            for field, reason in _DROP_FIELDS.items():
                dropped.add_metric([*base, reason], row[field])
            assigned.add_metric(base, row["assigned_established"])
            passed.add_metric(base, row["passed"])
        yield from (redirected, dropped, assigned, passed)

        by_verdict = CounterMetricFamily(
            "ambient_agent_verdicts",
            "TCP packets the capture programs decided about, by verdict.",
            labels=["node", "verdict"],
        )
        by_reason = CounterMetricFamily(
            "ambient_agent_fail_closed",
            "Packets refused or dropped to fail closed, by reason.",
            labels=["node", "reason"],
        )
        for row in self.maps.verdict_rows():
            family = by_verdict if row["kind"] == "verdict" else by_reason
            family.add_metric([self.node, row["name"]], row["packets"])
        yield from (by_verdict, by_reason)


class AgentMetrics:
    """The registry of one agent process."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.attach_failures = Counter(
            "ambient_agent_attach_failures",
            "Times a program could not be attached to a pod's interface.",
            ["node"],
            registry=self.registry,
        ).labels(node=node)

    def show_excluded_namespaces(self, namespaces: Iterable[str]) -> None:
        """One ``ambient_agent_excluded_namespace`` sample per namespace never captured."""
        gauge = Gauge(
            "ambient_agent_excluded_namespace",
            "Namespaces whose pods this agent never captures, even if labelled (1 each).",
            ["node", "namespace"],
            registry=self.registry,
        )
        for namespace in sorted(namespaces):
            gauge.labels(node=self.node, namespace=namespace).set(1)

    def watch_maps(self, maps: NodeMaps) -> None:
        """Adds the scrape-time collector of ``maps``."""
        self.registry.register(MapsCollector(maps, self.node))

    def serve(self, host: str, port: int) -> None:
        """Serves ``/metrics`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics listening addr=%s:%d", host, port)
