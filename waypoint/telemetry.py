"""The telemetry exporter beside a waypoint's (or gateway's) Envoy.

Envoy streams one access-log entry per request over gRPC
(``envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs``, the
``ambient_telemetry`` cluster of ``controlplane/envoy/telemetry.py``) to
:attr:`ExporterConfig.access_log_address` on 127.0.0.1; the exporter turns each into
Istio's request metrics (:mod:`waypoint.telemetry_labels`,
:mod:`waypoint.telemetry_metrics`) and serves them at ``/metrics`` and
``/stats/prometheus`` on :attr:`ExporterConfig.metrics_address` (the pod's 15020).

Who the workloads are (name, app, version, service account by pod IP) comes from the
cluster folder the control plane reads (:attr:`ExporterConfig.cluster_folder`),
re-read every :attr:`ExporterConfig.refresh_interval_s`; without it, labels come from
what Envoy logged alone.

``ambient waypoint run`` calls :func:`serve_exporter`; tests use :class:`Exporter`,
which reports the ports it bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from prometheus_client import CollectorRegistry

from controlplane.envoy.telemetry import TELEMETRY_PORT
from controlplane.model import ClusterState
from controlplane.sources.folder import FolderSource
from controlplane.workloadapi.workloads import canonical_name, canonical_revision, workload_name
from waypoint.telemetry_entry import (
    LabelKey,
    amounts,
    is_final,
    is_tunnel,
    label_key,
    record_from_entry,
)
from waypoint.telemetry_labels import (
    DEFAULT_CLUSTER_ID,
    LABEL_NAMES,
    Reporter,
    WorkloadDirectory,
    WorkloadInfo,
    request_labels,
)
from waypoint.telemetry_metrics import RequestMetrics, Series, new_registry, render

log = logging.getLogger("ambient.waypoint.telemetry")

METRICS_PATHS = frozenset({"/metrics", "/stats/prometheus"})
GRPC_WORKERS = 32
"""Threads for access-log streams: Envoy keeps one stream per worker thread open."""


@dataclass(frozen=True)
class ExporterConfig:
    """How one exporter runs."""

    access_log_address: tuple[str, int] = ("127.0.0.1", TELEMETRY_PORT)
    """Where the gRPC access-log service listens (Envoy's ``ambient_telemetry``); port 0
    picks a free one."""
    metrics_address: tuple[str, int] = ("0.0.0.0", 15020)
    """Where ``/metrics`` and ``/stats/prometheus`` are served."""
    cluster_folder: Path | None = None
    """The control plane's cluster folder (pods: name, labels, service account, IP);
    None: labels from Envoy's log entries alone."""
    refresh_interval_s: float = 5.0
    """How often the cluster folder is re-read."""
    trust_domain: str = "cluster.local"
    """The mesh's trust domain (for ``destination_principal``)."""
    cluster_id: str = DEFAULT_CLUSTER_ID
    """``source_cluster``/``destination_cluster`` of known workloads."""
    proxy_kind: str = "waypoint"
    """``waypoint`` (``reporter="waypoint"``) or ``gateway`` (``reporter="source"``, the
    source labels naming the gateway itself, as Istio's ingress gateways report)."""
    pod_ip: str = ""
    """The proxy pod's own IP: names its workload (a gateway's source labels)."""


def directory_from_state(
    state: ClusterState, *, trust_domain: str, cluster_id: str = DEFAULT_CLUSTER_ID
) -> WorkloadDirectory:
    """Every pod with an address, as the metrics name it."""
    infos = []
    for pod in state.pods.values():
        for ip in pod.ips or ((pod.ip,) if pod.ip else ()):
            infos.append(
                WorkloadInfo(
                    name=workload_name(pod),
                    namespace=pod.namespace,
                    app=canonical_name(pod),
                    version=canonical_revision(pod),
                    service_account=pod.service_account,
                    ip=ip,
                )
            )
    return WorkloadDirectory.of(infos, trust_domain=trust_domain, cluster_id=cluster_id)


LABEL_CACHE_SIZE = 4096
"""Label sets the sink keeps resolved (oldest dropped first beyond it): a flood of
distinct labels costs the lookups again, never unbounded memory."""


class AccessLogSink:
    """Turns log entries into metrics against the current workload directory.

    Per entry, the costly parts (the record, the labels, prometheus-client's
    ``labels(...)``) are done once per distinct :func:`label_key` and kept, bounded by
    :data:`LABEL_CACHE_SIZE`, until the directory or reporter changes."""

    def __init__(
        self,
        metrics: RequestMetrics,
        directory: WorkloadDirectory,
        reporter: Reporter,
        cache_size: int = LABEL_CACHE_SIZE,
    ) -> None:
        self.metrics = metrics
        self.cache_size = cache_size
        self._view: tuple[WorkloadDirectory, Reporter, dict[LabelKey, Series]] = (
            directory,
            reporter,
            {},
        )
        self.entries = 0

    @property
    def view(self) -> tuple[WorkloadDirectory, Reporter]:
        """The directory and reporter labels come from."""
        directory, reporter, _ = self._view
        return directory, reporter

    @view.setter
    def view(self, view: tuple[WorkloadDirectory, Reporter]) -> None:
        # replaced whole with a fresh cache (a reference swap: no lock needed)
        self._view = (*view, {})

    @property
    def cached(self) -> int:
        """How many label sets are resolved now."""
        return len(self._view[2])

    def handle(self, message: als_pb2.StreamAccessLogsMessage) -> None:
        """Count the HTTP entries of one message (TCP entries are ztunnel's business)."""
        if not message.HasField("http_logs"):
            return
        directory, reporter, cache = self._view
        for entry in message.http_logs.log_entry:
            if not is_final(entry) or is_tunnel(entry):
                continue
            key = label_key(entry)
            series = cache.get(key)
            if series is None:
                series = self._resolve(entry, key, directory, reporter, cache)
            series.count(*amounts(entry))
            self.entries += 1

    def _resolve(
        self,
        entry: HTTPAccessLogEntry,
        key: LabelKey,
        directory: WorkloadDirectory,
        reporter: Reporter,
        cache: dict[LabelKey, Series],
    ) -> Series:
        labels = request_labels(record_from_entry(entry), directory, reporter)
        series = self.metrics.series(tuple(labels[name] for name in LABEL_NAMES))
        while len(cache) >= self.cache_size:
            with contextlib.suppress(StopIteration, RuntimeError, KeyError):
                del cache[next(iter(cache))]  # the oldest; another thread may race us
        cache[key] = series
        return series


class _AccessLogService(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self, sink: AccessLogSink) -> None:
        self.sink = sink

    def StreamAccessLogs(
        self,
        request_iterator: Iterable[als_pb2.StreamAccessLogsMessage],
        context: grpc.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        for message in request_iterator:
            try:
                self.sink.handle(message)
            except Exception:  # one bad entry must not end the stream of everyone else
                log.exception("access-log entry dropped")
        return als_pb2.StreamAccessLogsResponse()


class Exporter:
    """The running exporter: gRPC service, metrics HTTP server, folder refresher."""

    def __init__(self, config: ExporterConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else new_registry()
        self.sink = AccessLogSink(
            RequestMetrics(self.registry),
            WorkloadDirectory(trust_domain=config.trust_domain, cluster_id=config.cluster_id),
            Reporter.for_proxy(config.proxy_kind, None),
        )
        self._grpc: grpc.Server | None = None
        self._http: asyncio.Server | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._source: FolderSource | None = None
        """Kept across refreshes: it re-reads only the files that changed."""
        self.access_log_port = 0
        """The bound gRPC port (after :meth:`start`)."""
        self.metrics_port = 0
        """The bound metrics port (after :meth:`start`)."""

    async def start(self) -> None:
        """Bind both servers and read the cluster folder once."""
        if self.config.cluster_folder is not None:
            await self._refresh()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS))
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(_AccessLogService(self.sink), server)
        host, port = self.config.access_log_address
        self.access_log_port = server.add_insecure_port(f"{host}:{port}")
        server.start()
        self._grpc = server
        host, port = self.config.metrics_address
        self._http = await asyncio.start_server(self._serve_http, host, port)
        self.metrics_port = self._http.sockets[0].getsockname()[1]
        if self.config.cluster_folder is not None:
            self._refresher = asyncio.create_task(self._refresh_forever())
        log.info(
            "telemetry exporter: access log on %s:%d, metrics on %s:%d",
            self.config.access_log_address[0],
            self.access_log_port,
            host,
            self.metrics_port,
        )

    async def stop(self) -> None:
        """Close everything started (idempotent)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()
            self._http = None
        if self._grpc is not None:
            done = self._grpc.stop(grace=0.5)
            await asyncio.to_thread(done.wait, 2.0)
            self._grpc = None

    async def _refresh(self) -> None:
        folder = self.config.cluster_folder
        assert folder is not None
        try:
            if self._source is None:
                self._source = FolderSource(folder)
            state = await asyncio.to_thread(self._source.load)
        except Exception as err:  # keep the last directory; the folder may be mid-write
            log.warning("cannot read cluster folder %s: %s", folder, err)
            return
        directory = directory_from_state(
            state, trust_domain=self.config.trust_domain, cluster_id=self.config.cluster_id
        )
        own = directory.by_ip.get(self.config.pod_ip) if self.config.pod_ip else None
        self.sink.view = (directory, Reporter.for_proxy(self.config.proxy_kind, own))

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval_s)
            await self._refresh()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = [*lines[0].split(" "), "", ""][:3]
            headers = dict(_header_lines(lines[1:]))
            path = target.partition("?")[0]
            if method != "GET":
                status, body, content_type = "405 Method Not Allowed", b"", "text/plain"
            elif path in METRICS_PATHS:
                status = "200 OK"
                body, content_type = render(self.registry, headers.get("accept", ""))
            elif path == "/healthz/ready":
                status, body, content_type = "200 OK", b"ready\n", "text/plain"
            else:
                status, body, content_type = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _header_lines(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            yield name.strip().lower(), value.strip()


async def serve_exporter(config: ExporterConfig) -> None:
    """Run the exporter until cancelled (``ambient waypoint run`` cancels it on SIGTERM)."""
    exporter = Exporter(config)
    await exporter.start()
    try:
        await asyncio.Event().wait()
    finally:
        await exporter.stop()
