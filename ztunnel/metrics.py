"""Istio's TCP metrics, with Istio's names and label set, so its dashboards work.

Both ends of a tunnel report: the source ztunnel with ``reporter="source"``, the
destination ztunnel with ``reporter="destination"``. Values nobody knows are
``unknown``. Each process owns one :class:`prometheus_client.CollectorRegistry`
(:func:`new_registry`), served on 15020 by the shell via :func:`render`.

Byte directions follow Istio: ``received`` counts bytes from the client towards the
server (the request direction), ``sent`` bytes from the server back to the client,
on both reporters.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.workload import Service, Workload
from ztunnel.workers import METRICS_DIR_ENV

UNKNOWN = "unknown"

# response_flags values (Istio ztunnel): why a connection failed, "-" when it did not.
FLAG_NONE = "-"
FLAG_DENY = "DENY"
FLAG_CONNECT = "CONNECT"
FLAG_TLS_FAILURE = "TLS_FAILURE"
FLAG_H2_HANDSHAKE_FAILURE = "H2_HANDSHAKE_FAILURE"
FLAG_NETWORK_POLICY = "NETWORK_POLICY"
FLAG_IDENTITY_ERROR = "IDENTITY_ERROR"

MUTUAL_TLS = "mutual_tls"


@dataclass(frozen=True)
class ConnectionLabels:
    """The label set of Istio's TCP metrics, in Istio's order; defaults are ``unknown``.

    The locality labels, which Istio adds only when an endpoint is known, are always
    present here (as ``unknown`` otherwise) because a Prometheus metric has one
    fixed label set.
    """

    reporter: str = UNKNOWN
    source_workload: str = UNKNOWN
    source_canonical_service: str = UNKNOWN
    source_canonical_revision: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    source_app: str = UNKNOWN
    source_version: str = UNKNOWN
    source_cluster: str = UNKNOWN
    destination_service: str = UNKNOWN
    destination_service_namespace: str = UNKNOWN
    destination_service_name: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_canonical_service: str = UNKNOWN
    destination_canonical_revision: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_principal: str = UNKNOWN
    destination_app: str = UNKNOWN
    destination_version: str = UNKNOWN
    destination_cluster: str = UNKNOWN
    request_protocol: str = "tcp"
    response_flags: str = FLAG_NONE
    connection_security_policy: str = UNKNOWN
    source_region: str = UNKNOWN
    source_zone: str = UNKNOWN
    destination_region: str = UNKNOWN
    destination_zone: str = UNKNOWN

    def with_flag(self, flag: str) -> ConnectionLabels:
        """The same labels with ``response_flags`` set (a failure's reason)."""
        return replace(self, response_flags=flag)


LABEL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ConnectionLabels))

astuple_labels: Callable[[ConnectionLabels], tuple[str, ...]] = operator.attrgetter(*LABEL_NAMES)
"""A label set's values in :data:`LABEL_NAMES` order (no deep copy, unlike ``astuple``)."""

CHILD_CACHE_SIZE = 4096
"""Label sets whose bound counters a :class:`TcpMetrics` keeps (one per peer pair and reason)."""


class _Children(NamedTuple):
    opened: Counter
    closed: Counter
    received_bytes: Counter
    sent_bytes: Counter


def _or_unknown(value: str | None) -> str:
    return value if value else UNKNOWN


def _side(prefix: str, workload: Workload | None, identity: SpiffeId | None) -> dict[str, str]:
    values = {
        f"{prefix}_principal": _or_unknown(str(identity) if identity else None),
        f"{prefix}_workload": UNKNOWN,
        f"{prefix}_canonical_service": UNKNOWN,
        f"{prefix}_canonical_revision": UNKNOWN,
        f"{prefix}_workload_namespace": UNKNOWN,
        f"{prefix}_app": UNKNOWN,
        f"{prefix}_version": UNKNOWN,
        f"{prefix}_cluster": UNKNOWN,
        f"{prefix}_region": UNKNOWN,
        f"{prefix}_zone": UNKNOWN,
    }
    if workload is not None:
        canonical = workload.canonical_name or workload.workload_name or workload.name
        revision = workload.canonical_revision or "latest"
        values.update(
            {
                f"{prefix}_workload": _or_unknown(workload.workload_name or workload.name),
                f"{prefix}_canonical_service": canonical,
                f"{prefix}_canonical_revision": revision,
                f"{prefix}_workload_namespace": workload.namespace,
                f"{prefix}_app": canonical,
                f"{prefix}_version": revision,
                f"{prefix}_cluster": _or_unknown(workload.cluster_id),
                f"{prefix}_region": _or_unknown(workload.locality.region),
                f"{prefix}_zone": _or_unknown(workload.locality.zone),
            }
        )
    return values


_LabelsKey = tuple[str, int, SpiffeId | None, int, SpiffeId | None, int, bool]
_labels_memo: dict[_LabelsKey, tuple[ConnectionLabels, object, object, object]] = {}
LABELS_MEMO_SIZE = 4096
"""Label sets :func:`connection_labels` remembers (one per peer pair, service and reporter)."""


