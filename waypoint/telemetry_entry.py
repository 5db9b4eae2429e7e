"""The gRPC edge: Envoy's ``HTTPAccessLogEntry`` into a :class:`RequestRecord`.

The only module of the exporter that reads protobuf; past it, records are plain
frozen dataclasses.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3.address_pb2 import Address
from envoy.config.core.v3.base_pb2 import RequestMethod
from envoy.data.accesslog.v3.accesslog_pb2 import AccessLogType, HTTPAccessLogEntry, ResponseFlags
from google.protobuf.wrappers_pb2 import StringValue

from controlplane.envoy.hbone import PEER_BAGGAGE_KEY, PEER_PRINCIPAL_KEY
from waypoint.telemetry_labels import LABEL_TAGS, RequestRecord

RESPONSE_FLAGS = (
    ("failed_local_healthcheck", "LH"),
    ("no_healthy_upstream", "UH"),
    ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"),
    ("upstream_remote_reset", "UR"),
    ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"),
    ("upstream_overflow", "UO"),
    ("no_route_found", "NR"),
    ("delay_injected", "DI"),
    ("fault_injected", "FI"),
    ("rate_limited", "RL"),
    ("rate_limit_service_error", "RLSE"),
    ("downstream_connection_termination", "DC"),
    ("upstream_retry_limit_exceeded", "URX"),
    ("stream_idle_timeout", "SI"),
    ("invalid_envoy_request_headers", "IH"),
    ("downstream_protocol_error", "DPE"),
    ("upstream_max_stream_duration_reached", "UMSDR"),
    ("response_from_cache_filter", "RFCF"),
    ("no_filter_config_found", "NFCF"),
    ("duration_timeout", "DT"),
    ("upstream_protocol_error", "UPE"),
    ("no_cluster_found", "NC"),
    ("overload_manager", "OM"),
    ("dns_resolution_failure", "DF"),
    ("downstream_remote_reset", "DR"),
)
"""``ResponseFlags`` fields and Envoy's short names for them (``%RESPONSE_FLAGS%``)."""

_UPSTREAM_TYPES = frozenset(
    {
        int(AccessLogType.UpstreamEnd),
        int(AccessLogType.UpstreamPoolReady),
        int(AccessLogType.UpstreamPeriodic),
    }
)


def response_flags(flags: ResponseFlags) -> tuple[str, ...]:
    """The short names of the flags set, in Envoy's order."""
    short = [name for field, name in RESPONSE_FLAGS if getattr(flags, field)]
    if flags.HasField("unauthorized_details"):
        short.append("UAEX")
    return tuple(short)


def address_text(address: Address) -> str:
    """``ip:port`` of a socket address, the endpoint id of an internal one, else empty."""
    if address.HasField("socket_address"):
        socket = address.socket_address
        host = f"[{socket.address}]" if ":" in socket.address else socket.address
        return f"{host}:{socket.port_value}" if socket.port_value else str(socket.address)
    if address.HasField("envoy_internal_address"):
        return str(address.envoy_internal_address.endpoint_id)
    return ""


def _header(headers: dict[str, str], name: str) -> str:
    return headers.get(name, "")


def _ms(seconds: int, nanos: int) -> float:
    return seconds * 1000.0 + nanos / 1_000_000.0


def is_upstream_attempt(entry: HTTPAccessLogEntry) -> bool:
    """Whether the entry logs one upstream attempt (the router's ``upstream_log``), not
    a whole downstream request."""
    return entry.common_properties.access_log_type in _UPSTREAM_TYPES


_NOT_FINAL_TYPES = frozenset(
    {
        int(AccessLogType.DownstreamStart),
        int(AccessLogType.DownstreamPeriodic),
        int(AccessLogType.UpstreamPoolReady),
        int(AccessLogType.UpstreamPeriodic),
    }
)
_CONNECT = int(RequestMethod.CONNECT)


def is_final(entry: HTTPAccessLogEntry) -> bool:
    """Whether the entry is a request's last word (not an intermediate/periodic one)."""
    common = entry.common_properties
    return not common.intermediate_log_entry and common.access_log_type not in _NOT_FINAL_TYPES


def is_tunnel(entry: HTTPAccessLogEntry) -> bool:
    """Whether the entry logs an HBONE ``CONNECT`` (the outer tunnel, not a request: the
    requests inside it are logged by the inner connection manager)."""
    return bool(entry.request.request_method == _CONNECT)


