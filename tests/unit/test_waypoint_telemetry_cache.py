"""The exporter's label cache: the same metrics as resolving every entry, bounded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.data.accesslog.v3.accesslog_pb2 import AccessLogType, HTTPAccessLogEntry
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.wrappers_pb2 import StringValue
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from controlplane.envoy.hbone import PEER_BAGGAGE_KEY, PEER_PRINCIPAL_KEY
from waypoint.telemetry import AccessLogSink
from waypoint.telemetry_entry import is_final, is_tunnel, label_key, record_from_entry
from waypoint.telemetry_labels import (
    LABEL_TAGS,
    Reporter,
    RequestRecord,
    WorkloadDirectory,
    WorkloadInfo,
    request_labels,
)
from waypoint.telemetry_metrics import RequestMetrics

FRONTEND = WorkloadInfo("frontend", "demo", "frontend", "v1", "frontend", "10.244.1.5")
BACKEND_V1 = WorkloadInfo("backend-v1", "demo", "backend", "v1", "backend", "10.244.2.7")
BACKEND_V6 = WorkloadInfo("backend-v2", "demo", "backend", "v2", "backend", "fd00::8")
DIRECTORY = WorkloadDirectory.of([FRONTEND, BACKEND_V1, BACKEND_V6])
FRONTEND_ID = "spiffe://cluster.local/ns/demo/sa/frontend"
OTHER_ID = "spiffe://cluster.local/ns/other/sa/x"
BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"
"""Shared by backend-v1 and backend-v2: the baggage decides which one called."""
BAGGAGES = (
    "k8s.namespace.name=demo,k8s.deployment.name=backend-v1",
    "k8s.namespace.name=demo,k8s.deployment.name=backend-v2,service.version=v2",
    "k8s.namespace.name=other,k8s.deployment.name=x",
)

_ADDRESS = st.one_of(
    st.none(),
    st.tuples(
        st.just("socket"),
        st.sampled_from(["10.244.1.5", "10.244.2.7", "fd00::8", "10.9.9.9", ""]),
        st.sampled_from([0, 8080, 41000, 41001]),
    ),
    st.tuples(
        st.just("internal"), st.sampled_from(["10.244.2.7:8080", "[fd00::8]:80", "x"]), st.just(0)
    ),
)
_ENTRY = st.fixed_dictionaries(
    {
        "cluster": st.sampled_from(
            ["outbound|80|v1|backend.demo.svc.cluster.local", "outbound|80||b.o.svc.c", "x", ""]
        ),
        "upstream": _ADDRESS,
        "downstream": _ADDRESS,
        "principal": st.sampled_from([None, FRONTEND_ID, BACKEND_ID, OTHER_ID, "not-spiffe"]),
        # the CONNECT's baggage names the source when the identity alone cannot
        "baggage": st.sampled_from([None, "-", *BAGGAGES]),
        "code": st.sampled_from([0, 200, 503]),
        "flags": st.lists(st.sampled_from(["upstream_overflow", "no_route_found"]), max_size=2),
        "grpc": st.sampled_from([None, ("trailers", "0"), ("headers", "14")]),
        "content_type": st.sampled_from(["", "text/plain", "application/grpc+proto"]),
        "tags": st.dictionaries(
            st.sampled_from([*LABEL_TAGS, "proxy_kind", "other"]),
            st.sampled_from(["", "v1", "10.244.2.7:8080", "backend.demo.svc.cluster.local"]),
            max_size=3,
        ),
        "type": st.sampled_from(
            [AccessLogType.DownstreamEnd, AccessLogType.UpstreamEnd, AccessLogType.NotSet]
        ),
        "ms": st.integers(0, 5000),
        "attempts": st.integers(0, 3),
        "bytes": st.integers(0, 10_000),
    }
)


def _address(target: Any, spec: tuple[str, str, int] | None) -> None:
    if spec is None:
        return
    kind, address, port = spec
    if kind == "socket":
        target.socket_address.address = address
        target.socket_address.port_value = port
    else:
        target.envoy_internal_address.server_listener_name = "connect_originate"
        target.envoy_internal_address.endpoint_id = address


def _entry(spec: dict[str, Any]) -> HTTPAccessLogEntry:
    entry = HTTPAccessLogEntry()
    common = entry.common_properties
    common.upstream_cluster = spec["cluster"]
    _address(common.upstream_remote_address, spec["upstream"])
    _address(common.downstream_remote_address, spec["downstream"])
    if spec["principal"] is not None:
        common.filter_state_objects[PEER_PRINCIPAL_KEY].Pack(StringValue(value=spec["principal"]))
    if spec.get("baggage") is not None:
        common.filter_state_objects[PEER_BAGGAGE_KEY].Pack(StringValue(value=spec["baggage"]))
    common.duration.FromMilliseconds(spec["ms"])
    common.upstream_request_attempt_count = spec["attempts"]
    common.access_log_type = spec["type"]
    common.custom_tags.update(spec["tags"])
    for flag in spec["flags"]:
        setattr(common.response_flags, flag, True)
    if spec["grpc"] is not None:
        where, status = spec["grpc"]
        response = entry.response
        (response.response_trailers if where == "trailers" else response.response_headers)[
            "grpc-status"
        ] = status
    if spec["content_type"]:
        entry.request.request_headers["content-type"] = spec["content_type"]
    entry.request.request_headers["x-request-id"] = str(id(spec))
    entry.request.request_headers_bytes = spec["bytes"]
    entry.response.response_code.value = spec["code"]
    entry.response.response_body_bytes = spec["bytes"] // 2
    return entry


def _exposition(registry: CollectorRegistry) -> bytes:
    """The exposition without the ``_created`` timestamps (the two registries differ there)."""
    lines = generate_latest(registry).splitlines(keepends=True)
    return b"".join(line for line in lines if b"_created" not in line)


def _message(entries: Sequence[HTTPAccessLogEntry]) -> als_pb2.StreamAccessLogsMessage:
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(entries)
    return message


def _reference(entries: Sequence[HTTPAccessLogEntry], reporter: Reporter) -> bytes:
    """Every entry resolved from scratch, as the exporter did before the cache."""
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    for entry in entries:
        if is_final(entry) and not is_tunnel(entry):
            record = record_from_entry(entry)
            metrics.record(record, request_labels(record, DIRECTORY, reporter))
    return _exposition(registry)


def _cached(
    entries: Sequence[HTTPAccessLogEntry], reporter: Reporter, cache_size: int
) -> tuple[bytes, AccessLogSink]:
    registry = CollectorRegistry()
    sink = AccessLogSink(RequestMetrics(registry), DIRECTORY, reporter, cache_size=cache_size)
    for start in range(0, len(entries), 3):
        sink.handle(_message(entries[start : start + 3]))
    return _exposition(registry), sink


@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(_ENTRY, min_size=1, max_size=12),
    gateway=st.booleans(),
    cache_size=st.sampled_from([1, 3, 4096]),
)
def test_cached_labels_are_the_resolved_ones(
    specs: list[dict[str, Any]], gateway: bool, cache_size: int
) -> None:
    """Any stream, any reporter, any cache size (evicting or not): the exposition is the
    one of resolving every entry from scratch, and the cache stays within its size."""
    reporter = Reporter.for_proxy("gateway", FRONTEND) if gateway else Reporter()
    entries = [_entry(spec) for spec in specs]
    body, sink = _cached(entries, reporter, cache_size)
    assert body == _reference(entries, reporter)
    assert sink.cached <= cache_size


def test_equal_keys_for_requests_that_differ_only_in_amounts() -> None:
    spec: dict[str, Any] = {
        "cluster": "outbound|80|v1|backend.demo.svc.cluster.local",
        "upstream": ("internal", "10.244.2.7:8080", 0),
        "downstream": ("socket", "10.244.1.5", 41000),
        "principal": FRONTEND_ID,
        "code": 200,
        "flags": [],
        "grpc": None,
        "content_type": "text/plain",
        "tags": {"destination_subset": "v1", "proxy_kind": "waypoint"},
        "type": AccessLogType.DownstreamEnd,
        "ms": 3,
        "attempts": 1,
        "bytes": 10,
    }
    other = {**spec, "downstream": ("socket", "10.244.1.5", 41001), "ms": 9, "bytes": 99}
    assert label_key(_entry(spec)) == label_key(_entry(other))
    assert label_key(_entry(spec)) != label_key(_entry({**spec, "code": 503}))
    assert label_key(_entry(spec)) != label_key(_entry({**spec, "tags": {}}))
    # A shared identity: only the baggage tells the callers apart, so it is in the key.
    v1, v2 = (
        _entry({**spec, "principal": BACKEND_ID, "downstream": None, "baggage": baggage})
        for baggage in BAGGAGES[:2]
    )
    assert label_key(v1) != label_key(v2)
    assert _labels(v1, Reporter())["source_workload"] == "backend-v1"
    assert _labels(v2, Reporter())["source_workload"] == "backend-v2"


def test_cache_is_bounded_and_renewed_with_the_directory() -> None:
    registry = CollectorRegistry()
    sink = AccessLogSink(RequestMetrics(registry), DIRECTORY, Reporter(), cache_size=8)
    base: dict[str, Any] = {
        "cluster": "x",
        "upstream": ("socket", "10.244.2.7", 8080),
        "downstream": None,
        "principal": None,
        "flags": [],
        "grpc": None,
        "content_type": "",
        "tags": {},
        "type": AccessLogType.DownstreamEnd,
        "ms": 1,
        "attempts": 1,
        "bytes": 1,
    }
    sink.handle(_message([_entry({**base, "code": code}) for code in range(100, 200)]))
    assert sink.cached == 8 and sink.entries == 100
    sink.view = (WorkloadDirectory(), Reporter())
    assert sink.cached == 0
    sink.handle(_message([_entry({**base, "code": 200})]))
    body = generate_latest(registry).decode()
    assert 'destination_workload="backend-v1"' in body  # resolved under the old directory
    assert 'destination_workload="unknown"' in body  # and under the new one


@settings(max_examples=30, deadline=None)
@given(
    tags=st.dictionaries(st.sampled_from(LABEL_TAGS), st.sampled_from(["", "a", "10.244.2.7"])),
    extra=st.dictionaries(st.text(max_size=8).filter(lambda t: t not in LABEL_TAGS), st.text()),
)
def test_labels_read_only_the_label_tags(tags: dict[str, str], extra: dict[str, str]) -> None:
    """The cache keys on :data:`LABEL_TAGS` alone: no other tag may change a label."""
    record = RequestRecord(upstream_cluster="outbound|80|v1|b.d.svc.cluster.local", tags=tags)
    widened = RequestRecord(
        upstream_cluster="outbound|80|v1|b.d.svc.cluster.local", tags={**extra, **tags}
    )
    assert request_labels(record, DIRECTORY) == request_labels(widened, DIRECTORY)


def _labels(entry: HTTPAccessLogEntry, reporter: Reporter) -> dict[str, str]:
    return request_labels(record_from_entry(entry), DIRECTORY, reporter)


_LABEL_FIELDS = ("cluster", "upstream", "downstream", "principal", "code", "flags")
_LABEL_FIELDS_MORE = ("grpc", "content_type", "tags", "baggage")


@settings(max_examples=100, deadline=None)
@given(
    spec=_ENTRY,
    other=_ENTRY,
    fields=st.sets(st.sampled_from(_LABEL_FIELDS + _LABEL_FIELDS_MORE), min_size=1, max_size=2),
    gateway=st.booleans(),
)
def test_equal_keys_mean_equal_labels(
    spec: dict[str, Any], other: dict[str, Any], fields: set[str], gateway: bool
) -> None:
    """Two entries differing in one or two fields: when their keys are equal, so are their
    labels (the cache may serve one's labels for the other)."""
    reporter = Reporter.for_proxy("gateway", FRONTEND) if gateway else Reporter()
    first = _entry(spec)
    second = _entry({**spec, **{name: other[name] for name in fields}})
    if label_key(first) == label_key(second):
        assert _labels(first, reporter) == _labels(second, reporter)


_BASE: dict[str, Any] = {
    "cluster": "outbound|80|v1|backend.demo.svc.cluster.local",
    "upstream": ("socket", "10.244.2.7", 8080),
    "downstream": ("socket", "10.244.1.5", 41000),
    "principal": None,
    "code": 200,
    "flags": [],
    "grpc": None,
    "content_type": "",
    "tags": {},
    "type": AccessLogType.DownstreamEnd,
    "ms": 1,
    "attempts": 1,
    "bytes": 1,
}
_ALTERNATIVES: dict[str, list[Any]] = {
    "cluster": ["x", "outbound|80||b.o.svc.c", ""],
    "upstream": [
        None,
        ("socket", "10.9.9.9", 8080),
        ("socket", "fd00::8", 80),
        ("internal", "10.244.2.7:8080", 0),
        ("internal", "[fd00::8]:80", 0),
    ],
    "downstream": [None, ("socket", "10.9.9.9", 1), ("internal", "10.244.1.5:1", 0)],
    "principal": [FRONTEND_ID, OTHER_ID, "not-spiffe"],
    "code": [0, 503],
    "flags": [["upstream_overflow"], ["no_route_found", "upstream_overflow"]],
    "grpc": [("trailers", "0"), ("headers", "14")],
    "content_type": ["application/grpc", "text/plain"],
    "tags": [{name: "10.244.2.8:80"} for name in LABEL_TAGS],
}


def test_every_label_field_change_shows_in_the_key() -> None:
    """Each field the labels read, changed alone (from a base with and without a known
    client): a change of labels is a change of key."""
    for base in (_BASE, {**_BASE, "downstream": None, "upstream": None}):
        for gateway in (False, True):
            reporter = Reporter.for_proxy("gateway", FRONTEND) if gateway else Reporter()
            first = _entry(base)
            for name, values in _ALTERNATIVES.items():
                for value in values:
                    second = _entry({**base, name: value})
                    if _labels(first, reporter) != _labels(second, reporter):
                        assert label_key(first) != label_key(second), (name, value)
