"""Which services a waypoint serves, and what it is served (``proxy_resources``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controlplane.envoy import telemetry
from controlplane.envoy.bootstrap import as_json, proxy_bootstrap, static_secrets
from controlplane.envoy.hbone import (
    CONNECT_ORIGINATE,
    CONNECT_TERMINATE,
    MAIN_INTERNAL,
    ORIGINAL_DST_LOCAL_KEY,
    PEER_PRINCIPAL_KEY,
    UPSTREAM_SAN_KEY,
    WORKLOAD_INTERNAL,
)
from controlplane.envoy.proxy import (
    EnvoyProxy,
    EnvoyResources,
    port_protocol,
    proxy_resources,
    served_services,
)
from controlplane.model import (
    ClusterState,
    ContainerPort,
    FrozenMap,
    IstioGateway,
    IstioServer,
    Namespace,
    Pod,
    Service,
    ServicePort,
    VirtualService,
    deep_freeze,
)
from tests.envoy_validate import envoy_validate
from tests.waypoint_envoy_fixtures import BACKEND_VIP, WAYPOINT, demo_state, waypoint_objects
from ztunnel.identity.certs import LocalCA
from ztunnel.identity.spiffe import SpiffeId

PROXY = EnvoyProxy(
    "waypoint~10.0.0.9~w.demo~demo.svc.cluster.local", "demo", "w", "w", "waypoint", "10.0.0.9"
)


def _service(name: str, ns: str = "demo", **labels: str) -> Service:
    return Service(
        ns,
        name,
        labels=FrozenMap(labels),
        selector=FrozenMap({"app": name}),
        cluster_ips=("10.96.0.10",),
        ports=(ServicePort(80, 8080, "http"),),
    )


def _with_waypoints(**services: Service) -> ClusterState:
    w, w_service = waypoint_objects("demo", "w", "10.96.0.9", all_namespaces=True)
    other, other_service = waypoint_objects("demo", "other", "10.96.0.8")
    found = {s.key: s for s in (*services.values(), w_service, other_service)}
    return ClusterState(
        namespaces={"demo": Namespace("demo", FrozenMap({"istio.io/use-waypoint": "w"}))},
        services=found,
        gateways={w.key: w, other.key: other},
    )


def test_binding_is_the_workload_apis() -> None:
    """A Service's label over its namespace's, ``#none``, ``ns/name``, another waypoint."""
    state = _with_waypoints(
        a=_service("a"),
        b=_service("b", **{"istio.io/use-waypoint": "#none"}),
        c=_service("c", **{"istio.io/use-waypoint": "other"}),
        d=_service("d", "x", **{"istio.io/use-waypoint": "demo/w"}),
        e=_service("e", "x", **{"istio.io/use-waypoint": "w"}),
    )
    assert [s.name for s in served_services(state, PROXY)] == ["a", "d"]


def test_waypoint_for_workload_serves_no_service() -> None:
    state = _with_waypoints(a=_service("a"))
    (gateway,) = [g for g in state.gateways.values() if g.name == "w"]
    labels = FrozenMap({"istio.io/waypoint-for": "workload"})
    state = replace(state, gateways={gateway.key: replace(gateway, labels=labels)})
    assert served_services(state, PROXY) == []


def test_waypoint_gets_routes_and_clusters_of_served_services() -> None:
    state = _with_waypoints(a=_service("a", **{"istio.io/use-waypoint": "w"}))
    resources = proxy_resources(state, PROXY)
    assert "inbound-vip|80|http|a.demo.svc.cluster.local" in resources.routes
    assert "outbound|80||a.demo.svc.cluster.local" in resources.clusters


def _demo() -> EnvoyResources:
    return proxy_resources(demo_state(), WAYPOINT)