def record_from_entry(entry: HTTPAccessLogEntry) -> RequestRecord:
    """The record of one HTTP access-log entry."""
    common = entry.common_properties
    request, response = entry.request, entry.response
    principal = _state_string(common.filter_state_objects.get(PEER_PRINCIPAL_KEY))
    baggage = _state_string(common.filter_state_objects.get(PEER_BAGGAGE_KEY))
    if common.HasField("duration"):
        duration = _ms(common.duration.seconds, common.duration.nanos)
    else:
        last = common.time_to_last_downstream_tx_byte
        duration = _ms(last.seconds, last.nanos)
    grpc_status = _header(dict(response.response_trailers), "grpc-status") or _header(
        dict(response.response_headers), "grpc-status"
    )
    attempts = common.upstream_request_attempt_count
    return RequestRecord(
        upstream_cluster=common.upstream_cluster,
        upstream_host=address_text(common.upstream_remote_address),
        downstream_ip=address_text(common.downstream_remote_address),
        peer_principal=principal,
        peer_baggage="" if baggage == "-" else baggage,  # Envoy logs a missing header as -
        response_code=response.response_code.value,
        response_flags=response_flags(common.response_flags),
        grpc_status=grpc_status,
        content_type=_header(dict(request.request_headers), "content-type"),
        request_bytes=request.request_headers_bytes + request.request_body_bytes,
        response_bytes=response.response_headers_bytes + response.response_body_bytes,
        duration_ms=duration,
        attempts=attempts,
        upstream_attempt=is_upstream_attempt(entry),
        tags={key: value for key, value in common.custom_tags.items() if value},
    )


LabelKey = tuple[object, ...]
"""What :func:`waypoint.telemetry_labels.request_labels` reads of an entry, cheap to
take: entries with equal keys get equal labels (under one directory and reporter)."""


def label_key(entry: HTTPAccessLogEntry) -> LabelKey:
    """The label key of an entry: every field :func:`record_from_entry` turns into a
    label-bearing part of the record, raw (no unpacking, no per-entry strings), with
    what varies per request but not the labels (ports, sizes, times) left out."""
    common = entry.common_properties
    upstream, downstream = common.upstream_remote_address, common.downstream_remote_address
    up_socket, down_socket = upstream.socket_address, downstream.socket_address
    state = common.filter_state_objects.get(PEER_PRINCIPAL_KEY)
    baggage = common.filter_state_objects.get(PEER_BAGGAGE_KEY)
    response, tags = entry.response, common.custom_tags
    return (
        common.upstream_cluster,
        # the labels read only the host of ``ip:port`` (host_ip), so only whether a
        # port was there matters, not which
        up_socket.address,
        up_socket.port_value != 0,
        upstream.envoy_internal_address.endpoint_id,
        down_socket.address,
        down_socket.port_value != 0,
        downstream.envoy_internal_address.endpoint_id,
        None if state is None else (state.type_url, state.value),
        None if baggage is None else baggage.value,
        response.response_code.value,
        common.response_flags.SerializeToString(deterministic=True),
        response.response_trailers.get("grpc-status", ""),
        response.response_headers.get("grpc-status", ""),
        entry.request.request_headers.get("content-type", "").startswith("application/grpc"),
        tuple([tags.get(name, "") for name in LABEL_TAGS]),
    )


def _state_string(state: Any) -> str:
    """A filter-state object logged as ``StringValue`` (``envoy.string``), else ``""``."""
    if state is None or not state.Is(StringValue.DESCRIPTOR):
        return ""
    value = StringValue()
    state.Unpack(value)
    return str(value.value)


def amounts(entry: HTTPAccessLogEntry) -> tuple[bool, float, int, int, int]:
    """What an entry adds to its series: (upstream attempt, duration ms, request bytes,
    response bytes, attempts), as :func:`record_from_entry` has them."""
    common = entry.common_properties
    request, response = entry.request, entry.response
    if common.HasField("duration"):
        duration = common.duration
    else:
        duration = common.time_to_last_downstream_tx_byte
    return (
        common.access_log_type in _UPSTREAM_TYPES,
        duration.seconds * 1000.0 + duration.nanos / 1_000_000.0,
        request.request_headers_bytes + request.request_body_bytes,
        response.response_headers_bytes + response.response_body_bytes,
        common.upstream_request_attempt_count,
    )
