"""The telemetry snippets (access log, tracing, their clusters) as Envoy takes them.

``telemetry_bootstrap`` builds a small static bootstrap from the snippets alone (one
HCM listener routing to an ``outbound|...`` cluster with the metadata the exporter
reads); ``envoy --mode validate`` judges it, and the integration test runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.config.trace.v3.zipkin_pb2 import ZipkinConfig
from envoy.extensions.access_loggers.grpc.v3.als_pb2 import HttpGrpcAccessLogConfig

from controlplane.envoy import hbone, telemetry
from controlplane.envoy.bootstrap import as_json
from tests.envoy_validate import envoy_validate

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SET_FILTER_STATE = "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
BACKEND_CLUSTER = "outbound|80|v1|backend.demo.svc.cluster.local"
PEER = "spiffe://cluster.local/ns/demo/sa/frontend"
PEER_BAGGAGE = "k8s.namespace.name=demo,k8s.deployment.name=frontend,service.version=v7"
"""What the source ztunnel's CONNECT would say of the calling workload."""


@dataclass(frozen=True)
class Proxy:
    namespace: str = "demo"
    gateway_name: str = "waypoint"
    kind: str = "waypoint"


def telemetry_bootstrap(
    *,
    listen_port: int,
    backend_port: int,
    telemetry_port: int,
    collector: tuple[str, int] | None,
    admin_port: int = 0,
    retries: int = 0,
) -> dict[str, Any]:
    """A bootstrap: listener ``127.0.0.1:listen_port`` -> HCM (access log, tracing when
    a collector is given) -> :data:`BACKEND_CLUSTER` at ``127.0.0.1:backend_port``.

    A ``set_filter_state`` network filter plays the HBONE terminator's part: it puts
    :data:`PEER` under the peer-principal key."""
    proxy = Proxy()
    manager: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": "inbound",
        "access_log": [as_json(log) for log in telemetry.access_log_config(proxy)],
        "route_config": {
            "name": "inbound-vip|80|http|backend.demo.svc.cluster.local",
            "virtual_hosts": [
                {
                    "name": "backend",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "demo.backend.0",
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": BACKEND_CLUSTER,
                                "retry_policy": {
                                    "retry_on": "5xx",
                                    "num_retries": retries,
                                },
                            },
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": ROUTER,
                    # One entry per upstream attempt too (istio_request_attempts_total).
                    "upstream_log": [as_json(log) for log in telemetry.access_log_config(proxy)],
                },
            }
        ],
    }
    if collector is not None:
        manager["tracing"] = as_json(telemetry.tracing_config(proxy))
    set_state = {
        "@type": SET_FILTER_STATE,
        "on_new_connection": [
            {
                "object_key": hbone.PEER_PRINCIPAL_KEY,
                "factory_key": "envoy.string",
                "format_string": {"text_format_source": {"inline_string": PEER}},
                "shared_with_upstream": "ONCE",
            },
            {
                "object_key": hbone.PEER_BAGGAGE_KEY,
                "factory_key": "envoy.string",
                "format_string": {"text_format_source": {"inline_string": PEER_BAGGAGE}},
                "shared_with_upstream": "ONCE",
            },
        ],
    }
    backend = {
        "name": BACKEND_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "metadata": as_json(
            telemetry.cluster_metadata(
                service="backend.demo.svc.cluster.local",
                service_name="backend",
                service_namespace="demo",
                subset="v1",
            )
        ),
        "load_assignment": {
            "cluster_name": BACKEND_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": backend_port,
                                    }
                                }
                            },
                            "metadata": _endpoint_metadata(),
                        }
                    ]
                }
            ],
        },
    }
    clusters = [
        as_json(c)
        for c in telemetry.static_clusters(telemetry_port=telemetry_port, collector=collector)
    ]
    return {
        "node": {"id": "waypoint~demo", "cluster": telemetry.trace_service_name(proxy)},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.set_filter_state",
                                    "typed_config": set_state,
                                },
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                },
                            ]
                        }
                    ],
                }
            ],
            "clusters": [backend, *clusters],
        },
    }


def _endpoint_metadata() -> dict[str, Any]:
    metadata = as_json(
        telemetry.endpoint_metadata(
            workload="backend-v1",
            workload_namespace="demo",
            app="backend",
            version="v1",
            principal="spiffe://cluster.local/ns/demo/sa/backend",
        )
    )
    metadata["filter_metadata"][hbone.TUNNEL_METADATA] = {
        hbone.TUNNEL_DESTINATION: "10.244.1.7:8080"
    }
    return metadata


def test_access_log_names_the_exporter_cluster_and_what_it_reads() -> None:
    (log,) = telemetry.access_log_config(Proxy())
    assert log.name == "envoy.access_loggers.http_grpc"
    config = HttpGrpcAccessLogConfig()
    assert log.typed_config.Unpack(config)
    common = config.common_config
    assert common.grpc_service.envoy_grpc.cluster_name == telemetry.TELEMETRY_CLUSTER
    assert list(common.filter_state_objects_to_log) == [
        hbone.PEER_PRINCIPAL_KEY,
        hbone.PEER_BAGGAGE_KEY,
    ]
    # fewer, larger messages, yet counts still arrive within 100 ms
    assert common.buffer_size_bytes.value == telemetry.ACCESS_LOG_BUFFER_BYTES > 16 * 1024
    assert common.buffer_flush_interval.ToMilliseconds() == 100
    tags = {tag.tag for tag in common.custom_tags}
    assert {"destination_service", "destination_subset", "destination_workload"} <= tags
    assert "grpc-status" in config.additional_response_trailers_to_log
    assert "content-type" in config.additional_request_headers_to_log


def test_tracing_is_zipkin_json_v2_with_separate_spans() -> None:
    tracing = telemetry.tracing_config(Proxy())
    zipkin = ZipkinConfig()
    assert tracing.provider.name == "envoy.tracers.zipkin"
    assert tracing.provider.typed_config.Unpack(zipkin)
    assert zipkin.collector_cluster == telemetry.TRACING_CLUSTER
    assert zipkin.collector_endpoint == "/api/v2/spans"
    assert zipkin.collector_endpoint_version == ZipkinConfig.HTTP_JSON
    assert zipkin.shared_span_context.value is False
    assert zipkin.trace_context_option == ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION


def test_static_clusters() -> None:
    (only,) = telemetry.static_clusters(telemetry_port=15999)
    assert only.name == "ambient_telemetry"
    both = telemetry.static_clusters(collector=("172.30.1.1", 9411))
    assert [c.name for c in both] == ["ambient_telemetry", "ambient_tracing"]
    named = telemetry.static_clusters(collector=("collector.lab", 9411))
    assert named[1].type == named[1].STRICT_DNS


@pytest.mark.timeout(120)
def test_envoy_accepts_the_snippets(tmp_path: Path) -> None:
    config = telemetry_bootstrap(
        listen_port=20001, backend_port=20002, telemetry_port=20003, collector=("127.0.0.1", 9411)
    )
    done = envoy_validate(config, tmp_path / "telemetry.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
