"""The exporter's core: access-log entries to Istio's request labels and metric values."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import RequestMethod
from envoy.data.accesslog.v3.accesslog_pb2 import AccessLogType, HTTPAccessLogEntry
from google.protobuf.wrappers_pb2 import StringValue
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from controlplane.envoy.hbone import PEER_BAGGAGE_KEY, PEER_PRINCIPAL_KEY
from controlplane.model import ClusterState, FrozenMap, Pod
from waypoint.telemetry import directory_from_state
from waypoint.telemetry_entry import is_final, is_tunnel, record_from_entry
from waypoint.telemetry_labels import (
    LABEL_NAMES,
    ClusterName,
    Reporter,
    RequestRecord,
    WorkloadDirectory,
    WorkloadInfo,
    parse_cluster_name,
    parse_principal,
    request_labels,
)
from waypoint.telemetry_metrics import RequestMetrics, render

FRONTEND = WorkloadInfo("frontend", "demo", "frontend", "v1", "frontend", "10.244.1.5")
BACKEND_V1 = WorkloadInfo("backend-v1", "demo", "backend", "v1", "backend", "10.244.2.7")
BACKEND_V2 = WorkloadInfo("backend-v2", "demo", "backend", "v2", "backend", "10.244.2.8")
DIRECTORY = WorkloadDirectory.of([FRONTEND, BACKEND_V1, BACKEND_V2])
B_FQDN = "b.d.svc.cluster.local"
FRONTEND_ID = "spiffe://cluster.local/ns/demo/sa/frontend"
BACKEND_ID = "spiffe://cluster.local/ns/demo/sa/backend"
V1_CLUSTER = "outbound|80|v1|backend.demo.svc.cluster.local"


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (V1_CLUSTER, ClusterName(80, "v1", "backend.demo.svc.cluster.local")),
        ("outbound|8080||r.o.svc.cluster.local", ClusterName(8080, "", "r.o.svc.cluster.local")),
        ("inbound-vip|80|http/v2|b.d.svc.cluster.local", ClusterName(80, "v2", B_FQDN)),
        ("outbound|80|v1|", None),
        ("outbound|x|v1|a.b", None),
        ("connect_originate", None),
        ("", None),
    ],
)  # fmt: skip
def test_cluster_names(name: str, parsed: ClusterName | None) -> None:
    assert parse_cluster_name(name) == parsed


def test_cluster_name_parts() -> None:
    name = parse_cluster_name(V1_CLUSTER)
    assert name is not None
    assert (name.service_name, name.service_namespace) == ("backend", "demo")
    external = parse_cluster_name("outbound|443||api.example.com")
    assert external is not None and external.service_namespace == ""


@pytest.mark.parametrize(
    ("principal", "parsed"),
    [
        (FRONTEND_ID, ("cluster.local", "demo", "frontend")),
        ("spiffe://td/ns/a/sa/b/c", None),
        ("spiffe://td/ns//sa/b", None),
        ("td/ns/a/sa/b", None),
        ("", None),
    ],
)
def test_principals(principal: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_principal(principal) == parsed


def _labels(**record: Any) -> dict[str, str]:
    return request_labels(RequestRecord(**record), DIRECTORY)


LABEL_CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    (
        "known source by identity, destination by upstream pod IP",
        {
            "upstream_cluster": V1_CLUSTER,
            "upstream_host": "10.244.2.7:8080",
            "peer_principal": FRONTEND_ID,
            "response_code": 200,
        },
        {
            "reporter": "waypoint",
            "source_workload": "frontend",
            "source_workload_namespace": "demo",
            "source_principal": FRONTEND_ID,
            "source_app": "frontend",
            "source_version": "v1",
            "source_cluster": "Kubernetes",
            "destination_workload": "backend-v1",
            "destination_workload_namespace": "demo",
            "destination_principal": BACKEND_ID,
            "destination_app": "backend",
            "destination_version": "v1",
            "destination_service": "backend.demo.svc.cluster.local",
            "destination_service_name": "backend",
            "destination_service_namespace": "demo",
            "destination_cluster": "Kubernetes",
            "request_protocol": "http",
            "response_code": "200",
            "grpc_response_status": "",
            "response_flags": "-",
            "connection_security_policy": "mutual_tls",
        },
    ),
    (
        "HBONE tunnel target (endpoint metadata) names the pod behind an internal address",
        {
            "upstream_cluster": "outbound|80|v2|backend.demo.svc.cluster.local",
            "upstream_host": "connect_originate",
            "tags": {"tunnel_destination": "10.244.2.8:8080"},
            "response_code": 200,
        },
        {"destination_workload": "backend-v2", "destination_version": "v2"},
    ),
    (
        "endpoint and cluster metadata win over the directory",
        {
            "upstream_cluster": V1_CLUSTER,
            "upstream_host": "10.244.2.7:8080",
            "tags": {
                "destination_workload": "reviews-v3",
                "destination_version": "v3",
                "destination_service": "reviews.demo.svc.cluster.local",
                "destination_service_name": "reviews",
            },
            "response_code": 200,
        },
        {
            "destination_workload": "reviews-v3",
            "destination_version": "v3",
            "destination_app": "backend",
            "destination_service": "reviews.demo.svc.cluster.local",
            "destination_service_name": "reviews",
        },
    ),
    (
        "no upstream: no route (NR) and nothing known about the destination",
        {"response_code": 404, "response_flags": ("NR",), "peer_principal": FRONTEND_ID},
        {
            "destination_service": "unknown",
            "destination_workload": "unknown",
            "destination_cluster": "unknown",
            "response_flags": "NR",
            "response_code": "404",
        },
    ),
    (
        "overflow and retries exhausted: flags joined by commas; version from the subset",
        {
            "upstream_cluster": V1_CLUSTER,
            "response_code": 503,
            "response_flags": ("UO", "URX"),
        },
        {
            "response_flags": "UO,URX",
            "destination_version": "v1",
            "destination_workload": "unknown",
        },
    ),
    (
        "no verified peer: source unknown, security policy unknown",
        {"upstream_cluster": V1_CLUSTER, "response_code": 200, "downstream_ip": "10.244.1.5:4000"},
        {
            "source_principal": "unknown",
            "source_workload": "frontend",
            "connection_security_policy": "unknown",
        },
    ),
    (
        "the certificate beats the address: an IP of another identity is not believed",
        {
            "peer_principal": "spiffe://cluster.local/ns/other/sa/x",
            "downstream_ip": "10.244.1.5:4000",
        },
        {"source_workload": "unknown", "source_workload_namespace": "other"},
    ),
    (
        "identity shared by two workloads: source workload unknown",
        {"peer_principal": BACKEND_ID},
        {"source_workload": "unknown", "source_workload_namespace": "demo"},
    ),
    (
        "identity shared by two workloads: the CONNECT's baggage names which one",
        {
            "peer_principal": BACKEND_ID,
            "peer_baggage": "k8s.namespace.name=demo,k8s.deployment.name=backend-v2,"
            "service.name=backend,service.version=v2",
        },
        {
            "source_workload": "backend-v2",
            "source_version": "v2",
            "source_app": "backend",
            "source_principal": BACKEND_ID,
        },
    ),
    (
        "baggage naming a workload of another identity is not believed",
        {
            "peer_principal": BACKEND_ID,
            "peer_baggage": "k8s.namespace.name=demo,k8s.deployment.name=frontend",
        },
        {"source_workload": "unknown", "source_workload_namespace": "demo"},
    ),
    (
        "baggage of another namespace than the certificate's is not believed",
        {
            "peer_principal": "spiffe://cluster.local/ns/other/sa/x",
            "peer_baggage": "k8s.namespace.name=demo,k8s.deployment.name=backend-v1",
        },
        {"source_workload": "unknown", "source_workload_namespace": "other"},
    ),
    (
        "a workload the directory does not know yet: taken from baggage in its namespace",
        {
            "peer_principal": "spiffe://cluster.local/ns/shop/sa/cart",
            "peer_baggage": "k8s.namespace.name=shop,k8s.deployment.name=cart,service.version=v3",
        },
        {
            "source_workload": "cart",
            "source_workload_namespace": "shop",
            "source_app": "cart",
            "source_version": "v3",
        },
    ),
    (
        "baggage without a verified peer is ignored",
        {"peer_baggage": "k8s.namespace.name=demo,k8s.deployment.name=frontend"},
        {"source_workload": "unknown", "source_principal": "unknown"},
    ),
    (
        "gRPC: protocol and status",
        {
            "content_type": "application/grpc+proto",
            "grpc_status": "14",
            "response_code": 200,
        },
        {"request_protocol": "grpc", "grpc_response_status": "14"},
    ),
    (
        "reset before any response: code 0, downstream terminated",
        {"response_code": 0, "response_flags": ("DC",)},
        {"response_code": "0", "response_flags": "DC"},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "record", "expected"), LABEL_CASES, ids=[c[0] for c in LABEL_CASES]
)
def test_labels(case: str, record: dict[str, Any], expected: dict[str, str]) -> None:
    labels = _labels(**record)
    assert tuple(labels) == LABEL_NAMES
    assert {k: labels[k] for k in expected} == expected, case


def test_gateway_reports_as_the_source() -> None:
    gateway = WorkloadInfo(
        "istio-ingressgateway",
        "istio-system",
        "istio-ingressgateway",
        "latest",
        "istio-ingressgateway",
        "10.244.1.9",
    )
    reporter = Reporter.for_proxy("gateway", gateway)
    record = RequestRecord(
        upstream_cluster=V1_CLUSTER,
        upstream_host="10.244.2.7:8080",
        response_code=200,
        downstream_ip="172.30.1.99:5000",
    )
    labels = request_labels(record, DIRECTORY, reporter)
    assert labels["reporter"] == "source"
    assert labels["source_workload"] == "istio-ingressgateway"
    assert labels["source_principal"] == (
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
    )
    assert labels["destination_workload"] == "backend-v1"
    assert labels["connection_security_policy"] == "unknown"
    unknown_self = request_labels(record, DIRECTORY, Reporter.for_proxy("gateway", None))
    assert unknown_self["source_workload"] == "unknown"


def _entry(**overrides: Any) -> HTTPAccessLogEntry:
    entry = HTTPAccessLogEntry()
    common = entry.common_properties
    common.upstream_cluster = overrides.get("cluster", V1_CLUSTER)
    common.upstream_remote_address.socket_address.address = "10.244.2.7"
    common.upstream_remote_address.socket_address.port_value = 8080
    common.downstream_remote_address.socket_address.address = "10.244.1.5"
    common.downstream_remote_address.socket_address.port_value = 41000
    common.filter_state_objects[PEER_PRINCIPAL_KEY].Pack(StringValue(value=FRONTEND_ID))
    common.duration.FromMilliseconds(overrides.get("ms", 12))
    common.upstream_request_attempt_count = overrides.get("attempts", 1)
    common.access_log_type = overrides.get("type", AccessLogType.DownstreamEnd)
    common.custom_tags["destination_subset"] = "v1"
    common.custom_tags["destination_workload"] = ""
    for flag in overrides.get("flags", ()):
        setattr(common.response_flags, flag, True)
    entry.request.request_headers_bytes = 100
    entry.request.request_body_bytes = 20
    entry.request.request_headers["content-type"] = "text/plain"
    entry.response.response_code.value = overrides.get("code", 200)
    entry.response.response_headers_bytes = 80
    entry.response.response_body_bytes = 5
    return entry


def test_record_from_entry() -> None:
    record = record_from_entry(
        _entry(flags=("upstream_overflow", "upstream_retry_limit_exceeded"), code=503, attempts=4)
    )
    assert record == RequestRecord(
        upstream_cluster=V1_CLUSTER,
        upstream_host="10.244.2.7:8080",
        downstream_ip="10.244.1.5:41000",
        peer_principal=FRONTEND_ID,
        response_code=503,
        response_flags=("UO", "URX"),
        content_type="text/plain",
        request_bytes=120,
        response_bytes=85,
        duration_ms=12.0,
        attempts=4,
        tags={"destination_subset": "v1"},
    )


def test_record_reads_the_connect_baggage_from_filter_state() -> None:
    entry = _entry()
    baggage = "k8s.namespace.name=demo,k8s.deployment.name=frontend"
    entry.common_properties.filter_state_objects[PEER_BAGGAGE_KEY].Pack(StringValue(value=baggage))
    assert record_from_entry(entry).peer_baggage == baggage
    # A CONNECT without the header: Envoy's formatter logs "-", which means none.
    entry.common_properties.filter_state_objects[PEER_BAGGAGE_KEY].Pack(StringValue(value="-"))
    assert record_from_entry(entry).peer_baggage == ""
    assert record_from_entry(_entry()).peer_baggage == ""


def test_upstream_and_intermediate_entries() -> None:
    assert record_from_entry(_entry(type=AccessLogType.UpstreamEnd)).upstream_attempt
    assert not is_final(_entry(type=AccessLogType.DownstreamPeriodic))
    assert is_final(_entry(type=AccessLogType.NotSet))
    tunnel = _entry()
    tunnel.request.request_method = RequestMethod.CONNECT
    assert is_tunnel(tunnel) and not is_tunnel(_entry())


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_metric_values() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    for entry in [
        _entry(),
        _entry(ms=700),
        _entry(code=503, attempts=3, flags=("upstream_retry_limit_exceeded",)),
    ]:
        record = record_from_entry(entry)
        metrics.record(record, request_labels(record, DIRECTORY))
    attempt = record_from_entry(_entry(type=AccessLogType.UpstreamEnd, code=500))
    metrics.record(attempt, request_labels(attempt, DIRECTORY))

    ok = {"response_code": "200", "destination_workload": "backend-v1", "reporter": "waypoint"}
    assert _sample(registry, "istio_requests_total", **ok) == 2
    assert _sample(registry, "istio_requests_total", response_flags="URX", response_code="503") == 1
    assert _sample(registry, "istio_requests_total") == 3
    assert _sample(registry, "istio_request_duration_milliseconds_bucket", le="25.0", **ok) == 1
    assert _sample(registry, "istio_request_duration_milliseconds_bucket", le="1000.0", **ok) == 2
    assert _sample(registry, "istio_request_duration_milliseconds_sum", **ok) == 712
    assert _sample(registry, "istio_request_bytes_sum", **ok) == 240
    assert _sample(registry, "istio_response_bytes_bucket", le="100.0", **ok) == 2
    assert _sample(registry, "istio_request_retries_total", response_code="503") == 2
    assert _sample(registry, "istio_request_attempts_total", response_code="500") == 1
    body, content_type = render(registry, "")
    assert content_type.startswith("text/plain")
    assert b"# TYPE istio_requests_total counter" in body
    assert b'reporter="waypoint"' in body


def test_directory_from_cluster_state() -> None:
    pod = Pod(
        "demo",
        "backend-v1-5d9c-abcde",
        labels=FrozenMap({"app": "backend", "version": "v1", "pod-template-hash": "5d9c"}),
        service_account="backend",
        ip="10.244.2.7",
        owner_kind="ReplicaSet",
        owner_name="backend-v1-5d9c",
    )
    pending = Pod("demo", "new")
    directory = directory_from_state(
        ClusterState(pods={pod.key: pod, pending.key: pending}), trust_domain="example.org"
    )
    assert directory.by_ip == {"10.244.2.7": BACKEND_V1}
    assert directory.principal_of(BACKEND_V1) == "spiffe://example.org/ns/demo/sa/backend"


_TEXT = st.text(max_size=40)


_RECORDS = st.builds(
    RequestRecord,
    upstream_cluster=st.one_of(_TEXT, st.builds("|".join, st.lists(_TEXT, min_size=4, max_size=4))),
    upstream_host=_TEXT,
    downstream_ip=st.one_of(_TEXT, st.sampled_from(["10.244.1.5:1", "[fd00::1]:2", "10.244.2.8"])),
    peer_principal=st.one_of(_TEXT, st.sampled_from([FRONTEND_ID, BACKEND_ID])),
    response_code=st.integers(0, 999),
    tags=st.dictionaries(
        st.sampled_from(["destination_service", "tunnel_destination"]), _TEXT.filter(bool)
    ),
)


@settings(max_examples=30, deadline=None)
@given(record=_RECORDS)
def test_any_record_gets_every_label(record: RequestRecord) -> None:
    """Whatever Envoy logged, every label is there and only grpc status may be empty."""
    labels = request_labels(record, DIRECTORY)
    assert tuple(labels) == LABEL_NAMES
    assert all(value for name, value in labels.items() if name != "grpc_response_status")