def connection_labels(
    *,
    reporter: str,
    source: Workload | None = None,
    source_identity: SpiffeId | None = None,
    destination: Workload | None = None,
    destination_identity: SpiffeId | None = None,
    service: Service | None = None,
    mutual_tls: bool = False,
) -> ConnectionLabels:
    """The labels of one connection as one reporter sees it.

    ``source_identity`` must come from the verified mTLS peer (destination reporter)
    or the local workload's certificate (source reporter), never from headers.

    Every new connection asks this, on both reporters, for the same few peer pairs:
    the answer is remembered per (reporter, the very workload and service objects,
    identities), so a state update (new objects) gets fresh labels.
    """
    key = (
        reporter,
        id(source),
        source_identity,
        id(destination),
        destination_identity,
        id(service),
        mutual_tls,
    )
    hit = _labels_memo.get(key)
    if hit is not None and hit[1] is source and hit[2] is destination and hit[3] is service:
        return hit[0]
    if reporter not in ("source", "destination"):
        raise ValueError(f"reporter must be source or destination, not {reporter!r}")
    values: dict[str, str] = {"reporter": reporter}
    values.update(_side("source", source, source_identity))
    values.update(_side("destination", destination, destination_identity))
    if service is not None:
        values["destination_service"] = service.hostname
        values["destination_service_namespace"] = service.namespace
        values["destination_service_name"] = service.name
    values["connection_security_policy"] = MUTUAL_TLS if mutual_tls else UNKNOWN
    labels = ConnectionLabels(**values)
    if len(_labels_memo) >= LABELS_MEMO_SIZE:
        _labels_memo.clear()  # a churn of workloads: start over (rare)
    # The objects are kept with the answer: an id is only reused once its object is gone.
    _labels_memo[key] = (labels, source, destination, service)
    return labels


class TcpMetrics:
    """Istio's TCP traffic counters, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABEL_NAMES, registry=registry)

        self.opened = counter(
            "istio_tcp_connections_opened_total", "Connections opened through ztunnel."
        )
        self.closed = counter(
            "istio_tcp_connections_closed_total", "Connections closed through ztunnel."
        )
        self.received_bytes = counter(
            "istio_tcp_received_bytes_total", "Bytes from the client towards the server."
        )
        self.sent_bytes = counter(
            "istio_tcp_sent_bytes_total", "Bytes from the server back to the client."
        )
        self.failed = counter(
            "istio_tcp_connections_failed_total", "Connections that failed (response_flags why)."
        )
        self._cache: dict[ConnectionLabels, _Children] = {}
        self.sockets_open = Gauge(
            "istio_tcp_sockets_open",
            "Sockets currently open.",
            ["reporter"],
            registry=registry,
            multiprocess_mode="livesum",
        )

    def _children(self, labels: ConnectionLabels) -> _Children:
        """The counters bound to ``labels``, made once per label set and then reused.

        ``prometheus_client``'s ``labels(**kwargs)`` (and ``dataclasses.asdict``, which
        deep-copies every field) cost about 0.1 ms per call with 27 labels: several
        per connection, they were a fifth of a new connection's CPU.
        """
        children = self._cache.get(labels)
        if children is None:
            if len(self._cache) >= CHILD_CACHE_SIZE:
                self._cache.clear()  # a churn of label sets: start over (rare)
            values = astuple_labels(labels)
            children = _Children(
                self.opened.labels(*values),
                self.closed.labels(*values),
                self.received_bytes.labels(*values),
                self.sent_bytes.labels(*values),
            )
            self._cache[labels] = children
        return children

    def connection_opened(self, labels: ConnectionLabels) -> None:
        """Count an opened connection."""
        self._children(labels).opened.inc()

    def connection_closed(self, labels: ConnectionLabels, *, received: int, sent: int) -> None:
        """Count a closed connection and the bytes it moved (Istio reports them at close too)."""
        self._children(labels).closed.inc()
        self.add_bytes(labels, received=received, sent=sent)

    def add_bytes(self, labels: ConnectionLabels, *, received: int = 0, sent: int = 0) -> None:
        """Count bytes moved (may be called while the connection runs)."""
        children = self._children(labels)
        if received:
            children.received_bytes.inc(received)
        if sent:
            children.sent_bytes.inc(sent)

    def connection_failed(self, labels: ConnectionLabels, flag: str) -> None:
        """Count a failed connection with its ``response_flags`` reason."""
        self.failed.labels(*astuple_labels(labels.with_flag(flag))).inc()


def new_registry(istio_version: str = "ambient-node") -> CollectorRegistry:
    """A fresh registry for one ztunnel process, with ``istio_build``."""
    registry = CollectorRegistry(auto_describe=True)
    build = Gauge(
        "istio_build",
        "Istio component build info.",
        ["component", "tag"],
        registry=registry,
        multiprocess_mode="max",
    )
    build.labels(component="ztunnel", tag=istio_version).set(1)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition for an HTTP ``Accept`` header: (body, content type).

    OpenMetrics when the scraper asks for it, the Prometheus text format otherwise.
    With worker processes (``PROMETHEUS_MULTIPROC_DIR`` set before the workers
    started), the values of every worker are summed, whichever worker answers.
    """
    if os.environ.get(METRICS_DIR_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
