"""A DestinationRule's traffic policy as Envoy ``Cluster`` resources.

One cluster per service port and subset, of type EDS (endpoints are served apart,
selected by the subset's labels), with Istio's defaults where the policy is silent:
least-request balancing, a 10 s connect timeout, and circuit-breaker thresholds at
their maximum so that only what the user sets limits traffic.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import config_source_pb2, protocol_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from controlplane.envoy import hbone
from controlplane.envoy.spec import (
    ClientTls,
    ConnectionPool,
    LoadBalancer,
    OutlierDetection,
    SimpleLb,
    TlsMode,
    TrafficPolicy,
)

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Istio's ``connectTimeout`` when the policy sets none (seconds)."""
UNLIMITED = 2**32 - 1
"""Istio's circuit-breaker default: no limit."""
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_SIMPLE = {
    SimpleLb.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    SimpleLb.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLb.RANDOM: cluster_pb2.Cluster.RANDOM,
}


def duration(seconds: float) -> Any:
    """A ``google.protobuf.Duration`` of ``seconds``."""
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def packed(message: Any) -> Any:
    """``message`` in a ``google.protobuf.Any``."""
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


def _apply_lb(cluster: Any, lb: LoadBalancer | None) -> None:
    if lb is not None and lb.consistent_hash is not None:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
        if lb.consistent_hash.minimum_ring_size is not None:
            cluster.ring_hash_lb_config.minimum_ring_size.value = (
                lb.consistent_hash.minimum_ring_size
            )
        return
    simple = lb.simple if lb is not None and lb.simple is not None else SimpleLb.LEAST_REQUEST
    cluster.lb_policy = _SIMPLE[simple]


def _apply_pool(cluster: Any, pool: ConnectionPool | None) -> None:
    pool = pool or ConnectionPool()
    cluster.connect_timeout.CopyFrom(
        duration(DEFAULT_CONNECT_TIMEOUT if pool.connect_timeout is None else pool.connect_timeout)
    )

    def limit(value: int | None) -> Any:
        return wrappers_pb2.UInt32Value(value=UNLIMITED if value is None else value)

    cluster.circuit_breakers.CopyFrom(
        circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=limit(pool.max_connections),
                    max_pending_requests=limit(pool.http1_max_pending_requests),
                    max_requests=limit(pool.http2_max_requests),
                    max_retries=limit(pool.max_retries),
                    track_remaining=True,
                )
            ]
        )
    )
    if pool.max_requests_per_connection is None and pool.idle_timeout is None:
        return
    common = protocol_pb2.HttpProtocolOptions()
    if pool.max_requests_per_connection is not None:
        common.max_requests_per_connection.value = pool.max_requests_per_connection
    if pool.idle_timeout is not None:
        common.idle_timeout.CopyFrom(duration(pool.idle_timeout))
    options = http_protocol_options_pb2.HttpProtocolOptions(common_http_protocol_options=common)
    # The upstream speaks what the client spoke, as Istio's waypoints configure it.
    options.use_downstream_protocol_config.http_protocol_options.SetInParent()
    options.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(options))


def _apply_outlier(cluster: Any, od: OutlierDetection | None) -> None:
    if od is None:
        return
    out = outlier_detection_pb2.OutlierDetection()
    # Istio enforces exactly the checks the user sets and turns the rest off.
    if od.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = od.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.value = 100
    else:
        out.enforcing_consecutive_5xx.value = 0
    if od.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = od.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = 100
    else:
        out.enforcing_consecutive_gateway_failure.value = 0
    out.enforcing_success_rate.value = 0
    if od.interval is not None:
        out.interval.CopyFrom(duration(od.interval))
    if od.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration(od.base_ejection_time))
    if od.max_ejection_percent is not None:
        out.max_ejection_percent.value = od.max_ejection_percent
    cluster.outlier_detection.CopyFrom(out)


UPSTREAM_TLS = "envoy.transport_sockets.tls"
_SAN = common_pb2.SubjectAltNameMatcher


def _apply_tls(cluster: Any, tls: ClientTls | None) -> None:
    """``tls.mode: SIMPLE``: TLS to the application (inside HBONE, see :class:`ClientTls`)."""
    if tls is None or tls.mode is not TlsMode.SIMPLE:
        return
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    validation = context.common_tls_context.validation_context
    if tls.insecure_skip_verify:
        context.common_tls_context.ClearField("validation_context")
    else:
        if tls.ca_certificates:
            validation.trusted_ca.filename = tls.ca_certificates
        else:
            validation.system_root_certs.SetInParent()
        for san in tls.subject_alt_names:
            for kind in (
                common_pb2.SubjectAltNameMatcher.DNS,
                common_pb2.SubjectAltNameMatcher.URI,
            ):
                validation.match_typed_subject_alt_names.append(
                    common_pb2.SubjectAltNameMatcher(
                        san_type=kind, matcher=string_pb2.StringMatcher(exact=san)
                    )
                )
    cluster.transport_socket.name = UPSTREAM_TLS
    cluster.transport_socket.typed_config.CopyFrom(packed(context))


def through_hbone_with_tls(cluster: Any) -> Any:
    """``cluster`` tunnelled through HBONE (:func:`controlplane.envoy.hbone.through_hbone`),
    keeping a DestinationRule's ``SIMPLE`` TLS as the tunnel's inner transport socket:
    TLS to the application inside the mesh's mTLS. Returns a modified copy."""
    out = hbone.through_hbone(cluster)
    if cluster.transport_socket.name == UPSTREAM_TLS:
        inner = internal_upstream_pb2.InternalUpstreamTransport()
        out.transport_socket.typed_config.Unpack(inner)
        inner.transport_socket.CopyFrom(cluster.transport_socket)
        out.transport_socket.typed_config.Pack(inner)
    return out


def build_cluster(name: str, policy: TrafficPolicy | None) -> Any:
    """The EDS ``Cluster`` called ``name`` under ``policy`` (None: Istio's defaults)."""
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.service_name = name
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    policy = policy or TrafficPolicy()
    _apply_lb(cluster, policy.load_balancer)
    _apply_pool(cluster, policy.connection_pool)
    _apply_outlier(cluster, policy.outlier_detection)
    _apply_tls(cluster, policy.tls)
    return cluster
