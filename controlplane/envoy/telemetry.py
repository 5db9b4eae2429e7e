"""Telemetry pieces every waypoint and gateway HTTP connection manager carries.

Pure builders of ``xds-protos`` messages, attached by the Envoy translation
(``proxy.py``, ``ingress.py``):

- :func:`access_log_config`: an ``envoy.access_loggers.http_grpc`` access log that
  streams one entry per request to the exporter beside Envoy
  (``waypoint/telemetry.py``) through the static cluster :data:`TELEMETRY_CLUSTER`.
  Each entry carries the request headers the exporter labels with, the peer principal
  (filter state under :data:`~controlplane.envoy.hbone.PEER_PRINCIPAL_KEY`), and,
  as custom tags, the upstream cluster's and host's metadata (:func:`cluster_metadata`,
  :func:`endpoint_metadata` and the HBONE tunnel target the endpoints carry), so the
  exporter can name the destination service, subset and workload.
- :func:`tracing_config`: the Zipkin tracer (JSON v2, B3 and W3C ``traceparent``) to
  the collector behind the static cluster :data:`TRACING_CLUSTER`.
- :func:`static_clusters`: those two clusters, for the bootstrap (they must exist
  before the first listener arrives over xDS).

Nothing here opens a socket; ``envoy --mode validate`` checks the output in
``tests/unit/test_waypoint_telemetry_config.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Protocol

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Metadata
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.core.v3.protocol_pb2 import Http2ProtocolOptions
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.trace.v3.http_tracer_pb2 import Tracing as TracingProvider
from envoy.config.trace.v3.zipkin_pb2 import ZipkinConfig
from envoy.extensions.access_loggers.grpc.v3.als_pb2 import (
    CommonGrpcAccessLogConfig,
    HttpGrpcAccessLogConfig,
)
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.metadata.v3.metadata_pb2 import MetadataKey, MetadataKind
from envoy.type.tracing.v3.custom_tag_pb2 import CustomTag
from envoy.type.v3.percent_pb2 import Percent
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from controlplane.envoy import hbone

TELEMETRY_CLUSTER = "ambient_telemetry"
"""Static cluster: the access-log exporter on 127.0.0.1 (gRPC, h2)."""
TRACING_CLUSTER = "ambient_tracing"
"""Static cluster: the Zipkin-compatible span collector."""
TELEMETRY_PORT = 15030
"""Default port of the exporter's access-log service on 127.0.0.1."""
TRACES_PATH = "/api/v2/spans"
"""Where Zipkin collectors take JSON v2 spans."""

TRACING_RUNTIME = {"tracing.zipkin.min_flush_spans": 1}
"""Runtime keys for the bootstrap's static ``layered_runtime`` layer: send each span at
once (Envoy's default batches 5 spans or waits 5 s, too slow for a lab's checks)."""

ACCESS_LOGGER = "envoy.access_loggers.http_grpc"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

METADATA_NAMESPACE = "ambient.telemetry"
"""Filter-metadata namespace on clusters and endpoints the exporter reads."""

LOGGED_REQUEST_HEADERS = ("content-type", "x-request-id", "traceparent", "x-b3-traceid")
"""Request headers in each entry: ``content-type`` tells gRPC from HTTP; the others tie
an entry to its trace."""
LOGGED_RESPONSE_HEADERS = ("grpc-status",)
"""Response headers (a trailers-only gRPC answer carries its status here)."""
LOGGED_RESPONSE_TRAILERS = ("grpc-status",)
"""Response trailers (where gRPC puts its status)."""
FILTER_STATE_TO_LOG = (hbone.PEER_PRINCIPAL_KEY, hbone.PEER_BAGGAGE_KEY)
"""Filter state objects each entry carries: the HBONE client's SPIFFE URI and the
CONNECT's baggage (which workload called, as its ztunnel says)."""

# Custom tags: name -> (metadata kind, namespace, key). Names are the exporter's contract.
TAG_SERVICE = "destination_service"
TAG_SERVICE_NAME = "destination_service_name"
TAG_SERVICE_NAMESPACE = "destination_service_namespace"
TAG_SUBSET = "destination_subset"
TAG_WORKLOAD = "destination_workload"
TAG_WORKLOAD_NAMESPACE = "destination_workload_namespace"
TAG_APP = "destination_app"
TAG_VERSION = "destination_version"
TAG_PRINCIPAL = "destination_principal"
TAG_TUNNEL_TARGET = "tunnel_destination"
TAG_REPORTER_KIND = "proxy_kind"
TAG_REPORTER = "proxy_name"

