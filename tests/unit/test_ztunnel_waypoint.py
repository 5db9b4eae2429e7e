"""ztunnel and waypoints, from cluster objects through the workload API to decisions.

The cluster is written as Kubernetes YAML, translated by the control plane, read back
by ztunnel's xDS translation: what ztunnel decides is what the labels asked for.
"""

from __future__ import annotations

import ipaddress
import random
import textwrap
from pathlib import Path

import pytest

from controlplane.sources import FolderSource
from controlplane.workloadapi import translate
from tests.waypoint_envoy_fixtures import WAYPOINT_POD_YAML
from ztunnel.admin import service_json, workload_json
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.proxy.hbone import Authority, TunnelRequest
from ztunnel.proxy.inbound import Admit, Refuse, decide_hbone, decide_plaintext
from ztunnel.proxy.outbound import PlainTcp, Tunnel, plan_outbound
from ztunnel.proxy.outbound import Refuse as OutRefuse
from ztunnel.state.proxy_state import LoadBalancer, ProxyState
from ztunnel.waypoint import BYPASS_REASON, bypass_refusal, serving_waypoints
from ztunnel.xds.translate import state_from_snapshot

CLUSTER = (
    """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
"""
    + WAYPOINT_POD_YAML
    + """\
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: demo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: reviews}
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-0, namespace: demo, labels: {app: reviews}}
spec: {nodeName: node2, serviceAccountName: reviews}
status: {podIP: 10.244.2.7, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: ratings-0
  namespace: demo
  labels: {app: ratings, istio.io/use-waypoint: waypoint}
spec: {nodeName: node2, serviceAccountName: ratings}
status: {podIP: 10.244.2.8, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: demo}
spec:
  selector: {app: details}
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: details-0, namespace: demo, labels: {app: details}}
spec: {nodeName: node2, serviceAccountName: details}
status: {podIP: 10.244.2.9, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: demo, labels: {app: frontend}}
spec: {nodeName: node1, serviceAccountName: frontend}
status: {podIP: 10.244.1.5, phase: Running, conditions: [{type: Ready, status: "True"}]}
"""
)

ip = ipaddress.ip_address
FRONTEND = SpiffeId("cluster.local", "demo", "frontend")
WAYPOINT = SpiffeId("cluster.local", "demo", "waypoint")


def mesh_state(tmp_path: Path, text: str = CLUSTER) -> ProxyState:
    (tmp_path / "cluster.yaml").write_text(textwrap.dedent(text))
    cluster = FolderSource(tmp_path).load()
    assert cluster.errors == ()
    snapshot = translate(cluster)
    return state_from_snapshot(snapshot.addresses, snapshot.authorizations)


@pytest.fixture
def state(tmp_path: Path) -> ProxyState:
    return mesh_state(tmp_path)


def outbound(state: ProxyState, dst: str, port: int, src: str = "10.244.1.5"):
    return plan_outbound(
        state,
        LoadBalancer(),
        source_ip=ip(src),
        source_port=40000,
        destination_ip=ip(dst),
        destination_port=port,
        node="node1",
        rng=random.Random(1),
    )


def test_service_vip_with_a_waypoint_goes_to_the_waypoint_pod(state: ProxyState) -> None:
    plan = outbound(state, "10.96.0.30", 9080)
    assert isinstance(plan, Tunnel) and plan.via_waypoint
    assert (str(plan.pool_key.address), plan.pool_key.port) == ("10.244.1.9", 15008)
    assert plan.request.authority == Authority("10.96.0.30", 9080)
    assert plan.expected_identities == {WAYPOINT}
    assert plan.destination.name == "waypoint-0"
    assert plan.service is not None and plan.service.name == "reviews"


def test_pod_ip_with_a_workload_waypoint_goes_to_the_waypoint(state: ProxyState) -> None:
    plan = outbound(state, "10.244.2.8", 8080)
    assert isinstance(plan, Tunnel) and plan.via_waypoint
    assert plan.request.authority == Authority("10.244.2.8", 8080)
    assert plan.expected_identities == {WAYPOINT}


def test_destinations_without_a_waypoint_go_direct(state: ProxyState) -> None:
    plan = outbound(state, "10.96.0.40", 9080)
    assert isinstance(plan, Tunnel) and not plan.via_waypoint
    assert plan.request.authority == Authority("10.244.2.9", 9080)
    # reviews' pod has no waypoint of its own (the label is on its Service)
    direct = outbound(state, "10.244.2.7", 9080)
    assert isinstance(direct, Tunnel) and not direct.via_waypoint


def test_the_waypoint_is_never_sent_to_itself(state: ProxyState) -> None:
    plan = outbound(state, "10.96.0.30", 9080, src="10.244.1.9")
    assert isinstance(plan, Tunnel) and not plan.via_waypoint
    assert plan.request.authority == Authority("10.244.2.7", 9080)


def test_waypoint_without_endpoint_refuses(tmp_path: Path) -> None:
    failed = CLUSTER.replace(
        "{podIP: 10.244.1.9, phase: Running", "{podIP: 10.244.1.9, phase: Failed"
    )
    assert failed != CLUSTER
    state = mesh_state(tmp_path, failed)
    plan = outbound(state, "10.96.0.30", 9080)
    assert isinstance(plan, OutRefuse) and "waypoint" in plan.reason


