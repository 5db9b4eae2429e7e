"""``istio.io/ingress-use-waypoint``: the ingress gateway tunnels to the Service's waypoint.

As Istio does: when the destination Service is bound to a waypoint and it (or its
namespace) is labelled ``istio.io/ingress-use-waypoint: "true"``, the gateway's
clusters for it hold one HBONE tunnel per waypoint pod (to its 15008, ``:authority
<VIP>:<port>``, the waypoint's identity expected), so the waypoint's routing and L7
policy apply to ingress traffic. Without the label they hold the pods themselves.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controlplane.envoy.bootstrap import as_json, proxy_bootstrap
from controlplane.envoy.hbone import CONNECT_ORIGINATE
from controlplane.envoy.proxy import EnvoyProxy, proxy_resources
from controlplane.model import GATEWAY_NAME_LABEL, ClusterState, FrozenMap, Namespace, Pod
from tests.unit.test_controlplane_envoy_validate import envoy_validate
from tests.unit.test_waypoint_envoy_proxy import _extra, _secrets, _with_ingress
from tests.waypoint_envoy_fixtures import BACKEND_VIP

LABEL = "istio.io/ingress-use-waypoint"
V1 = "outbound|80|v1|backend.demo.svc.cluster.local"
WAYPOINT_IP = "10.1.0.40"


def _waypoint_pod(ip: str = WAYPOINT_IP, *, ready: bool = True) -> Pod:
    return Pod(
        "demo",
        "w",
        labels=FrozenMap({GATEWAY_NAME_LABEL: "w", "istio.io/dataplane-mode": "none"}),
        service_account="w",
        ip=ip,
        ips=(ip,),
        phase="Running",
        ready=ready,
    )


def _state(*, on: str | None = "service", ready: bool = True) -> tuple[ClusterState, EnvoyProxy]:
    """The tutorial-like ingress (gateway -> backend subset v1), backend bound to waypoint
    ``w`` by its namespace, the label on the Service, on the namespace or nowhere."""
    state, proxy = _with_ingress()
    pod = _waypoint_pod(ready=ready)
    services = dict(state.services)
    namespaces = dict(state.namespaces)
    if on == "service":
        backend = services[("demo", "backend")]
        services[backend.key] = replace(backend, labels=FrozenMap({LABEL: "true"}))
    elif on == "namespace":
        ns = namespaces["demo"]
        namespaces["demo"] = Namespace("demo", FrozenMap({**ns.labels, LABEL: "true"}))
    state = replace(
        state, pods={**state.pods, pod.key: pod}, services=services, namespaces=namespaces
    )
    return state, proxy


def _lb_endpoints(state: ClusterState, proxy: EnvoyProxy, cluster: str = V1) -> list[Any]:
    assignment = as_json(proxy_resources(state, proxy).endpoints[cluster])
    return [e for group in assignment.get("endpoints", []) for e in group["lb_endpoints"]]


@pytest.mark.parametrize("on", ["service", "namespace"])
def test_gateway_tunnels_to_the_waypoint_with_the_vip_as_authority(on: str) -> None:
    (endpoint,) = _lb_endpoints(*_state(on=on))
    metadata = endpoint["metadata"]["filter_metadata"]
    assert metadata["tunnel"] == {
        "destination": f"{BACKEND_VIP}:80",
        "address": f"{WAYPOINT_IP}:15008",
        "principal": "spiffe://cluster.local/ns/demo/sa/w",
    }
    # the CONNECT authority: the inner connection's local address
    assert metadata["envoy.filters.listener.original_dst"] == {"local": f"{BACKEND_VIP}:80"}
    internal = endpoint["endpoint"]["address"]["envoy_internal_address"]
    assert internal["server_listener_name"] == CONNECT_ORIGINATE


def test_without_the_label_the_gateway_tunnels_to_the_pods() -> None:
    (endpoint,) = _lb_endpoints(*_state(on=None))
    tunnel = endpoint["metadata"]["filter_metadata"]["tunnel"]
    assert tunnel["destination"] == "10.1.0.11:5678"
    assert tunnel["address"] == "10.1.0.11:15008"


def test_label_false_or_no_waypoint_keeps_the_pods() -> None:
    state, proxy = _state(on=None)
    backend = state.services[("demo", "backend")]
    services = {**state.services, backend.key: replace(backend, labels=FrozenMap({LABEL: "x"}))}
    (endpoint,) = _lb_endpoints(replace(state, services=services), proxy)
    assert endpoint["metadata"]["filter_metadata"]["tunnel"]["address"] == "10.1.0.11:15008"
    # bound to no waypoint ('#none' on the Service): the label alone changes nothing
    none = {LABEL: "true", "istio.io/use-waypoint": "#none"}
    services = {**state.services, backend.key: replace(backend, labels=FrozenMap(none))}
    (endpoint,) = _lb_endpoints(replace(state, services=services), proxy)
    assert endpoint["metadata"]["filter_metadata"]["tunnel"]["address"] == "10.1.0.11:15008"


def test_a_waypoint_without_ready_pods_gives_no_endpoints() -> None:
    assert _lb_endpoints(*_state(ready=False)) == []


def test_tunnel_cluster_goes_where_the_endpoint_says() -> None:
    """``connect_originate`` dials the endpoint's tunnel address (the waypoint pod), not
    the CONNECT target (the VIP, which nothing routes)."""
    resources = proxy_resources(*_state())
    cluster = as_json(resources.clusters[CONNECT_ORIGINATE])
    assert cluster["original_dst_lb_config"] == {
        "upstream_port_override": 15008,
        "metadata_key": {"key": "tunnel", "path": [{"key": "address"}]},
    }


@pytest.mark.timeout(120)
def test_envoy_accepts_the_gateway_through_a_waypoint(tmp_path: Path) -> None:
    state, proxy = _state()
    config = proxy_bootstrap(
        proxy_resources(state, replace(proxy, tracing=True)), _secrets(), extra_clusters=_extra()
    )
    done = envoy_validate(config, tmp_path / "gateway.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
