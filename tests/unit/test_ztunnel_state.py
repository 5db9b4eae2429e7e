"""ztunnel's mesh view: the local state file, lookups, resolution, policy scope."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztunnel.errors import StateFileError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.local_file import load_state_file, parse_state
from ztunnel.state.proxy_state import (
    LoadBalancer,
    NoHealthyEndpoint,
    Passthrough,
    ProxyState,
    Strategy,
    Upstream,
)
from ztunnel.state.security import Action, Authorization, Scope, StringMatch, StringMatchKind
from ztunnel.state.workload import (
    HealthPolicy,
    NamespacedHostname,
    NetworkAddress,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)

STATE = """
workloads:
- name: backend-v1
  namespace: demo
  serviceAccount: backend
  workloadIps: [10.244.1.5]
  protocol: HBONE
  node: node1
  services: {demo/backend.demo.svc.cluster.local: {80: 8080}}
  authorizationPolicies: [demo/only-frontend]
- name: backend-v2
  namespace: demo
  serviceAccount: backend
  workloadIps: [10.244.2.5]
  protocol: HBONE
  node: node2
  services: {demo/backend.demo.svc.cluster.local: {80: 9090}}
- name: backend-sick
  namespace: demo
  workloadIps: [10.244.2.6]
  protocol: HBONE
  status: Unhealthy
  services: {demo/backend.demo.svc.cluster.local: {}}
- name: client
  namespace: other
  workloadIps: [10.244.1.7]
  waypoint: {destination: other/waypoint.other.svc.cluster.local}
services:
- name: backend
  namespace: demo
  hostname: backend.demo.svc.cluster.local
  vips: [/10.96.0.10]
  ports: {80: 0, 443: 8443}
  waypoint: /10.96.0.99
policies:
- name: global-deny
  namespace: istio-system
  scope: Global
  action: Deny
  rules: [[[{principals: ["*/sa/evil"]}]]]
- name: ns-allow
  namespace: demo
  scope: Namespace
  action: Allow
  rules: [[[{namespaces: [demo]}], [{destinationPorts: [8080]}]]]
- name: only-frontend
  namespace: demo
  scope: WorkloadSelector
  action: Allow
  rules: [[[{principals: [{Exact: cluster.local/ns/demo/sa/frontend}]}]]]
- name: unbound
  namespace: demo
  scope: WorkloadSelector
  action: Deny
  rules: [[[{notPrincipals: ["*"]}]]]