def hbone(state: ProxyState, authority: str, peer: SpiffeId):
    return decide_hbone(
        state,
        TunnelRequest(Authority.parse(authority), forwarded_for="10.244.1.5:40000"),
        peer_identity=peer,
        peer_ip=ip("10.244.1.9"),
        node="node2",
    )


@pytest.mark.parametrize("authority", ["10.244.2.7:9080", "10.244.2.8:8080"])
def test_direct_tunnels_to_waypoint_served_pods_are_refused(
    state: ProxyState, authority: str
) -> None:
    decision = hbone(state, authority, FRONTEND)
    assert isinstance(decision, Refuse) and (decision.status, decision.flag) == (401, "DENY")
    assert decision.reason.startswith(BYPASS_REASON)
    assert "spiffe://cluster.local/ns/demo/sa/waypoint" in decision.reason
    assert str(FRONTEND) in decision.reason


@pytest.mark.parametrize("authority", ["10.244.2.7:9080", "10.244.2.8:8080"])
def test_the_waypoint_is_admitted_with_the_original_client(
    state: ProxyState, authority: str
) -> None:
    decision = hbone(state, authority, WAYPOINT)
    assert isinstance(decision, Admit) and str(decision.source_ip) == "10.244.1.5"


def test_pods_without_waypoint_admit_anyone_and_plaintext_bypass_is_refused(
    state: ProxyState,
) -> None:
    assert isinstance(hbone(state, "10.244.2.9:9080", FRONTEND), Admit)
    plain = decide_plaintext(
        state,
        source_ip=ip("10.244.2.9"),
        destination_ip=ip("10.244.2.8"),
        destination_port=8080,
        node="node2",
    )
    assert isinstance(plain, Refuse) and plain.status is None
    assert plain.reason.startswith(BYPASS_REASON) and "without identity" in plain.reason


def test_an_unresolvable_waypoint_fails_closed(state: ProxyState) -> None:
    reviews = state.workload_by_ip("10.244.2.7")
    assert reviews is not None and serving_waypoints(state, reviews)
    workloads = [w for w in state.workloads.values() if w.name != "waypoint-0"]
    # The control plane still names the waypoint's identity in the implicit policy ...
    no_waypoint_pod = ProxyState(workloads, state.services.values(), state.policies.values())
    assert bypass_refusal(no_waypoint_pod, reviews, WAYPOINT) is None
    assert bypass_refusal(no_waypoint_pod, reviews, FRONTEND) is not None
    # ... without it, nobody is accepted.
    nothing_known = ProxyState(workloads, state.services.values())
    reason = bypass_refusal(nothing_known, reviews, WAYPOINT)
    assert reason is not None and "an unresolved waypoint" in reason


def test_plain_tcp_destinations_are_unaffected(state: ProxyState) -> None:
    assert outbound(state, "192.0.2.1", 80) == PlainTcp(ip("192.0.2.1"), 80)


def test_config_dump_shows_waypoints(state: ProxyState) -> None:
    ratings = state.workload_by_ip("10.244.2.8")
    reviews = state.services["demo/reviews.demo.svc.cluster.local"]
    expected = {"destination": "/10.96.0.99", "hboneMtlsPort": 15008}
    assert ratings is not None and workload_json(ratings)["waypoint"] == expected
    assert service_json(reviews, state)["waypoint"] == expected
    waypoint_pod = state.workload_by_ip("10.244.1.9")
    assert waypoint_pod is not None and workload_json(waypoint_pod)["waypoint"] is None
    assert workload_json(waypoint_pod)["protocol"] == "HBONE"


def test_the_workloads_allow_policies_do_not_refuse_its_waypoint(tmp_path: Path) -> None:
    only_frontend = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-only-frontend, namespace: demo}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/frontend]}}]}]
"""
    state = mesh_state(tmp_path, CLUSTER + only_frontend)
    admitted = hbone(state, "10.244.2.7:9080", WAYPOINT)
    assert isinstance(admitted, Admit)
    assert admitted.decision.policy == "demo/istio_allow_waypoint_demo_waypoint"
    other = SpiffeId("cluster.local", "demo", "other")
    refused = hbone(state, "10.244.2.7:9080", other)
    assert isinstance(refused, Refuse) and refused.reason.startswith(BYPASS_REASON)


def test_ingress_gateways_may_reach_waypoint_served_pods(tmp_path: Path) -> None:
    ingress = """\
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: demo}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels: {istio: ingressgateway, istio.io/dataplane-mode: none}
spec: {nodeName: node1, serviceAccountName: istio-ingressgateway}
status: {podIP: 10.244.1.20, phase: Running, conditions: [{type: Ready, status: "True"}]}
"""
    state = mesh_state(tmp_path, CLUSTER + ingress)
    gateway = SpiffeId("cluster.local", "istio-system", "istio-ingressgateway")
    assert isinstance(hbone(state, "10.244.2.7:9080", gateway), Admit)
    assert isinstance(hbone(state, "10.244.2.7:9080", FRONTEND), Refuse)


def test_a_vip_of_a_service_without_waypoint_reaches_a_workload_waypoint_with_the_pod_address(
    tmp_path: Path,
) -> None:
    ratings_svc = """\
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: demo}
spec:
  selector: {app: ratings}
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
    state = mesh_state(tmp_path, CLUSTER + ratings_svc)
    plan = outbound(state, "10.96.0.50", 80)
    assert isinstance(plan, Tunnel) and plan.via_waypoint
    assert plan.request.authority == Authority("10.244.2.8", 8080)
    assert plan.expected_identities == {WAYPOINT}
