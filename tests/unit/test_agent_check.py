"""`ambient agent check`: the judgement over recorded kernel facts (no root, no kernel)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agent.check import NodeFacts, TcProbe, evaluate, parse_release, redirect_rules_in

# Recorded on a healthy routed-CNI node (values as the collector reports them).
HEALTHY = NodeFacts.from_json(
    {
        "release": "6.8.0-49-generic",
        "euid": 0,
        "bpf_syscall_error": None,
        "jit_enable": 1,
        "bpffs_mounted": True,
        "btf_vmlinux": True,
        "kernel_headers": "/lib/modules/6.8.0-49-generic/build",
        "bcc_importable": True,
        "cgroup2_mount": "/sys/fs/cgroup",
        "ip_transparent_error": None,
        "tc_probe": {
            "scratch_netns_error": None,
            "sk_assign_error": None,
            "clsact_error": None,
            "attach_error": None,
        },
        "programs": [["pod_egress", None], ["node_ingress", None]],
        "veths": 12,
        "bridged_veths": 0,
        "pod_routes": 12,
        "cni_devices": [],
        "redirect_rules": [],
        "firewall_listing_error": None,
    }
)


def status(facts: NodeFacts) -> dict[str, str]:
    return {c.name: c.status for c in evaluate(facts)}


def check_named(facts: NodeFacts, name: str) -> tuple[str, str, str]:
    (found,) = [c for c in evaluate(facts) if c.name == name]
    return found.status, found.detail, found.fix


def test_healthy_node_passes_everything() -> None:
    result = status(HEALTHY)
    assert set(result.values()) == {"PASS"}, result
    assert list(result) == [
        "root",
        "kernel",
        "bpf-syscall",
        "bpf-jit",
        "bpffs",
        "clsact",
        "bpf_sk_assign",
        "bcc",
        "cgroup-v2",
        "ip-transparent",
        "cni-routing",
        "other-mesh",
        "pod_egress",
        "node_ingress",
    ]


def test_facts_round_trip_through_json() -> None:
    text = json.dumps(HEALTHY.to_json())
    assert NodeFacts.from_json(json.loads(text)) == HEALTHY


@pytest.mark.parametrize(
    ("release", "expected"),
    [("5.4.0-150-generic", "FAIL"), ("5.6.19", "FAIL"), ("5.7.0", "PASS"), ("6.1.0-26", "PASS")],
)
def test_kernel_floor_is_5_7(release: str, expected: str) -> None:
    got, detail, fix = check_named(dataclasses.replace(HEALTHY, release=release), "kernel")
    assert got == expected
    if expected == "FAIL":
        assert "5.7" in fix and release in detail


def test_unparsable_release_warns() -> None:
    assert check_named(dataclasses.replace(HEALTHY, release="custom"), "kernel")[0] == "WARN"
    assert parse_release("4.19.0-27-amd64") == (4, 19)
    assert parse_release("weird") is None


def test_missing_sk_assign_helper_fails_with_the_verifiers_words() -> None:
    verifier = "unknown func bpf_sk_assign#124"
    probe = TcProbe(None, verifier, None, None)
    got, detail, fix = check_named(dataclasses.replace(HEALTHY, tc_probe=probe), "bpf_sk_assign")
    assert got == "FAIL"
    assert verifier in detail
    assert "5.7" in fix


def test_probe_not_run_warns_instead_of_passing() -> None:
    facts = dataclasses.replace(HEALTHY, tc_probe=None)
    assert status(facts)["bpf_sk_assign"] == "WARN"
    assert status(facts)["clsact"] == "WARN"


def test_no_scratch_namespace_means_clsact_not_tried() -> None:
    probe = TcProbe("Operation not permitted", None, None, None)
    got, detail, _ = check_named(dataclasses.replace(HEALTHY, tc_probe=probe), "clsact")
    assert got == "WARN"
    assert "Operation not permitted" in detail
    assert status(dataclasses.replace(HEALTHY, tc_probe=probe))["bpf_sk_assign"] == "PASS"


def test_clsact_and_filter_failures_fail() -> None:
    no_qdisc = TcProbe(None, None, "(2, 'No such file or directory')", None)
    no_filter = TcProbe(None, None, None, "(95, 'Operation not supported')")
    assert check_named(dataclasses.replace(HEALTHY, tc_probe=no_qdisc), "clsact")[0] == "FAIL"
    got, detail, fix = check_named(dataclasses.replace(HEALTHY, tc_probe=no_filter), "clsact")
    assert got == "FAIL"
    assert "Operation not supported" in detail
    assert "CONFIG_NET_CLS_BPF" in fix


def test_no_bpffs_fails_and_says_how_to_mount() -> None:
    got, _, fix = check_named(dataclasses.replace(HEALTHY, bpffs_mounted=False), "bpffs")
    assert got == "FAIL"
    assert "mount -t bpf bpf /sys/fs/bpf" in fix
    assert "HostToContainer" in fix


def test_bpf_syscall_refused_fails() -> None:
    facts = dataclasses.replace(HEALTHY, bpf_syscall_error="Operation not permitted")
    got, detail, _ = check_named(facts, "bpf-syscall")
    assert got == "FAIL" and "Operation not permitted" in detail


@pytest.mark.parametrize(
    ("jit", "expected"), [(1, "PASS"), (0, "WARN"), (2, "WARN"), (None, "WARN")]
)
def test_jit(jit: int | None, expected: str) -> None:
    assert status(dataclasses.replace(HEALTHY, jit_enable=jit))["bpf-jit"] == expected


def test_btf_without_headers_is_not_enough_for_bcc() -> None:
    facts = dataclasses.replace(HEALTHY, kernel_headers=None, btf_vmlinux=True)
    got, detail, fix = check_named(facts, "bcc")
    assert got == "FAIL"
    assert "BTF present" in detail
    assert "linux-headers" in fix


def test_bcc_missing_names_the_right_package() -> None:
    got, _, fix = check_named(dataclasses.replace(HEALTHY, bcc_importable=False), "bcc")
    assert got == "FAIL"
    assert "python3-bpfcc" in fix


def test_cgroup_hybrid_and_missing_warn() -> None:
    hybrid = dataclasses.replace(HEALTHY, cgroup2_mount="/sys/fs/cgroup/unified")
    assert status(hybrid)["cgroup-v2"] == "WARN"
    assert status(dataclasses.replace(HEALTHY, cgroup2_mount=None))["cgroup-v2"] == "WARN"


def test_ip_transparent_refused_names_the_capabilities() -> None:
    facts = dataclasses.replace(HEALTHY, ip_transparent_error="Operation not permitted")
    got, _, fix = check_named(facts, "ip-transparent")
    assert got == "FAIL"
    assert "CAP_NET_ADMIN" in fix


def test_not_root_fails() -> None:
    assert status(dataclasses.replace(HEALTHY, euid=1000))["root"] == "FAIL"


def test_cni_routing_shapes() -> None:
    bridged = dataclasses.replace(HEALTHY, bridged_veths=12, pod_routes=0, cni_devices=("cni0",))
    got, detail, _ = check_named(bridged, "cni-routing")
    assert got == "WARN" and "bridge" in detail and "cni0" in detail
    unrouted = dataclasses.replace(HEALTHY, pod_routes=0)
    assert check_named(unrouted, "cni-routing")[0] == "WARN"
    empty = dataclasses.replace(HEALTHY, veths=0, pod_routes=0)
    assert "no pod veths" in check_named(empty, "cni-routing")[1]
    cilium = dataclasses.replace(HEALTHY, cni_devices=("cilium_host",))
    got, detail, _ = check_named(cilium, "cni-routing")
    assert got == "PASS" and "Cilium" in detail


ISTIO_SAVE = """\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y
COMMIT
"""

NFT_RULESET = """\
table ip mangle {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        meta l4proto tcp tproxy to :15001 meta mark set 0x1
        ip daddr 10.0.0.1 counter accept
    }
}
"""


def test_redirect_rules_are_found_in_both_listings() -> None:
    rules = redirect_rules_in(ISTIO_SAVE)
    assert rules == [
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ]
    assert redirect_rules_in(NFT_RULESET) == ["meta l4proto tcp tproxy to :15001 meta mark set 0x1"]
    assert redirect_rules_in("-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.0.0.2:80\n") == []


def test_istio_capture_on_the_node_fails() -> None:
    facts = dataclasses.replace(HEALTHY, redirect_rules=tuple(redirect_rules_in(ISTIO_SAVE)))
    got, detail, fix = check_named(facts, "other-mesh")
    assert got == "FAIL"
    assert "Istio" in detail
    assert "remove" in fix


def test_unknown_tproxy_rules_warn() -> None:
    facts = dataclasses.replace(HEALTHY, redirect_rules=tuple(redirect_rules_in(NFT_RULESET)))
    got, detail, _ = check_named(facts, "other-mesh")
    assert got == "WARN"
    assert "tproxy" in detail


def test_unlistable_firewall_warns_with_the_reason() -> None:
    facts = dataclasses.replace(
        HEALTHY, redirect_rules=None, firewall_listing_error="iptables-save not installed"
    )
    got, detail, _ = check_named(facts, "other-mesh")
    assert got == "WARN" and "iptables-save not installed" in detail


def test_capture_program_refused_fails_with_its_message() -> None:
    facts = dataclasses.replace(
        HEALTHY, programs=(("pod_egress", "the kernel refused program pod_egress: ..."),)
    )
    result = status(facts)
    assert result["pod_egress"] == "FAIL"
    assert "node_ingress" not in result


def test_read_only_bpffs_is_named_as_such() -> None:
    error = "cannot pin maps under /sys/fs/bpf/ambient-check-7: Read-only file system"
    facts = dataclasses.replace(HEALTHY, programs=(("node_ingress", error),))
    got, detail, fix = check_named(facts, "node_ingress")
    assert got == "FAIL" and "Read-only" in detail
    assert "writable" in fix


# Recorded with 'ambient agent check --facts -o json' on the project's build machine
# (Debian 12 userland, a 6.18 kernel without its own headers package, hybrid cgroups),
# and inside the image with only the capabilities a container without CAP_BPF gets.
BUILD_MACHINE = {
    "release": "6.18.44-fc-v669",
    "euid": 0,
    "bpf_syscall_error": None,
    "jit_enable": 1,
    "bpffs_mounted": True,
    "btf_vmlinux": True,
    "kernel_headers": "/usr/src/linux-headers-6.1.0-56-amd64",
    "bcc_importable": True,
    "cgroup2_mount": "/sys/fs/cgroup/unified",
    "ip_transparent_error": None,
    "tc_probe": {
        "scratch_netns_error": None,
        "sk_assign_error": None,
        "clsact_error": None,
        "attach_error": None,
    },
    "programs": [["pod_egress", None], ["node_ingress", None]],
    "veths": 0,
    "bridged_veths": 0,
    "pod_routes": 0,
    "cni_devices": [],
    "redirect_rules": [],
    "firewall_listing_error": None,
}


def test_recorded_build_machine() -> None:
    result = status(NodeFacts.from_json(BUILD_MACHINE))
    warned = {name for name, s in result.items() if s != "PASS"}
    assert warned == {"cgroup-v2", "cni-routing"}
    assert "FAIL" not in result.values()


def test_recorded_container_without_capabilities() -> None:
    facts = NodeFacts.from_json(
        {
            **BUILD_MACHINE,
            "bpf_syscall_error": "Operation not permitted",
            "ip_transparent_error": "Operation not permitted",
            "tc_probe": None,
            "programs": [],
            "redirect_rules": None,
            "firewall_listing_error": "iptables-save: iptables-save v1.8.9 (nf_tables): "
            "Could not fetch rule set generation id: Permission denied (you must be root)",
        }
    )
    result = status(facts)
    assert result["bpf-syscall"] == "FAIL"
    assert result["ip-transparent"] == "FAIL"
    assert result["other-mesh"] == "WARN"
    assert "pod_egress" not in result
