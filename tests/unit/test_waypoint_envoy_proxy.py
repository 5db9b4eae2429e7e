"""Which services a waypoint serves, and what it is served (``proxy_resources``)."""

from __future__ import annotations

from controlplane.envoy.proxy import EnvoyProxy, proxy_resources, served_services
from controlplane.model import ClusterState, FrozenMap, Namespace, Service, ServicePort

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


def test_service_label_binds_and_overrides_namespace() -> None:
    state = ClusterState(
        namespaces={"demo": Namespace("demo", FrozenMap({"istio.io/use-waypoint": "w"}))},
        services={
            ("demo", "a"): _service("a"),
            ("demo", "b"): _service("b", **{"istio.io/use-waypoint": "#none"}),
            ("demo", "c"): _service("c", **{"istio.io/use-waypoint": "other"}),
            ("x", "d"): _service("d", "x", **{"istio.io/use-waypoint": "demo/w"}),
            ("x", "e"): _service("e", "x", **{"istio.io/use-waypoint": "w"}),
        },
    )
    assert [s.name for s in served_services(state, PROXY)] == ["a", "d"]


def test_waypoint_gets_routes_and_clusters_of_served_services() -> None:
    state = ClusterState(services={("demo", "a"): _service("a", **{"istio.io/use-waypoint": "w"})})
    resources = proxy_resources(state, PROXY)
    assert "inbound-vip|80|http|a.demo.svc.cluster.local" in resources.routes
    assert "outbound|80||a.demo.svc.cluster.local" in resources.clusters
