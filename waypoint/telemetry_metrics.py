"""Istio's HTTP request metrics in a prometheus-client registry.

One :class:`RequestMetrics` per exporter process. A downstream request counts once in
``istio_requests_total`` and once in each histogram, as Istio's proxies count it;
Envoy's retries, invisible there, count in ``istio_request_retries_total`` (attempts
beyond the first, labelled like the request) and, when the router's upstream log is
configured too, each attempt in ``istio_request_attempts_total`` with its own response
code and flags.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from waypoint.telemetry_labels import LABEL_NAMES, RequestRecord

DURATION_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip
"""Istio's buckets of ``istio_request_duration_milliseconds``."""
SIZE_BUCKETS_BYTES = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)
"""Istio's buckets of ``istio_request_bytes`` and ``istio_response_bytes``."""


class RequestMetrics:
    """The request metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = list(LABEL_NAMES)
        self.requests = Counter("istio_requests", "Requests proxied.", labels, registry=registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration, first byte in to last byte out.",
            labels,
            buckets=DURATION_BUCKETS_MS,
            registry=registry,
        )
        self.request_bytes = Histogram(
            "istio_request_bytes",
            "Request size (headers and body).",
            labels,
            buckets=SIZE_BUCKETS_BYTES,
            registry=registry,
        )
        self.response_bytes = Histogram(
            "istio_response_bytes",
            "Response size (headers and body).",
            labels,
            buckets=SIZE_BUCKETS_BYTES,
            registry=registry,
        )
        self.retries = Counter(
            "istio_request_retries",
            "Upstream attempts beyond the first, by the request's final labels.",
            labels,
            registry=registry,
        )
        self.attempts = Counter(
            "istio_request_attempts",
            "Upstream attempts (from the router's upstream log), by each attempt's labels.",
            labels,
            registry=registry,
        )

    def record(self, record: RequestRecord, labels: dict[str, str]) -> None:
        """Count one log entry labelled ``labels``."""
        if record.upstream_attempt:
            self.attempts.labels(**labels).inc()
            return
        self.requests.labels(**labels).inc()
        self.duration.labels(**labels).observe(record.duration_ms)
        self.request_bytes.labels(**labels).observe(record.request_bytes)
        self.response_bytes.labels(**labels).observe(record.response_bytes)
        if record.attempts > 1:
            self.retries.labels(**labels).inc(record.attempts - 1)


def new_registry(version: str = "ambient-node") -> CollectorRegistry:
    """A fresh registry with ``istio_build{component="proxy"}``."""
    registry = CollectorRegistry(auto_describe=True)
    build = Gauge(
        "istio_build", "Istio component build info.", ["component", "tag"], registry=registry
    )
    build.labels(component="proxy", tag=version).set(1)
    return registry


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition for an ``Accept`` header: (body, content type)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
