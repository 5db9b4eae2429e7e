"""The control plane's Prometheus metrics on its status port (``/metrics``), istiod's names.

Values are read from the running parts at scrape time (a custom collector), so the
hot paths keep plain counters and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

Status = Callable[[], dict[str, Any]]


class StatusCollector:
    """Turns :meth:`ControlPlane.status` into metric families."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        """One scrape."""
        status = self._status()
        proxies = status.get("proxies", [])
        yield GaugeMetricFamily("pilot_xds", "Connected xDS clients.", value=len(proxies))
        pushes = CounterMetricFamily("pilot_xds_pushes", "Delta xDS responses sent.")
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