"""


@pytest.fixture
def state() -> ProxyState:
    import yaml

    return parse_state(yaml.safe_load(STATE), "state.yaml").to_proxy_state()


def test_local_file_translates_every_section(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(STATE)
    loaded = load_state_file(path)
    assert [w.uid for w in loaded.workloads][:2] == [
        "Kubernetes//Pod/demo/backend-v1",
        "Kubernetes//Pod/demo/backend-v2",
    ]
    v1 = loaded.workloads[0]
    assert v1.tunnel_protocol is TunnelProtocol.HBONE
    assert v1.addresses == (ipaddress.ip_address("10.244.1.5"),)
    assert v1.identity == SpiffeId("cluster.local", "demo", "backend")
    assert loaded.workloads[2].status is WorkloadStatus.UNHEALTHY
    assert loaded.workloads[2].identity.service_account == "default"
    assert loaded.workloads[3].waypoint is not None
    assert loaded.workloads[3].waypoint.destination == NamespacedHostname(
        "other", "waypoint.other.svc.cluster.local"
    )
    service = loaded.services[0]
    assert service.key == "demo/backend.demo.svc.cluster.local"
    assert service.addresses == (NetworkAddress(ipaddress.ip_address("10.96.0.10")),)
    assert [(p.service_port, p.target_port) for p in service.ports] == [(80, 0), (443, 8443)]
    assert service.waypoint is not None and service.waypoint.hbone_mtls_port == 15008
    deny = loaded.policies[0]
    assert (deny.scope, deny.action) == (Scope.GLOBAL, Action.DENY)
    assert deny.rules[0].clauses[0].matches[0].principals == (
        StringMatch(StringMatchKind.SUFFIX, "/sa/evil"),
    )
    assert loaded.policies[2].rules[0].clauses[0].matches[0].principals == (
        StringMatch(StringMatchKind.EXACT, "cluster.local/ns/demo/sa/frontend"),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workloads: [{name: a}]", "workloads[0]: field 'namespace': is required"),
        (
            "workloads: [{name: a, namespace: b, workloadIps: [10.0.0.300]}]",
            "workloads[0] (b/a): field 'workloadIps'",
        ),
        ("workloads: [{name: a, namespace: b, colour: red}]", "field 'colour': unknown field"),
        (
            "workloads: [{name: a, namespace: b, protocol: QUIC}]",
            "field 'protocol': unknown value 'QUIC'",
        ),
        (
            "services: [{name: s, namespace: n, ports: {80: 70000}}]",
            "services[0] (n/s.n.svc.cluster.local): field 'ports': port 70000 is out of range",
        ),
        (
            "policies: [{name: p, namespace: n, scope: Global}]",
            "policies[0] (n/p): field 'action': is required",
        ),
        (
            "policies: [{name: p, namespace: n, scope: Global, action: Allow,"
            " rules: [[[{sourceIps: [not-an-ip]}]]]}]",
            "policies[0] (n/p): rules[0][0][0]: field 'sourceIps'",
        ),
        (
            "policies: [{name: p, namespace: n, scope: Global, action: Allow,"
            " rules: [[[{principal: [x]}]]]}]",
            "rules[0][0][0]: field 'principal': unknown field",
        ),
        (
            "workloads: [{name: a, namespace: b}, {name: a, namespace: b}]",
            "duplicate workload 'Kubernetes//Pod/b/a'",
        ),
        ("shapes: []", "field 'shapes': unknown field"),
    ],
)
def test_local_file_errors_name_file_entry_and_field(text: str, expected: str) -> None:
    import yaml

    with pytest.raises(StateFileError) as info:
        parse_state(yaml.safe_load(text), "node.yaml")
    assert str(info.value).startswith("node.yaml")
    assert expected in str(info.value)


def test_local_file_reports_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads:\n  - name: [unclosed\n")
    with pytest.raises(StateFileError, match=r"bad\.yaml: line \d+: not valid YAML"):
        load_state_file(bad)
    with pytest.raises(StateFileError, match="cannot read") as info:
        load_state_file(tmp_path / "missing.yaml")
    assert info.value.hint


def test_empty_file_is_an_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_state_file(path).to_proxy_state().workloads == {}


def test_lookups_by_ip_and_vip(state: ProxyState) -> None:
    workload = state.workload_by_ip("10.244.2.5")
    assert workload is not None and workload.name == "backend-v2"
    assert state.workload_by_ip("10.244.9.9") is None
    assert state.workload_by_ip("10.244.2.5", network="elsewhere") is None
    service = state.service_by_vip("10.96.0.10")
    assert service is not None and service.name == "backend"
    assert state.service_by_vip("10.244.2.5") is None


def test_vip_resolves_round_robin_over_healthy_endpoints_with_target_ports(
    state: ProxyState,
) -> None:
    balancer = LoadBalancer(Strategy.ROUND_ROBIN)
    picks = [state.resolve("10.96.0.10", 80, balancer) for _ in range(4)]
    assert all(isinstance(p, Upstream) for p in picks)
    seen = [(str(p.address), p.port) for p in picks if isinstance(p, Upstream)]
    # The unhealthy endpoint is never chosen; each endpoint's own target port is used.
    assert seen == [("10.244.1.5", 8080), ("10.244.2.5", 9090)] * 2
    first = picks[0]
    assert isinstance(first, Upstream) and first.service is not None and first.uses_hbone


def test_service_target_port_applies_when_workload_lists_none(state: ProxyState) -> None:
    picked = state.resolve("10.96.0.10", 443, LoadBalancer())
    assert isinstance(picked, Upstream) and picked.port == 8443


def test_random_strategy_uses_the_injected_rng(state: ProxyState) -> None:
    def run(seed: int) -> list[str]:
        balancer = LoadBalancer(Strategy.RANDOM, random.Random(seed))
        out = []
        for _ in range(20):
            picked = state.resolve("10.96.0.10", 80, balancer)
            assert isinstance(picked, Upstream)
            out.append(picked.workload.name)
        return out

    assert run(7) == run(7)
    assert set(run(7)) == {"backend-v1", "backend-v2"}


def test_unknown_port_unhealthy_service_and_passthrough() -> None:
    import yaml

    state = parse_state(
        yaml.safe_load(
            """
