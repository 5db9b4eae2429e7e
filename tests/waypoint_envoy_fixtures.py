"""A small cluster with one waypoint, shared by the waypoint Envoy tests.

Namespace ``demo`` is enrolled and bound to waypoint ``w`` (for services and pods); ``backend`` (VIP
10.96.0.20, port 80 -> 5678) has pods v1 and v2, and a VirtualService splits 80/20
between the DestinationRule's subsets (``end-user: jason`` always to v2), and an
AuthorizationPolicy on it lets only ``frontend`` GET; another lets only ``frontend``
connect to ``db``. ``web`` (8000, on
backend v1), ``db`` (5432, account ``db``) and ``cache`` (6379, account ``cache``) declare
no protocol: the waypoint detects it.
"""

from __future__ import annotations

from typing import Any

import yaml

from controlplane.envoy.proxy import EnvoyProxy
from controlplane.model import (
    GATEWAY_NAME_LABEL,
    WAYPOINT_CLASS,
    AuthorizationPolicy,
    ClusterState,
    DestinationRule,
    FrozenMap,
    Gateway,
    GatewayListener,
    Namespace,
    Operation,
    Pod,
    Rule,
    Service,
    ServicePort,
    Source,
    TargetRef,
    VirtualService,
    deep_freeze,
)

WAYPOINT = EnvoyProxy(
    "waypoint~10.1.0.9~w.demo~demo.svc.cluster.local", "demo", "w", "w", "waypoint", "10.1.0.9"
)
BACKEND_VIP = "10.96.0.20"
DB_VIP = "10.96.0.21"
CACHE_VIP = "10.96.0.22"
WEB_VIP = "10.96.0.23"


WAYPOINT_POD_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: demo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  clusterIP: 10.96.0.99
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo
  labels: {gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}
spec: {nodeName: node1, serviceAccountName: waypoint}
status: {podIP: 10.244.1.9, phase: Running, conditions: [{type: Ready, status: "True"}]}
"""
"""Waypoint ``demo/waypoint`` as the lab runs it, YAML: its Service (VIP 10.96.0.99, 15008)
and its ready pod ``waypoint-0`` (10.244.1.9 on node1, account ``waypoint``, not captured)."""


def waypoint_objects(
    namespace: str, name: str, vip: str, *, all_namespaces: bool = False, traffic: str = ""
) -> tuple[Gateway, Service]:
    """A waypoint Gateway (class istio-waypoint, HBONE on 15008, ``waypoint-for:
    traffic`` if given) and its Service."""
    allowed = FrozenMap({"namespaces": FrozenMap({"from": "All"})}) if all_namespaces else None
    gateway = Gateway(
        namespace,
        name,
        WAYPOINT_CLASS,
        labels=FrozenMap({"istio.io/waypoint-for": traffic} if traffic else {}),
        listeners=(GatewayListener("mesh", 15008, "HBONE", allowed_routes=allowed),),
    )
    service = Service(
        namespace,
        name,
        labels=FrozenMap({GATEWAY_NAME_LABEL: name}),
        selector=FrozenMap({GATEWAY_NAME_LABEL: name}),
        cluster_ips=(vip,),
        ports=(ServicePort(15008, 15008, "mesh"),),
    )
    return gateway, service


def _pod(name: str, ip: str, account: str = "backend", **labels: str) -> Pod:
    return Pod(
        "demo",
        name,
        labels=FrozenMap(labels),
        node_name="node1",
        service_account=account,
        ip=ip,
        ips=(ip,),
        phase="Running",
        ready=True,
    )


def demo_state(
    weights: tuple[int, int] = (80, 20), v1_ip: str = "10.1.0.11", v2_ip: str = "10.1.0.12"
) -> ClusterState:
    """The cluster; ``weights`` of v1 and v2 in the VirtualService."""
    vs: dict[str, Any] = yaml.safe_load(
        f"""
hosts: [backend]
http:
- match: [{{headers: {{end-user: {{exact: jason}}}}}}]
  route: [{{destination: {{host: backend, subset: v2}}}}]
- route:
  - {{destination: {{host: backend, subset: v1}}, weight: {weights[0]}}}
  - {{destination: {{host: backend, subset: v2}}, weight: {weights[1]}}}
"""
    )
    dr: dict[str, Any] = yaml.safe_load(
        """
host: backend
subsets:
- {name: v1, labels: {version: v1}}
- {name: v2, labels: {version: v2}}
"""
    )
    backend = Service(
        "demo",
        "backend",
        selector=FrozenMap({"app": "backend"}),
        cluster_ips=(BACKEND_VIP,),
        ports=(ServicePort(80, 5678, "http"),),
    )
    db = Service(
        "demo",
        "db",
        selector=FrozenMap({"app": "db"}),
        cluster_ips=(DB_VIP,),
        ports=(ServicePort(5432, 5432),),
    )
    cache = Service(
        "demo",
        "cache",
        selector=FrozenMap({"app": "cache"}),
        cluster_ips=(CACHE_VIP,),
        ports=(ServicePort(6379, 6379),),
    )
    web = Service(
        "demo",
        "web",
        selector=FrozenMap({"app": "backend", "version": "v1"}),
        cluster_ips=(WEB_VIP,),
        ports=(ServicePort(8000, 5678),),
    )
    pods = [
        _pod("backend-v1", v1_ip, app="backend", version="v1"),
        _pod("backend-v2", v2_ip, app="backend", version="v2"),
        _pod("db-0", "10.1.0.13", "db", app="db"),
        _pod("cache-0", "10.1.0.14", "cache", app="cache"),
    ]
    labels = {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "w"}
    gateway, waypoint_service = waypoint_objects("demo", "w", "10.96.0.9", traffic="all")
    # At the waypoint: frontend may GET backend, nothing else is allowed there (403),
    # and only frontend may connect to db.
    frontend = Source(principals=("cluster.local/ns/demo/sa/frontend",))
    get_only = AuthorizationPolicy(
        "demo",
        "backend-get-only",
        target_refs=(TargetRef("Service", "backend"),),
        rules=(Rule(sources=(frontend,), operations=(Operation(methods=("GET",)),)),),
    )
    db_policy = AuthorizationPolicy(
        "demo",
        "db-frontend-only",
        target_refs=(TargetRef("Service", "db"),),
        rules=(Rule(sources=(frontend,)),),
    )
    return ClusterState(
        namespaces={"demo": Namespace("demo", FrozenMap(labels))},
        pods={p.key: p for p in pods},
        services={
            backend.key: backend,
            db.key: db,
            cache.key: cache,
            web.key: web,
            waypoint_service.key: waypoint_service,
        },
        gateways={gateway.key: gateway},
        authorization_policies={p.key: p for p in (get_only, db_policy)},
        virtual_services={
            ("demo", "backend"): VirtualService(
                "demo", "backend", ("backend",), (), deep_freeze(vs)
            )
        },
        destination_rules={
            ("demo", "backend"): DestinationRule(
                "demo", "backend", "backend", ("v1", "v2"), deep_freeze(dr)
            )
        },
    )


def virtual_service(v1: int, v2: int) -> str:
    """demo/backend's VirtualService YAML: ``v1`` and ``v2`` weights to its subsets."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend]
  http:
  - route:
    - {{destination: {{host: backend, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: backend, subset: v2}}, weight: {v2}}}
"""