_CLUSTER_TAGS = {
    TAG_SERVICE: "service",
    TAG_SERVICE_NAME: "service_name",
    TAG_SERVICE_NAMESPACE: "service_namespace",
    TAG_SUBSET: "subset",
}
_HOST_TAGS = {
    TAG_WORKLOAD: "workload",
    TAG_WORKLOAD_NAMESPACE: "workload_namespace",
    TAG_APP: "app",
    TAG_VERSION: "version",
    TAG_PRINCIPAL: "principal",
}

ISTIO_TRACE_TAGS = ("istio.canonical_service", "istio.namespace", "istio.mesh_id")


class TelemetryProxy(Protocol):
    """What the builders need of a proxy (``controlplane.envoy.proxy.EnvoyProxy`` fits)."""

    @property
    def namespace(self) -> str: ...

    @property
    def gateway_name(self) -> str: ...

    @property
    def kind(self) -> str: ...


def trace_service_name(proxy: TelemetryProxy) -> str:
    """The name Envoy's spans carry (Zipkin takes it from the bootstrap's
    ``node.cluster``): ``<gateway>.<namespace>``, as Istio names its proxies."""
    return f"{proxy.gateway_name}.{proxy.namespace}"


def _metadata_tag(tag: str, kind: MetadataKind, namespace: str, key: str) -> CustomTag:
    return CustomTag(
        tag=tag,
        metadata=CustomTag.Metadata(
            kind=kind,
            metadata_key=MetadataKey(key=namespace, path=[MetadataKey.PathSegment(key=key)]),
        ),
    )


def access_log_custom_tags(proxy: TelemetryProxy) -> list[CustomTag]:
    """The custom tags each entry carries: who reports, the upstream cluster's
    service/subset and the upstream host's workload (from :func:`cluster_metadata`,
    :func:`endpoint_metadata`) and the HBONE target ``podIP:port`` of the endpoint."""
    cluster_kind = MetadataKind(cluster=MetadataKind.Cluster())
    host_kind = MetadataKind(host=MetadataKind.Host())
    tags = [
        CustomTag(tag=TAG_REPORTER_KIND, literal=CustomTag.Literal(value=str(proxy.kind))),
        CustomTag(tag=TAG_REPORTER, literal=CustomTag.Literal(value=trace_service_name(proxy))),
    ]
    tags += [
        _metadata_tag(tag, cluster_kind, METADATA_NAMESPACE, key)
        for tag, key in _CLUSTER_TAGS.items()
    ]
    tags += [
        _metadata_tag(tag, host_kind, METADATA_NAMESPACE, key) for tag, key in _HOST_TAGS.items()
    ]
    tags.append(
        _metadata_tag(TAG_TUNNEL_TARGET, host_kind, hbone.TUNNEL_METADATA, hbone.TUNNEL_DESTINATION)
    )
    return tags


ACCESS_LOG_BUFFER_BYTES = 64 * 1024
"""Envoy's access-log buffer per worker (its default: 16 KiB, ~20 of our entries): a
busy waypoint sends fewer, larger messages, and each message costs the exporter about
as much as a few entries do; the 100 ms flush still bounds how late a count is."""


def grpc_access_log(proxy: TelemetryProxy) -> HttpGrpcAccessLogConfig:
    """The ``http_grpc`` logger's own config (buffered briefly: 100 ms or
    :data:`ACCESS_LOG_BUFFER_BYTES`)."""
    return HttpGrpcAccessLogConfig(
        common_config=CommonGrpcAccessLogConfig(
            log_name=f"{proxy.kind}/{proxy.namespace}/{proxy.gateway_name}",
            grpc_service=GrpcService(
                envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=TELEMETRY_CLUSTER)
            ),
            transport_api_version=ApiVersion.V3,
            buffer_flush_interval=Duration(nanos=100_000_000),
            buffer_size_bytes=UInt32Value(value=ACCESS_LOG_BUFFER_BYTES),
            filter_state_objects_to_log=list(FILTER_STATE_TO_LOG),
            custom_tags=access_log_custom_tags(proxy),
        ),
        additional_request_headers_to_log=list(LOGGED_REQUEST_HEADERS),
        additional_response_headers_to_log=list(LOGGED_RESPONSE_HEADERS),
        additional_response_trailers_to_log=list(LOGGED_RESPONSE_TRAILERS),
    )


