"""Outbound plans and inbound decisions over a small two-node mesh state."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest
import yaml

from ztunnel.identity.spiffe import SpiffeId
from ztunnel.proxy.hbone import Authority, TunnelRequest
from ztunnel.proxy.inbound import Admit, Refuse, client_address, decide_hbone, decide_plaintext
from ztunnel.proxy.outbound import PlainTcp, Tunnel, new_traceparent, plan_outbound
from ztunnel.proxy.outbound import Refuse as OutRefuse
from ztunnel.state.local_file import parse_state
from ztunnel.state.proxy_state import LoadBalancer, ProxyState

MESH = """
workloads:
- {name: frontend, namespace: demo, serviceAccount: frontend, workloadIps: [10.244.1.5],
   protocol: HBONE, node: node1, workloadName: frontend, workloadType: deployment,
   canonicalName: frontend, canonicalRevision: v1, clusterId: Kubernetes}
- {name: backend-1, namespace: demo, serviceAccount: backend, workloadIps: [10.244.2.5],
   protocol: HBONE, node: node2,
   services: {demo/backend.demo.svc.cluster.local: {80: 8080}},
   authorizationPolicies: [istio-system/istio_converted_static_strict]}
- {name: legacy, namespace: old, workloadIps: [10.244.2.9], node: node2,
   services: {old/legacy.old.svc.cluster.local: {80: 8080}}}
- {name: reviews, namespace: demo, serviceAccount: reviews, workloadIps: [10.244.2.7],
   protocol: HBONE, node: node2,
   services: {demo/reviews.demo.svc.cluster.local: {9080: 9080}}}
- {name: waypoint, namespace: demo, serviceAccount: waypoint, workloadIps: [10.244.1.9],
   protocol: HBONE, node: node1,
   services: {demo/waypoint.demo.svc.cluster.local: {15008: 15008}}}