def test_waypoint_listeners_terminate_hbone_and_chain_per_service_port() -> None:
    resources = _demo()
    assert list(resources.listeners) == [
        CONNECT_TERMINATE,
        MAIN_INTERNAL,
        CONNECT_ORIGINATE,
        WORKLOAD_INTERNAL,
    ]
    outer = as_json(resources.listeners[CONNECT_TERMINATE])
    assert outer["address"]["socket_address"]["port_value"] == 15008
    tls = outer["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    assert common["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    manager = outer["filter_chains"][0]["filters"][0]["typed_config"]
    keys = [
        v["object_key"] for v in manager["http_filters"][0]["typed_config"]["on_request_headers"]
    ]
    assert PEER_PRINCIPAL_KEY in keys and ORIGINAL_DST_LOCAL_KEY in keys
    inner = as_json(resources.listeners[MAIN_INTERNAL])
    assert "internal_listener" in inner
    chains = {c["name"]: c for c in inner["filter_chains"]}
    http = chains["inbound-vip|80|http|backend.demo.svc.cluster.local"]
    assert http["filter_chain_match"]["destination_port"] == 80
    assert http["filter_chain_match"]["prefix_ranges"] == [
        {"address_prefix": BACKEND_VIP, "prefix_len": 32}
    ]
    hcm = http["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] in resources.routes
    assert [f["name"] for f in hcm["http_filters"]][-1] == "envoy.filters.http.router"
    assert hcm["access_log"][0]["name"] == "envoy.access_loggers.http_grpc"
    assert "tracing" not in hcm  # only when the bootstrap has the collector's cluster
    tcp = chains["inbound-vip|5432|tcp|db.demo.svc.cluster.local"]
    assert [f["name"] for f in tcp["filters"]] == [
        "envoy.filters.network.rbac",  # db's policy, for TCP
        "envoy.filters.network.tcp_proxy",
    ]


def test_pods_bound_for_workload_traffic_get_a_passthrough_chain() -> None:
    """waypoint-for all: tunnels to a pod's own address, any port, go to that pod."""
    resources = _demo()
    outer = as_json(resources.listeners[CONNECT_TERMINATE])
    hosts = outer["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    (services, workloads) = hosts["virtual_hosts"]
    assert f"{BACKEND_VIP}:80" in services["domains"]
    assert "10.1.0.12:*" in workloads["domains"]
    assert workloads["routes"][0]["route"]["cluster"] == WORKLOAD_INTERNAL
    inner = as_json(resources.listeners[WORKLOAD_INTERNAL])
    chain = next(c for c in inner["filter_chains"] if c["name"] == "inbound-pod|10.1.0.12")
    assert chain["filter_chain_match"] == {
        "prefix_ranges": [{"address_prefix": "10.1.0.12", "prefix_len": 32}]
    }
    state, proxy = chain["filters"]
    san = state["typed_config"]["on_new_connection"][1]
    assert san["object_key"] == UPSTREAM_SAN_KEY
    assert san["format_string"]["text_format_source"]["inline_string"] == (
        "spiffe://cluster.local/ns/demo/sa/backend"
    )
    assert proxy["typed_config"]["cluster"] == "encap"


def test_endpoints_are_tunnels_to_the_selected_pods() -> None:
    resources = _demo()
    v2 = as_json(resources.endpoints["outbound|80|v2|backend.demo.svc.cluster.local"])
    (endpoint,) = v2["endpoints"][0]["lb_endpoints"]
    internal = endpoint["endpoint"]["address"]["envoy_internal_address"]
    assert internal == {"server_listener_name": CONNECT_ORIGINATE, "endpoint_id": "10.1.0.12:5678"}
    metadata = endpoint["metadata"]["filter_metadata"]
    assert metadata["envoy.filters.listener.original_dst"] == {"local": "10.1.0.12:5678"}
    assert metadata["tunnel"] == {
        "destination": "10.1.0.12:5678",
        "address": "10.1.0.12:15008",
        "principal": "spiffe://cluster.local/ns/demo/sa/backend",
    }
    whole = as_json(resources.endpoints["outbound|80||backend.demo.svc.cluster.local"])
    assert len(whole["endpoints"][0]["lb_endpoints"]) == 2
    cluster = as_json(resources.clusters["outbound|80|v2|backend.demo.svc.cluster.local"])
    assert cluster["type"] == "EDS"
    assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.internal_upstream"
    assert cluster["metadata"]["filter_metadata"]["ambient.telemetry"]["subset"] == "v2"
    assert metadata["ambient.telemetry"]["version"] == "v2"
    originate = as_json(resources.clusters[CONNECT_ORIGINATE])
    assert originate["type"] == "ORIGINAL_DST"
    assert originate["original_dst_lb_config"]["upstream_port_override"] == 15008
    # the tunnel goes to the endpoint's tunnel address (a waypoint for ingress-use-waypoint)
    assert originate["original_dst_lb_config"]["metadata_key"]["key"] == "tunnel"


def test_unready_and_unenrolled_pods_are_no_endpoints() -> None:
    state = demo_state()
    pods = dict(state.pods)
    pods[("demo", "backend-v1")] = replace(pods[("demo", "backend-v1")], ready=False)
    labels = {"istio.io/dataplane-mode": "none", "app": "backend", "version": "v2"}
    pods[("demo", "backend-v2")] = replace(pods[("demo", "backend-v2")], labels=FrozenMap(labels))
    resources = proxy_resources(replace(state, pods=pods), WAYPOINT)
    assert not resources.endpoints["outbound|80||backend.demo.svc.cluster.local"].endpoints


def _with_ingress() -> tuple[ClusterState, EnvoyProxy]:
    state = demo_state()
    pod = Pod(
        "istio-system",
        "istio-ingressgateway",
        labels=FrozenMap({"istio": "ingressgateway"}),
        service_account="istio-ingressgateway",
        ip="10.1.0.30",
        phase="Running",
        ready=True,
    )
    gateway = IstioGateway(
        "demo",
        "frontend-gateway",
        selector=FrozenMap({"istio": "ingressgateway"}),
        servers=(IstioServer(80, "HTTP", ("*",)),),
    )
    spec = {
        "hosts": ["*"],
        "gateways": ["frontend-gateway"],
        "http": [{"route": [{"destination": {"host": "backend", "subset": "v1"}}]}],
    }
    vs = VirtualService("demo", "ingress", ("*",), ("frontend-gateway",), deep_freeze(spec))
    state = replace(
        state,
        pods={**state.pods, pod.key: pod},
        istio_gateways={gateway.key: gateway},
        virtual_services={**state.virtual_services, vs.key: vs},
    )
    proxy = EnvoyProxy(
        "router~10.1.0.30~istio-ingressgateway.istio-system~istio-system.svc.cluster.local",
        "istio-system",
        "istio-ingressgateway",
        "istio-ingressgateway",
        "gateway",
        "10.1.0.30",
    )
    return state, proxy


def test_a_gateway_is_served_its_ingress_with_tunnel_endpoints() -> None:
    resources = proxy_resources(*_with_ingress())
    assert set(resources.listeners) == {"0.0.0.0_80", CONNECT_ORIGINATE}
    assert set(resources.routes) == {"http.80"}
    manager = as_json(resources.listeners["0.0.0.0_80"])["filter_chains"][0]["filters"][0]
    assert manager["typed_config"]["access_log"][0]["name"] == "envoy.access_loggers.http_grpc"
    v1 = as_json(resources.endpoints["outbound|80|v1|backend.demo.svc.cluster.local"])
    (endpoint,) = v1["endpoints"][0]["lb_endpoints"]
    assert endpoint["metadata"]["filter_metadata"]["tunnel"]["destination"] == "10.1.0.11:5678"
    assert CONNECT_ORIGINATE in resources.clusters


@pytest.mark.timeout(120)
def test_envoy_accepts_the_gateway_resources(tmp_path: Path) -> None:
    done = envoy_validate(
        proxy_bootstrap(proxy_resources(*_with_ingress()), _secrets(), extra_clusters=_extra()),
        tmp_path / "gateway.json",
    )
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


def _secrets() -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    ca = LocalCA.create(now)
    cert = ca.issue(SpiffeId("cluster.local", "demo", "w"), now)
    return static_secrets(
        b"".join(cert.chain_pem).decode(), cert.key_pem.decode(), ca.root_pem.decode()
    )


def _extra() -> list[dict[str, Any]]:
    return [as_json(c) for c in telemetry.static_clusters(collector=("127.0.0.1", 9411))]


@pytest.mark.timeout(120)
def test_envoy_accepts_the_waypoint_resources(tmp_path: Path) -> None:
    resources = proxy_resources(demo_state(), replace(WAYPOINT, tracing=True))
    config = proxy_bootstrap(resources, _secrets(), extra_clusters=_extra())
    done = envoy_validate(config, tmp_path / "waypoint.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("http", "", True),
        ("http2-web", "", True),
        ("grpc", "", True),
        ("web", "kubernetes.io/h2c", True),
        ("tcp-postgres", "", False),
        ("redis", "", False),
        ("https", "", False),
        ("", "", None),
        ("web", "", None),
    ],
)
def test_port_protocol_follows_istio(name: str, app_protocol: str, expected: bool | None) -> None:
    assert port_protocol(ServicePort(80, 80, name, app_protocol=app_protocol)) is expected


def test_undeclared_port_gets_detection_chains() -> None:
    inner = as_json(_demo().listeners[MAIN_INTERNAL])
    assert [f["name"] for f in inner["listener_filters"]] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.http_inspector",
    ]
    assert inner["continue_on_listener_filters_timeout"] is True
    cache = [c for c in inner["filter_chains"] if "cache.demo" in c["name"]]
    assert [c["filter_chain_match"].get("application_protocols") for c in cache] == [
        ["http/1.1", "h2c"],
        None,
    ]


def test_named_target_port_resolves_per_pod() -> None:
    state = demo_state()
    backend = state.services[("demo", "backend")]
    named = replace(backend, ports=(ServicePort(80, "http-alt", "http"),))
    pods = dict(state.pods)
    v1 = pods[("demo", "backend-v1")]
    pods[v1.key] = replace(v1, ports=(ContainerPort(9090, "http-alt"),))
    state = replace(state, services={**state.services, named.key: named}, pods=pods)
    whole = as_json(
        proxy_resources(state, WAYPOINT).endpoints["outbound|80||backend.demo.svc.cluster.local"]
    )
    # v2 has no port of that name: it is no endpoint of this port.
    (endpoint,) = whole["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["envoy_internal_address"]["endpoint_id"] == (
        "10.1.0.11:9090"
    )


@pytest.mark.timeout(120)
def test_envoy_accepts_a_waypoint_nothing_is_bound_to(tmp_path: Path) -> None:
    """`waypoint apply` before any label: Envoy must accept the (empty) config, not NACK it."""
    w, w_service = waypoint_objects("demo", "w", "10.96.0.9")
    state = ClusterState(services={w_service.key: w_service}, gateways={w.key: w})
    resources = proxy_resources(state, PROXY)
    assert MAIN_INTERNAL not in resources.listeners
    config = proxy_bootstrap(resources, _secrets(), extra_clusters=_extra())
    done = envoy_validate(config, tmp_path / "unbound.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
