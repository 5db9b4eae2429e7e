"""Istio's HTTP request metrics in a prometheus-client registry.

One :class:`RequestMetrics` per exporter process. A downstream request counts once in
``istio_requests_total`` and once in each histogram, as Istio's proxies count it;
Envoy's retries, invisible there, count in ``istio_request_retries_total`` (attempts
beyond the first, labelled like the request) and, when the router's upstream log is
configured too, each attempt in ``istio_request_attempts_total`` with its own response
code and flags.
"""

from __future__ import annotations

from typing import Any

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
        self.series(tuple(labels[name] for name in LABEL_NAMES)).count(
            record.upstream_attempt,
            record.duration_ms,
            record.request_bytes,
            record.response_bytes,
            record.attempts,
        )

    def series(self, values: tuple[str, ...]) -> Series:
        """The children of one label set (values in :data:`LABEL_NAMES` order), for a
        caller to keep: ``labels(...)`` is the costly part of counting."""
        return Series(self, values)


class Series:
    """The metric children of one label set, each looked up on first use (so a label set
    seen only in upstream attempts never appears in the request metrics, and one without
    retries never in ``istio_request_retries_total``)."""

    __slots__ = (
        "_attempts",
        "_duration",
        "_metrics",
        "_request_bytes",
        "_requests",
        "_response_bytes",
        "_retries",
        "values",
    )

    def __init__(self, metrics: RequestMetrics, values: tuple[str, ...]) -> None:
        self._metrics = metrics
        self.values = values
        self._requests: Any = None
        self._duration: Any = None
        self._request_bytes: Any = None
        self._response_bytes: Any = None
        self._retries: Any = None
        self._attempts: Any = None

    def count(
        self,
        upstream_attempt: bool,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        attempts: int,
    ) -> None:
        """Count one log entry (as :meth:`RequestMetrics.record`)."""
        if upstream_attempt:
            if self._attempts is None:
                self._attempts = self._metrics.attempts.labels(*self.values)
            self._attempts.inc()
            return
        if self._requests is None:
            metrics, values = self._metrics, self.values
            self._duration = metrics.duration.labels(*values)
            self._request_bytes = metrics.request_bytes.labels(*values)
            self._response_bytes = metrics.response_bytes.labels(*values)
            self._requests = metrics.requests.labels(*values)
        self._requests.inc()
        self._duration.observe(duration_ms)
        self._request_bytes.observe(request_bytes)
        self._response_bytes.observe(response_bytes)
        if attempts > 1:
            if self._retries is None:
                self._retries = self._metrics.retries.labels(*self.values)
            self._retries.inc(attempts - 1)


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