def access_log_config(proxy: TelemetryProxy) -> list[AccessLog]:
    """``HttpConnectionManager.access_log`` for every HCM of a waypoint or gateway
    (also usable as the router's ``upstream_log``)."""
    access_log = AccessLog(name=ACCESS_LOGGER)
    access_log.typed_config.Pack(grpc_access_log(proxy))
    return [access_log]


def tracing_config(
    proxy: TelemetryProxy, *, sampling_percent: float = 100.0
) -> HttpConnectionManager.Tracing:
    """``HttpConnectionManager.tracing``: Zipkin JSON v2 to :data:`TRACING_CLUSTER`,
    one span per hop side (``shared_span_context: false``, client spans for upstream
    requests), B3 and W3C ``traceparent`` extracted and injected, 128-bit trace ids.

    The spans' service name is the bootstrap's ``node.cluster``: set it to
    :func:`trace_service_name`."""
    zipkin = ZipkinConfig(
        collector_cluster=TRACING_CLUSTER,
        collector_endpoint=TRACES_PATH,
        collector_endpoint_version=ZipkinConfig.HTTP_JSON,
        trace_id_128bit=True,
        shared_span_context=BoolValue(value=False),
        trace_context_option=ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION,
    )
    provider = TracingProvider.Http(name=ZIPKIN_TRACER)
    provider.typed_config.Pack(zipkin)
    tags = [
        CustomTag(
            tag="istio.canonical_service", literal=CustomTag.Literal(value=proxy.gateway_name)
        ),
        CustomTag(tag="istio.namespace", literal=CustomTag.Literal(value=proxy.namespace)),
        CustomTag(tag="istio.proxy_kind", literal=CustomTag.Literal(value=str(proxy.kind))),
    ]
    return HttpConnectionManager.Tracing(
        random_sampling=Percent(value=sampling_percent),
        provider=provider,
        custom_tags=tags,
        spawn_upstream_span=BoolValue(value=True),
    )


def _static_cluster(name: str, host: str, port: int, *, http2: bool) -> Cluster:
    address = Address(socket_address=SocketAddress(address=host, port_value=port))
    cluster = Cluster(
        name=name,
        type=Cluster.STATIC if is_ip(host) else Cluster.STRICT_DNS,
        connect_timeout=Duration(seconds=1),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=address))])
            ],
        ),
    )
    if http2:
        options = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions()
            )
        )
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options)
    return cluster


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (a STATIC cluster) rather than a name (STRICT_DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def static_clusters(
    *,
    telemetry_port: int = TELEMETRY_PORT,
    collector: tuple[str, int] | None = None,
) -> list[Cluster]:
    """The bootstrap's static clusters: :data:`TELEMETRY_CLUSTER` (127.0.0.1:
    ``telemetry_port``, h2) and, when a ``collector`` (host, port) is given,
    :data:`TRACING_CLUSTER` (HTTP/1.1). Without a collector, leave
    :func:`tracing_config` out of the HCMs (Envoy refuses a tracer whose cluster is
    missing)."""
    clusters = [_static_cluster(TELEMETRY_CLUSTER, "127.0.0.1", telemetry_port, http2=True)]
    if collector is not None:
        host, port = collector
        clusters.append(_static_cluster(TRACING_CLUSTER, host, port, http2=False))
    return clusters


def cluster_metadata(
    *, service: str, service_name: str, service_namespace: str, subset: str = ""
) -> Metadata:
    """Metadata for an ``outbound|port|subset|fqdn`` cluster (``Cluster.metadata``):
    what the access log reports as the destination service and subset."""
    return _metadata(
        {
            "service": service,
            "service_name": service_name,
            "service_namespace": service_namespace,
            "subset": subset,
        }
    )


def endpoint_metadata(
    *, workload: str, workload_namespace: str, app: str = "", version: str = "", principal: str = ""
) -> Metadata:
    """Metadata for one endpoint (``LbEndpoint.metadata``; merge it with the tunnel
    metadata of ``hbone``): the destination workload the access log reports."""
    return _metadata(
        {
            "workload": workload,
            "workload_namespace": workload_namespace,
            "app": app,
            "version": version,
            "principal": principal,
        }
    )


def _metadata(fields: Mapping[str, str]) -> Metadata:
    values = struct_pb2.Struct()
    values.update({key: value for key, value in fields.items() if value})
    metadata = Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(values)
    return metadata