services:
- {name: backend, namespace: demo, vips: [10.96.0.10], ports: {80: 8080},
   subjectAltNames: [spiffe://cluster.local/ns/demo/sa/backend-canary, not-a-spiffe-id]}
- {name: legacy, namespace: old, vips: [10.96.0.20], ports: {80: 8080}}
- {name: reviews, namespace: demo, vips: [10.96.0.30], ports: {9080: 9080},
   waypoint: {destination: demo/waypoint.demo.svc.cluster.local}}
- {name: waypoint, namespace: demo, vips: [10.96.0.99], ports: {15008: 15008}}
policies:
- name: istio_converted_static_strict
  namespace: istio-system
  scope: WorkloadSelector
  action: Deny
  rules: [[[{notPrincipals: ["*"]}]]]
- name: backend-only-frontend-8080
  namespace: demo
  scope: Namespace
  action: Allow
  rules: [[[{principals: [cluster.local/ns/demo/sa/frontend, cluster.local/ns/demo/sa/waypoint]}],
           [{destinationPorts: [8080, 9080]}]]]
"""

FRONTEND = SpiffeId("cluster.local", "demo", "frontend")
BACKEND = SpiffeId("cluster.local", "demo", "backend")
WAYPOINT = SpiffeId("cluster.local", "demo", "waypoint")
ip = ipaddress.ip_address


@pytest.fixture
def state() -> ProxyState:
    return parse_state(yaml.safe_load(MESH), "mesh.yaml").to_proxy_state()


def outbound(state: ProxyState, dst: str, port: int, src: str = "10.244.1.5", node: str = "node1"):
    return plan_outbound(
        state,
        LoadBalancer(),
        source_ip=ip(src),
        source_port=40000,
        destination_ip=ip(dst),
        destination_port=port,
        node=node,
        rng=random.Random(3),
    )


def test_vip_goes_over_hbone_to_the_endpoint(state: ProxyState) -> None:
    plan = outbound(state, "10.96.0.10", 80)
    assert isinstance(plan, Tunnel)
    assert plan.pool_key.source == FRONTEND and plan.pool_key.destination == BACKEND
    assert (str(plan.pool_key.address), plan.pool_key.port) == ("10.244.2.5", 15008)
    request = plan.request
    assert request.authority == Authority("10.244.2.5", 8080)
    assert request.forwarded_for == "10.244.1.5:40000"
    assert request.forwarded_host == "backend.demo.svc.cluster.local"
    assert request.baggage["k8s.deployment.name"] == "frontend"
    assert request.baggage["service.version"] == "v1"
    assert request.traceparent is not None and request.traceparent.startswith("00-")
    # The service's SPIFFE SANs are accepted too; non-SPIFFE SANs are ignored.
    assert plan.expected_identities == {
        BACKEND,
        SpiffeId("cluster.local", "demo", "backend-canary"),
    }
    headers = dict(request.headers())
    assert headers[b"forwarded"] == b'for="10.244.1.5:40000";host=backend.demo.svc.cluster.local'


def test_pod_ip_is_taken_as_is(state: ProxyState) -> None:
    plan = outbound(state, "10.244.2.5", 8080)
    assert isinstance(plan, Tunnel) and plan.request.authority == Authority("10.244.2.5", 8080)
    assert plan.service is None and plan.request.forwarded_host is None


def test_outside_and_non_hbone_destinations_go_plain(state: ProxyState) -> None:
    assert outbound(state, "192.0.2.10", 443) == PlainTcp(ip("192.0.2.10"), 443)
    legacy = outbound(state, "10.96.0.20", 80)
    assert isinstance(legacy, PlainTcp) and (str(legacy.address), legacy.port) == (
        "10.244.2.9",
        8080,
    )


def test_service_with_waypoint_goes_to_the_waypoint_with_original_authority(
    state: ProxyState,
) -> None:
    plan = outbound(state, "10.96.0.30", 9080)
    assert isinstance(plan, Tunnel) and plan.via_waypoint
    assert plan.request.authority == Authority("10.96.0.30", 9080)
    assert str(plan.pool_key.address) == "10.244.1.9" and plan.expected_identities == {WAYPOINT}


def test_unknown_or_foreign_source_and_bad_port_are_refused(state: ProxyState) -> None:
    assert isinstance(outbound(state, "10.96.0.10", 80, src="10.244.1.99"), OutRefuse)
    foreign = outbound(state, "10.96.0.10", 80, node="node2")
    assert isinstance(foreign, OutRefuse) and "node2" in foreign.reason
    no_port = outbound(state, "10.96.0.10", 81)
    assert isinstance(no_port, OutRefuse) and "no port 81" in no_port.reason


def test_traceparent_is_random_per_connection_and_well_formed() -> None:
    rng = random.Random(1)
    a, b = new_traceparent(rng), new_traceparent(rng)
    assert a != b
    version, trace, span, flags = a.split("-")
    assert (version, flags, len(trace), len(span)) == ("00", "00", 32, 16)


def request(authority: str, forwarded_for: str | None = "10.244.1.5:40000") -> TunnelRequest:
    return TunnelRequest(Authority.parse(authority), forwarded_for=forwarded_for)


def hbone(
    state: ProxyState, req: TunnelRequest, peer: SpiffeId = FRONTEND, peer_ip: str = "172.30.1.1"
):
    return decide_hbone(state, req, peer_identity=peer, peer_ip=ip(peer_ip), node="node2")


def test_allowed_tunnel_connects_from_the_real_client_ip(state: ProxyState) -> None:
    decision = hbone(state, request("10.244.2.5:8080"))
    assert isinstance(decision, Admit)
    assert (str(decision.upstream_ip), decision.upstream_port) == ("10.244.2.5", 8080)
    assert str(decision.source_ip) == "10.244.1.5"
    assert decision.source_workload is not None and decision.source_workload.name == "frontend"
    assert decision.decision.policy == "demo/backend-only-frontend-8080"


def test_forwarded_is_not_believed_from_a_peer_that_cannot_speak_for_it(state: ProxyState) -> None:
    reviews = SpiffeId("cluster.local", "demo", "reviews")
    backend = state.workload_by_ip("10.244.2.5")
    assert backend is not None
    claim = request("10.244.2.5:8080", "10.244.1.5:40000")
    # frontend's own ztunnel (presenting frontend's certificate) may speak for 10.244.1.5 ...
    assert str(client_address(state, claim, FRONTEND, ip("172.30.1.1"), backend)) == "10.244.1.5"
    # ... reviews may not: the connection's own address is used instead.
    assert str(client_address(state, claim, reviews, ip("172.30.1.1"), backend)) == "172.30.1.1"
    garbled = request("10.244.2.5:8080", "somewhere")
    assert str(client_address(state, garbled, FRONTEND, ip("172.30.1.1"), backend)) == "172.30.1.1"


def test_waypoint_may_forward_the_original_client(state: ProxyState) -> None:
    decision = hbone(state, request("10.244.2.7:9080", "10.244.1.5:40000"), peer=WAYPOINT)
    assert isinstance(decision, Admit) and str(decision.source_ip) == "10.244.1.5"
    untrusted = hbone(state, request("10.244.2.5:8080", "10.244.1.5:40000"), peer=WAYPOINT)
    # backend has no waypoint: the waypoint's forwarded address is not believed.
    assert isinstance(untrusted, Admit) and str(untrusted.source_ip) == "172.30.1.1"


@pytest.mark.parametrize(
    ("authority", "status", "text"),
    [
        ("10.244.2.5:15008", 503, "own port"),
        ("10.244.1.5:8080", 400, "not on this node"),
        ("10.244.9.9:8080", 400, "not a known workload"),
        ("backend.demo.svc.cluster.local:80", 400, "host name"),
        ("10.244.2.5:9999", 401, "no ALLOW policy matched"),
    ],
)
def test_refused_tunnels(state: ProxyState, authority: str, status: int, text: str) -> None:
    decision = hbone(state, request(authority))
    assert isinstance(decision, Refuse) and decision.status == status and text in decision.reason


def test_strict_refuses_plaintext_and_permissive_admits_with_policy(state: ProxyState) -> None:
    strict = decide_plaintext(
        state,
        source_ip=ip("10.244.2.9"),
        destination_ip=ip("10.244.2.5"),
        destination_port=8080,
        node="node2",
    )
    assert isinstance(strict, Refuse) and strict.status is None and strict.flag == "DENY"
    assert "istio_converted_static_strict" in strict.reason
    # reviews is served by a waypoint: plaintext to it bypasses the waypoint.
    bypass = decide_plaintext(
        state,
        source_ip=ip("10.244.2.9"),
        destination_ip=ip("10.244.2.7"),
        destination_port=9080,
        node="node2",
    )
    assert isinstance(bypass, Refuse) and bypass.reason.startswith("bypassed waypoint")
    # Without its waypoint, reviews is PERMISSIVE (no strict policy bound), but the
    # namespace ALLOW wants a principal.
    services = [dataclasses.replace(s, waypoint=None) for s in state.services.values()]
    state = ProxyState(state.workloads.values(), services, state.policies.values())
    permissive = decide_plaintext(
        state,
        source_ip=ip("10.244.2.9"),
        destination_ip=ip("10.244.2.7"),
        destination_port=9080,
        node="node2",
    )
    assert isinstance(permissive, Refuse) and "no ALLOW policy matched" in permissive.reason
    open_state = ProxyState(state.workloads.values(), state.services.values())
    admitted = decide_plaintext(
        open_state,
        source_ip=ip("10.244.2.9"),
        destination_ip=ip("10.244.2.7"),
        destination_port=9080,
        node="node2",
    )
    assert isinstance(admitted, Admit) and str(admitted.source_ip) == "10.244.2.9"
    elsewhere = decide_plaintext(
        state,
        source_ip=ip("10.244.2.9"),
        destination_ip=ip("10.244.1.5"),
        destination_port=80,
        node="node2",
    )
    assert isinstance(elsewhere, Refuse) and elsewhere.flag == "CONNECT"
