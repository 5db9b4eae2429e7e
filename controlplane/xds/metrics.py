"""The control plane's Prometheus metrics on its status port (``/metrics``), istiod's names.

Values are read from the running parts at scrape time (a custom collector), so the
hot paths keep plain counters and nothing is counted twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

Status = Callable[[], dict[str, Any]]

PUSH_TO_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds (istiod's ``pilot_proxy_convergence_time`` range, finer at the low end)."""


@dataclass
class Histogram:
    """Plain bucket counts (the hot path adds; the collector reads at scrape time)."""

    bounds: tuple[float, ...] = PUSH_TO_ACK_BUCKETS
    counts: list[int] = field(default_factory=list)
    """Observations per bucket (not cumulative), the last one above every bound."""
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last (Prometheus' shape)."""
        counts = self.counts or [0] * (len(self.bounds) + 1)
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (``/debug/status``)."""
        return {"count": self.count, "sum": round(self.total, 6), "buckets": dict(self.buckets())}


class StatusCollector:
    """Turns :meth:`ControlPlane.status` into metric families."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        """One scrape."""
        status = self._status()
        proxies = status.get("proxies", [])
        yield GaugeMetricFamily("pilot_xds", "Connected ztunnel xDS clients.", value=len(proxies))
        pushes = CounterMetricFamily("pilot_xds_pushes", "xDS responses sent (ztunnels, Envoys).")
        pushes.add_metric([], status.get("pushes", 0))
        yield pushes
        nacks = CounterMetricFamily(
            "pilot_total_xds_rejects", "NACKs from connected clients.", labels=["type"]
        )
        resources = GaugeMetricFamily(
            "pilot_xds_resources", "Resources in the current snapshot.", labels=["type"]
        )
        per_type: dict[str, int] = {}
        for proxy in proxies:
            for type_url, t in proxy.get("types", {}).items():
                per_type[type_url] = per_type.get(type_url, 0) + int(t.get("nacks", 0))
        for type_url, count in sorted(per_type.items()):
            nacks.add_metric([type_url.rsplit(".", 1)[-1]], count)
        for type_url, snap in sorted(status.get("snapshot", {}).items()):
            resources.add_metric([type_url.rsplit(".", 1)[-1]], snap.get("resources", 0))
        yield nacks
        yield resources
        ca = status.get("ca", {})
        csr = CounterMetricFamily("citadel_server_csr_count", "Certificate signing requests.")
        csr.add_metric(
            [],
            ca.get("issued", 0)
            + ca.get("refusedUnauthenticated", 0)
            + ca.get("refusedImpersonation", 0)
            + ca.get("refusedCsr", 0),
        )
        yield csr
        issued = CounterMetricFamily(
            "citadel_server_success_cert_issuance_count", "Certificates issued."
        )
        issued.add_metric([], ca.get("issued", 0))
        yield issued
        refused = CounterMetricFamily(
            "citadel_server_refused_count", "Certificate requests refused.", labels=["reason"]
        )
        for reason, key in (
            ("unauthenticated", "refusedUnauthenticated"),
            ("impersonation", "refusedImpersonation"),
            ("csr", "refusedCsr"),
        ):
            refused.add_metric([reason], ca.get(key, 0))
        yield refused
        yield from _envoy_families(status.get("envoy", {}))


def _envoy_families(envoy: dict[str, Any]) -> Iterator[Any]:
    """Envoy proxies (waypoints, gateways): connected, pushes and NACKs by type, push-to-ACK."""
    yield GaugeMetricFamily(
        "pilot_xds_envoy_proxies",
        "Connected Envoy proxies (waypoints and gateways).",
        value=envoy.get("connected", 0),
    )
    pushes = CounterMetricFamily(
        "pilot_xds_envoy_pushes", "xDS responses sent to Envoy proxies.", labels=["type"]
    )
    for kind, count in sorted(envoy.get("pushes", {}).items()):
        pushes.add_metric([kind], count)
    yield pushes
    nacks = CounterMetricFamily(
        "pilot_xds_envoy_rejects", "NACKs from Envoy proxies.", labels=["type"]
    )
    for kind, count in sorted(envoy.get("nacks", {}).items()):
        nacks.add_metric([kind], count)
    yield nacks
    refused = CounterMetricFamily(
        "pilot_xds_envoy_refused", "Envoy streams refused (identity, metadata)."
    )
    refused.add_metric([], envoy.get("refused", 0))
    yield refused
    histogram = envoy.get("pushToAck", {})
    ack = HistogramMetricFamily(
        "pilot_xds_envoy_push_to_ack_seconds",
        "Time from an xDS response to an Envoy proxy being queued to its ACK.",
    )
    ack.add_metric(
        [], list(histogram.get("buckets", {}).items()), sum_value=histogram.get("sum", 0.0)
    )
    yield ack


def metrics_registry(status: Status) -> CollectorRegistry:
    """A registry exposing the control plane's status as metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition (text, or OpenMetrics when asked) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    body: bytes = encoder(registry)
    return body, content_type
