"""The whole toolchain, end to end: BCC compiles a TC program of ``bpf/``, the kernel
loads it, pyroute2 attaches it to a veth inside a namespace this test creates, and a
map counter moves when packets pass. Independent of the lab."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.attach import attach_ingress, detach, ingress_filter_names

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(60)]

NS_A = f"capx-tc{os.getpid()}-a"
NS_B = f"capx-tc{os.getpid()}-b"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10)


@pytest.fixture
def veth_pair() -> Iterator[None]:
    """veth ``capa`` (10.99.7.1) in NS_A, its peer ``capb`` (10.99.7.2) in NS_B."""
    try:
        _ip("netns", "add", NS_A)
        _ip("netns", "add", NS_B)
        _ip(
            "-n",
            NS_A,
            "link",
            "add",
            "name",
            "capa",
            "type",
            "veth",
            "peer",
            "name",
            "capb",
            "netns",
            NS_B,
        )
        _ip("-n", NS_A, "addr", "add", "10.99.7.1/24", "dev", "capa")
        _ip("-n", NS_B, "addr", "add", "10.99.7.2/24", "dev", "capb")
        _ip("-n", NS_A, "link", "set", "capa", "up")
        _ip("-n", NS_B, "link", "set", "capb", "up")
        yield
    finally:
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


def _send_udp_from_b(count: int) -> None:
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}): s.sendto(b'probe', ('10.99.7.1', 9))\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", NS_B, sys.executable, "-c", code], check=True, timeout=15
    )


def test_bcc_compiles_loads_attaches_and_counts(veth_pair: None) -> None:
    from pyroute2 import IPRoute

    from agent.programs import load_program

    started = time.monotonic()
    program = load_program("probe", pin_dir=None)
    compile_seconds = time.monotonic() - started
    assert program.fd > 0
    counters = program.bpf[b"probe_packets"]
    ipv4 = counters.Key(0)
    assert counters[ipv4].value == 0

    with IPRoute(netns=NS_A) as ipr:
        ifindex = ipr.link_lookup(ifname="capa")[0]
        attach_ingress(ipr, ifindex, program.fd, "probe")
        try:
            assert ingress_filter_names(ipr, ifindex) == ["probe"]
            _send_udp_from_b(20)
            deadline = time.monotonic() + 5
            while counters[ipv4].value < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            # ARP goes to the "other" slot; the 20 datagrams are IPv4.
            assert counters[ipv4].value >= 20
        finally:
            assert detach(ipr, ifindex)
        assert ingress_filter_names(ipr, ifindex) == []
    assert compile_seconds < 20
