"""`ambient agent check` on this machine's kernel (root, BPF).

The collector really loads the bpf_sk_assign probe and attaches it, but only inside an
unnamed namespace of a child process: the root namespace's qdiscs must be unchanged.
The CNI facts are read inside a namespace of ours shaped like a routed-CNI node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.check import CollectOptions, collect_facts, evaluate

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.root, pytest.mark.bpf]


def _root_qdiscs() -> str:
    return subprocess.run(
        ["tc", "qdisc", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def test_this_kernel_offers_everything_the_agent_needs() -> None:
    before = _root_qdiscs()
    facts = collect_facts(CollectOptions(tc_probe=True, capture_programs=True))
    after = _root_qdiscs()
    assert before == after, "the check changed the root namespace's qdiscs"
    assert facts.tc_probe is not None
    assert facts.tc_probe.scratch_netns_error is None
    result = {c.name: c for c in evaluate(facts)}
    for name in ("root", "kernel", "bpf-syscall", "bpffs", "clsact", "bpf_sk_assign", "bcc"):
        assert result[name].status == "PASS", result[name]
    assert result["pod_egress"].status == "PASS", result["pod_egress"]
    assert result["node_ingress"].status == "PASS", result["node_ingress"]
    assert result["ip-transparent"].status == "PASS"


@pytest.fixture
def routed_node() -> Iterator[str]:
    """A namespace of ours with one pod veth and a /32 route to the pod on it."""
    name = f"adchk-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        ip = ["ip", "-n", name]
        subprocess.run(
            [*ip, "link", "add", "vethpod1", "type", "veth", "peer", "eth0p"],
            check=True,
            timeout=10,
        )
        subprocess.run([*ip, "link", "set", "vethpod1", "up"], check=True, timeout=10)
        subprocess.run([*ip, "link", "set", "eth0p", "up"], check=True, timeout=10)
        subprocess.run(
            [*ip, "route", "add", "10.244.1.7/32", "dev", "vethpod1"], check=True, timeout=10
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def _in_netns(name: str) -> list[str]:
    # like the lab's node processes: only the network namespace, so bpffs stays the host's
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def _check_in(netns: str, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [*_in_netns(netns), sys.executable, "-m", "ambient", "agent", "check", *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def test_cli_reads_a_routed_cni_in_the_node_namespace(routed_node: str) -> None:
    done = _check_in(routed_node, "--quick", "--facts", "-o", "json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["veths"] == 2
    assert facts["pod_routes"] == 1
    assert facts["bpffs_mounted"] is True  # the host's bpffs, as for a lab node
    assert facts["tc_probe"] is None  # --quick tries nothing

    table = _check_in(routed_node, "--quick", "-o", "json")
    rows = {r["check"]: r for r in json.loads(table.stdout)}
    assert rows["cni-routing"]["status"] == "PASS"
    assert "1 pod routes over 2 veths" in rows["cni-routing"]["detail"]
    assert table.returncode == 0, table.stderr
