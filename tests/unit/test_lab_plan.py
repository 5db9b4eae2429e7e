"""The lab's address plan and names: pure functions, no root."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab import plan
from lab.errors import LabSpecError

lab_names = st.from_regex(r"[a-z][a-z0-9]{0,11}", fullmatch=True)
k8s_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


@pytest.mark.parametrize("name", ["t1", "lab", "bench2", "a", "abcdefghijkl"])
def test_valid_lab_names(name: str) -> None:
    assert plan.validate_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "1lab", "t-1", "Lab", "abcdefghijklm", "a_b", "a.b", "a b"])
def test_invalid_lab_names_are_refused_with_a_hint(name: str) -> None:
    with pytest.raises(LabSpecError) as err:
        plan.validate_lab_name(name)
    assert repr(name) in err.value.message
    assert err.value.hint


@given(lab_names)
def test_octet_is_stable_and_in_range(name: str) -> None:
    octet = plan.lab_octet(name)
    assert 1 <= octet <= 254
    assert plan.lab_octet(name) == octet


def test_address_plan_of_a_lab() -> None:
    p = plan.AddressPlan(30)
    assert str(p.fabric_cidr) == "172.30.30.0/24"
    assert p.fabric_ip == "172.30.30.1"
    assert p.outside_ip == "172.30.30.254"
    assert p.node_ip(1) == "172.30.30.11"
    assert p.node_ip(2) == "172.30.30.12"
    assert str(p.pod_cidr(2)) == "10.244.2.0/24"
    assert p.pod_gateway(3) == "10.244.3.1"


@given(st.integers(1, 254), st.integers(1, plan.MAX_NODES))
def test_every_node_address_is_on_the_fabric_and_distinct(octet: int, index: int) -> None:
    p = plan.AddressPlan(octet)
    ip = ipaddress.IPv4Address(p.node_ip(index))
    assert ip in p.fabric_cidr
    assert str(ip) not in (p.fabric_ip, p.outside_ip, str(p.fabric_cidr.broadcast_address))
    assert ipaddress.IPv4Address(p.pod_gateway(index)) in p.pod_cidr(index)


@pytest.mark.parametrize("bad", [0, 255, -1])
def test_octet_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(LabSpecError):
        plan.AddressPlan(bad)


@pytest.mark.parametrize("bad", [0, plan.MAX_NODES + 1])
def test_node_index_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(LabSpecError):
        plan.AddressPlan(1).node_ip(bad)
    with pytest.raises(LabSpecError):
        plan.validate_node_count(bad)


def test_pod_addresses_start_at_2_and_fill_gaps() -> None:
    assert plan.allocate_pod_ip(1, []) == "10.244.1.2"
    assert plan.allocate_pod_ip(1, ["10.244.1.2", "10.244.1.3"]) == "10.244.1.4"
    assert plan.allocate_pod_ip(2, ["10.244.2.3"]) == "10.244.2.2"


def test_pod_addresses_run_out_with_a_clear_error() -> None:
    used = [f"10.244.1.{h}" for h in range(2, 255)]
    with pytest.raises(LabSpecError, match="no free pod address"):
        plan.allocate_pod_ip(1, used)


def test_vips_come_from_the_service_range() -> None:
    first = plan.allocate_vip([])
    assert first == "10.96.0.10"
    second = plan.allocate_vip([first])
    assert second == "10.96.0.11"
    assert ipaddress.IPv4Address(second) in plan.SERVICE_CIDR


def test_namespace_names_carry_the_prefix() -> None:
    names = [
        plan.fabric_netns("t1"),
        plan.outside_netns("t1"),
        plan.node_netns("t1", 1),
        plan.pod_netns("t1", "demo", "backend-v1"),
    ]
    assert names == ["t1-fabric", "t1-outside", "t1-node1", "t1-pod-backend-v1.demo"]
    assert all(n.startswith(plan.netns_prefix("t1")) for n in names)


@given(lab_names, lab_names, k8s_names, k8s_names)
def test_two_labs_never_claim_each_others_namespaces(a: str, b: str, ns: str, pod: str) -> None:
    if a == b:
        return
    mine = [plan.fabric_netns(a), plan.node_netns(a, 1), plan.pod_netns(a, ns, pod)]
    assert not any(n.startswith(plan.netns_prefix(b)) for n in mine)


@given(k8s_names, k8s_names)
def test_host_veth_names_fit_the_kernel_limit(ns: str, pod: str) -> None:
    name = plan.host_ifname(ns, pod)
    assert len(name) <= plan.IFNAME_MAX
    assert name.startswith("veth")
    assert plan.host_ifname(ns, pod) == name


def test_host_veth_names_differ_per_pod() -> None:
    names = {plan.host_ifname("demo", f"pod-{i}") for i in range(500)}
    assert len(names) == 500


def test_fabric_port_names_are_bounded() -> None:
    assert plan.fabric_port_ifname("node200") == "node200"
    with pytest.raises(LabSpecError):
        plan.fabric_port_ifname("a-very-long-interface")


def test_node_names_round_trip() -> None:
    assert plan.node_index(plan.node_name(7)) == 7
    assert plan.node_index("outside") is None
    assert plan.node_index("node0") is None


@pytest.mark.parametrize("name", ["backend", "a", "v1-2"])
def test_dns_labels_accepted(name: str) -> None:
    assert plan.validate_k8s_name(name, "pod") == name


@pytest.mark.parametrize("name", ["", "Backend", "-a", "a-", "a.b", "x" * 64])
def test_non_dns_labels_refused(name: str) -> None:
    with pytest.raises(LabSpecError, match="not a DNS label"):
        plan.validate_k8s_name(name, "pod")


def test_service_names_short_only_in_own_namespace() -> None:
    assert plan.service_hostnames("backend", "demo", from_namespace="demo") == [
        "backend",
        "backend.demo",
        "backend.demo.svc.cluster.local",
    ]
    assert plan.service_hostnames("backend", "demo", from_namespace="other") == [
        "backend.demo",
        "backend.demo.svc.cluster.local",
    ]
