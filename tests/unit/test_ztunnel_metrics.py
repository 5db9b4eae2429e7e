"""Istio TCP metrics (names, labels, unknowns, both reporters) and the ztunnel config."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ztunnel.config import ZtunnelConfig
from ztunnel.errors import ConfigError
from ztunnel.metrics import (
    FLAG_DENY,
    LABEL_NAMES,
    ConnectionLabels,
    TcpMetrics,
    connection_labels,
    new_registry,
    render,
)
from ztunnel.state.workload import Locality, Service, Workload

CLIENT = Workload(
    uid="Kubernetes//Pod/demo/frontend-1",
    name="frontend-1",
    namespace="demo",
    service_account="frontend",
    workload_name="frontend",
    canonical_name="frontend",
    canonical_revision="v1",
    cluster_id="Kubernetes",
    locality=Locality(region="eu", zone="eu-1"),
)
SERVER = Workload(
    uid="Kubernetes//Pod/demo/backend-1",
    name="backend-1",
    namespace="demo",
    service_account="backend",
)
SERVICE = Service(name="backend", namespace="demo", hostname="backend.demo.svc.cluster.local")

ISTIO_LABELS = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
]


def samples(registry, name: str) -> list[tuple[dict[str, str], float]]:
    text = render(registry, None)[0].decode()
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((sample.labels, sample.value))
    return out


def test_label_set_is_istios_in_order() -> None:
    assert list(LABEL_NAMES) == ISTIO_LABELS


def _mesh_labels(reporter: str, client: Workload) -> ConnectionLabels:
    """Labels of an mTLS connection from ``client`` to SERVER through SERVICE."""
    return connection_labels(
        reporter=reporter,
        source=client,
        source_identity=client.identity,
        destination=SERVER,
        destination_identity=SERVER.identity,
        service=SERVICE,
        mutual_tls=True,
    )


def test_both_reporters_count_one_transfer_exactly() -> None:
    registry = new_registry()
    metrics = TcpMetrics(registry)
    for reporter in ("source", "destination"):
        labels = _mesh_labels(reporter, CLIENT)
        metrics.connection_opened(labels)
        metrics.add_bytes(labels, received=100)
        metrics.connection_closed(labels, received=1000, sent=5000)
    opened = samples(registry, "istio_tcp_connections_opened_total")
    assert sorted(s[0]["reporter"] for s in opened) == ["destination", "source"]
    assert all(value == 1.0 for _, value in opened)
    received = samples(registry, "istio_tcp_received_bytes_total")
    assert [value for _, value in received] == [1100.0, 1100.0]
    sent = samples(registry, "istio_tcp_sent_bytes_total")
    assert [value for _, value in sent] == [5000.0, 5000.0]
    seen = opened[0][0]
    assert seen["source_principal"] == "spiffe://cluster.local/ns/demo/sa/frontend"
    assert seen["destination_principal"] == "spiffe://cluster.local/ns/demo/sa/backend"
    assert seen["source_workload"] == "frontend" and seen["source_app"] == "frontend"
    assert seen["source_version"] == "v1" and seen["source_region"] == "eu"
    assert seen["destination_workload"] == "backend-1"
    assert seen["destination_canonical_revision"] == "latest"
    assert seen["destination_cluster"] == "unknown" and seen["destination_zone"] == "unknown"
    assert seen["destination_service"] == "backend.demo.svc.cluster.local"
    assert seen["destination_service_name"] == "backend"
    assert seen["connection_security_policy"] == "mutual_tls"
    assert seen["request_protocol"] == "tcp" and seen["response_flags"] == "-"


def test_unknown_peers_are_labelled_unknown() -> None:
    labels = connection_labels(reporter="destination", destination=SERVER)
    values = dataclasses.asdict(labels)
    for name in (
        "source_workload",
        "source_principal",
        "source_workload_namespace",
        "destination_service",
    ):
        assert values[name] == "unknown"
    assert values["connection_security_policy"] == "unknown"
    with pytest.raises(ValueError, match="reporter"):
        connection_labels(reporter="sidecar")


def test_labels_are_remembered_per_workload_object_and_follow_state_updates() -> None:
    def labels_for(client: Workload) -> ConnectionLabels:
        return _mesh_labels("source", client)

    first = labels_for(CLIENT)
    assert labels_for(CLIENT) is first  # the same peers: the same (hashable) label set
    # A state update brings new objects, equal in identity but not in telemetry fields.
    moved = dataclasses.replace(CLIENT, canonical_revision="v2")
    assert moved.identity == CLIENT.identity
    updated = labels_for(moved)
    assert dataclasses.asdict(updated)["source_version"] == "v2"
    assert dataclasses.asdict(labels_for(CLIENT))["source_version"] == "v1"
    # The other reporter of the same connection is its own label set.
    dest = connection_labels(reporter="destination", source=CLIENT, destination=SERVER)
    assert dest.reporter == "destination" and dest is not first


def test_failures_carry_the_response_flag() -> None:
    registry = new_registry()
    metrics = TcpMetrics(registry)
    labels = connection_labels(reporter="destination", destination=SERVER)
    metrics.connection_failed(labels, FLAG_DENY)
    ((failed_labels, value),) = samples(registry, "istio_tcp_connections_failed_total")
    assert failed_labels["response_flags"] == "DENY" and value == 1.0


def test_registries_are_per_process_and_build_info_is_set() -> None:
    a, b = new_registry("1.2.3"), new_registry()
    TcpMetrics(a).connection_opened(connection_labels(reporter="source"))
    TcpMetrics(b)  # a second registry can hold the same names
    assert samples(b, "istio_tcp_connections_opened_total") == []
    ((build, value),) = samples(a, "istio_build")
    assert build == {"component": "ztunnel", "tag": "1.2.3"} and value == 1.0


def test_render_negotiates_openmetrics() -> None:
    registry = new_registry()
    body, content_type = render(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    _, plain = render(registry, "text/plain")
    assert plain.startswith("text/plain")


def test_config_defaults_follow_istio_ports() -> None:
    config = ZtunnelConfig(workers=2)
    assert (config.outbound_port, config.inbound_plaintext_port, config.hbone_port) == (
        15001,
        15006,
        15008,
    )
    assert (config.metrics_port, config.readiness_port, config.admin_port) == (15020, 15021, 15000)
    assert config.admin_address == "127.0.0.1" and config.pool_max_streams == 100
    assert config.hbone.stream_window == 4 * 1024 * 1024
    assert config.hbone.connection_window == 16 * 1024 * 1024
    described = config.describe()
    assert described["certificate_ttl"] == dt.timedelta(hours=24).total_seconds()
    assert described["load_balancing"] == "round_robin"
    assert described["hbone"] == {
        "stream_window": 4 * 1024 * 1024,
        "connection_window": 16 * 1024 * 1024,
        "max_frame_size": 1024 * 1024,
        "max_concurrent_streams": 100,
        "max_header_list_size": 16 * 1024,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hbone_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hbone_port": 0}, "not a TCP port"),
        ({"metrics_port": 15008}, "share a port"),
        ({"pool_max_streams": 0}, "at least 1"),
        ({"connect_timeout": 0}, "positive"),
        ({"access_log_format": "xml"}, "access_log_format"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ZtunnelConfig(**kwargs)  # type: ignore[arg-type]