workloads:
- {name: w, namespace: n, workloadIps: [10.0.0.1], status: Unhealthy,
   services: {n/s.n.svc.cluster.local: {80: 8080}}}
services:
- {name: s, namespace: n, vips: [10.96.0.1], ports: {80: 8080}}
- {name: t, namespace: n, vips: [10.96.0.2], ports: {80: 8080},
   loadBalancer: {healthPolicy: ALLOW_ALL}}
"""
        )
    ).to_proxy_state()
    balancer = LoadBalancer()
    unknown_port = state.resolve("10.96.0.1", 81, balancer)
    assert isinstance(unknown_port, NoHealthyEndpoint) and "no port 81" in unknown_port.reason
    unhealthy = state.resolve("10.96.0.1", 80, balancer)
    assert isinstance(unhealthy, NoHealthyEndpoint) and "no healthy endpoint" in unhealthy.reason
    outside = state.resolve("192.0.2.1", 443, balancer)
    assert outside == Passthrough(ipaddress.ip_address("192.0.2.1"), 443)
    pod = state.resolve("10.0.0.1", 8080, balancer)
    assert isinstance(pod, Upstream) and pod.service is None and not pod.uses_hbone
    # No endpoint of t; ALLOW_ALL alone does not invent one.
    assert isinstance(state.resolve("10.96.0.2", 80, balancer), NoHealthyEndpoint)
    service = state.services["n/t.n.svc.cluster.local"]
    assert service.load_balancing is not None
    assert service.load_balancing.health_policy is HealthPolicy.ALLOW_ALL


def test_policies_for_applies_scope(state: ProxyState) -> None:
    v1 = state.workload_by_ip("10.244.1.5")
    v2 = state.workload_by_ip("10.244.2.5")
    client = state.workload_by_ip("10.244.1.7")
    assert v1 is not None and v2 is not None and client is not None
    assert [p.key for p in state.policies_for(v1)] == [
        "demo/ns-allow",
        "demo/only-frontend",
        "istio-system/global-deny",
    ]
    assert [p.key for p in state.policies_for(v2)] == ["demo/ns-allow", "istio-system/global-deny"]
    assert [p.key for p in state.policies_for(client)] == ["istio-system/global-deny"]


_NAMESPACES = ("a", "b", "istio-system")


@st.composite
def _mesh(draw: st.DrawFn) -> tuple[list[Workload], list[Service], list[Authorization]]:
    policies = [
        Authorization(
            name=f"p{i}",
            namespace=draw(st.sampled_from(_NAMESPACES)),
            scope=draw(st.sampled_from(list(Scope))),
            action=Action.ALLOW,
        )
        for i in range(draw(st.integers(0, 8)))
    ]
    keys = [p.key for p in policies] + ["a/missing"]
    workloads = [
        Workload(
            uid=f"w{i}",
            name=f"w{i}",
            namespace=draw(st.sampled_from(_NAMESPACES)),
            authorization_policies=tuple(draw(st.lists(st.sampled_from(keys), max_size=4))),
        )
        for i in range(draw(st.integers(1, 5)))
    ]
    services = [
        Service(
            name=f"s{i}",
            namespace=draw(st.sampled_from(_NAMESPACES)),
            hostname=draw(st.sampled_from(("x.example", "y.example", f"s{i}.svc"))),
        )
        for i in range(draw(st.integers(0, 5)))
    ]
    return workloads, services, policies


@given(_mesh())
def test_indexed_lookups_answer_as_a_scan_of_the_whole_state(
    mesh: tuple[list[Workload], list[Service], list[Authorization]],
) -> None:
    workloads, services, policies = mesh
    state = ProxyState(workloads, services, policies)
    for workload in [*state.workloads.values(), *workloads]:
        selected = set(workload.authorization_policies)
        scanned = sorted(
            (
                p
                for p in state.policies.values()
                if p.scope is Scope.GLOBAL
                or (p.scope is Scope.NAMESPACE and p.namespace == workload.namespace)
                or (p.scope is Scope.WORKLOAD_SELECTOR and p.key in selected)
            ),
            key=lambda p: p.key,
        )
        assert state.policies_for(workload) == tuple(scanned)
        assert state.policies_for(workload) == tuple(scanned)  # remembered, same answer
    for hostname in ("x.example", "y.example", "s0.svc", "nowhere"):
        first = next((s for s in state.services.values() if s.hostname == hostname), None)
        assert state.service_by_hostname(hostname) is first
