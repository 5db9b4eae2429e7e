"""The decision table of tests/unit/test_bpf_decision.py, run against the compiled programs.

``BPF_PROG_TEST_RUN`` feeds a crafted SYN to the real pod-egress / node-ingress program
inside a namespace this test creates (the socket lookups search the namespace of the
calling thread). A redirect verdict shows by *which* listener the program went for:
with no listener it counts ``dropped_no_listener`` and refuses (the SYN turned into a
reset, sent back where it came from); with only the expected
listener present it finds it (``bpf_sk_assign`` then refuses outside a real TC ingress,
counted as ``dropped_assign_failed``, or assigns, counted as ``redirected_*``). A PASS
verdict returns TC_ACT_OK with every listener present.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture import CaptureSettings, listener_port
from agent.layout import STATS_FIELDS, Verdict, WorkloadFlags, WorkloadKey, ip_to_u32
from agent.nodemaps import NodeMaps
from agent.pinned import remove_pins
from agent.testrun import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    TCP_ACK,
    TCP_SYN,
    checksum,
    in_netns,
    prog_test_run,
    tcp_checksum_ok,
    tcp_frame,
)
from agent.workloads import LocalWorkload
from tests.unit.test_bpf_decision import CFG, NODE_INGRESS_TABLE, POD_EGRESS_TABLE

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(120)]

NS = f"capx-run{os.getpid()}"
PIN_DIR = Path(f"/sys/fs/bpf/capx-run{os.getpid()}")
SRC_ADDR = "10.244.1.2"
SYN, ACK = TCP_SYN, TCP_ACK


def prog_test_run_out(prog_fd: int, frame: bytes) -> tuple[int, bytes]:
    result = prog_test_run(prog_fd, frame)
    return result.retval, result.packet


def in_namespace(fn: Callable[[], Any]) -> Any:
    return in_netns(NS, fn)


class Listeners:
    """Listening sockets inside NS, opened and closed on demand (from the NS thread)."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def open(self, ports: list[int]) -> None:
        self.close()
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
            s.bind(("0.0.0.0", port))
            s.listen(8)
            self.socks.append(s)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


@pytest.fixture(scope="module")
def loaded() -> Iterator[dict[str, Any]]:
    from agent.programs import load_program

    subprocess.run(["ip", "netns", "add", NS], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True, timeout=10)
        programs = {name: load_program(name, PIN_DIR) for name in ("pod_egress", "node_ingress")}
        maps = NodeMaps(PIN_DIR)
        maps.write_settings(CFG)
        yield {"programs": programs, "maps": maps}
        maps.close()
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, timeout=10)
        remove_pins(PIN_DIR)


def set_workload(maps: NodeMaps, ip: str, flags: int) -> None:
    """Writes (or, for flags 0, removes) a workloads entry."""
    if flags == 0:
        maps.workloads.delete(WorkloadKey(ip_to_u32(ip)))
        return
    enrolled = bool(flags & WorkloadFlags.ENROLLED)
    maps.write_workload(LocalWorkload("t", ip.replace(".", "-"), ip, enrolled), 1, "t")
    if not flags & WorkloadFlags.LOCAL:  # a flag combination the agent never writes
        from agent.layout import WorkloadValue

        maps.workloads.put(WorkloadKey(ip_to_u32(ip)), WorkloadValue(1, flags, 0, 0))


def counters(maps: NodeMaps, ip: str) -> dict[str, int]:
    value = maps.stats.get(WorkloadKey(ip_to_u32(ip)))
    return {f: int(getattr(value, f)) if value else 0 for f in STATS_FIELDS}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


MISSING = {
    Verdict.REDIRECT_OUTBOUND: "no_outbound_listener",
    Verdict.REDIRECT_INBOUND: "no_inbound_listener",
    Verdict.REDIRECT_HBONE: "no_hbone_listener",
}


def drop_reasons(maps: NodeMaps) -> dict[str, int]:
    return {r["name"]: r["packets"] for r in maps.verdict_rows() if r["kind"] == "drop"}


REDIRECT_FIELD = {
    Verdict.REDIRECT_OUTBOUND: "redirected_outbound",
    Verdict.REDIRECT_INBOUND: "redirected_inbound",
    Verdict.REDIRECT_HBONE: "redirected_hbone",
}
ALL_LISTENERS = [CFG.outbound_port, CFG.inbound_port, CFG.hbone_port]


def observe(
    loaded: dict[str, Any], program: str, frame: bytes, charged: str, listen: list[int]
) -> tuple[int, dict[str, int]]:
    """Runs ``frame`` with only ``listen`` listening; the verdict and ``charged``'s counters."""
    maps: NodeMaps = loaded["maps"]
    fd = loaded["programs"][program].fd
    listeners = Listeners()

    def run() -> tuple[int, dict[str, int]]:
        listeners.open(listen)
        try:
            before = counters(maps, charged)
            verdict = prog_test_run(fd, frame).retval
            return verdict, delta(before, counters(maps, charged))
        finally:
            listeners.close()

    return in_namespace(run)  # type: ignore[no-any-return]


def check_row(
    loaded: dict[str, Any], program: str, frame: bytes, *, src: str, dst: str, verdict: Verdict
) -> None:
    if verdict is Verdict.PASS:
        retval, changed = observe(loaded, program, frame, dst, ALL_LISTENERS)
        assert retval == TC_ACT_OK
        assert not {k for k in changed if k.startswith(("dropped", "redirected"))}
        return
    charged = src if verdict is Verdict.REDIRECT_OUTBOUND else dst
    # no listener: refused (answered with a reset), counted per pod and by reason
    reasons_before = drop_reasons(loaded["maps"])
    retval, changed = observe(loaded, program, frame, charged, [])
    assert (retval, changed) == (TC_ACT_REDIRECT, {"dropped_no_listener": 1})
    assert delta(reasons_before, drop_reasons(loaded["maps"])) == {MISSING[verdict]: 1}
    port = listener_port(CaptureSettings(), verdict)
    assert port is not None
    retval, changed = observe(loaded, program, frame, charged, [port])
    assert changed in ({"dropped_assign_failed": 1}, {REDIRECT_FIELD[verdict]: 1}), changed


@pytest.mark.parametrize(("src", "dst", "daddr", "dport", "verdict"), POD_EGRESS_TABLE)
def test_pod_egress_program_decides_as_the_table(
    loaded: dict[str, Any], *, src: int, dst: int, daddr: str, dport: int, verdict: Verdict
) -> None:
    maps: NodeMaps = loaded["maps"]
    set_workload(maps, SRC_ADDR, src)
    set_workload(maps, daddr, dst)
    try:
        frame = tcp_frame(SRC_ADDR, daddr, 40000, dport, SYN)
        check_row(loaded, "pod_egress", frame, src=SRC_ADDR, dst=daddr, verdict=verdict)
    finally:
        set_workload(maps, SRC_ADDR, 0)
        set_workload(maps, daddr, 0)


@pytest.mark.parametrize(("dst", "dport", "verdict"), NODE_INGRESS_TABLE)
def test_node_ingress_program_decides_as_the_table(
    loaded: dict[str, Any], dst: int, dport: int, verdict: Verdict
) -> None:
    maps: NodeMaps = loaded["maps"]
    daddr = "10.244.1.3"
    set_workload(maps, daddr, dst)
    try:
        frame = tcp_frame("10.244.2.2", daddr, 40000, dport, SYN)
        check_row(loaded, "node_ingress", frame, src="10.244.2.2", dst=daddr, verdict=verdict)
    finally:
        set_workload(maps, daddr, 0)


def test_non_syn_without_a_socket_passes_and_a_listener_is_no_match(
    loaded: dict[str, Any],
) -> None:
    """A connection opened before enrollment keeps flowing, even past a node listener."""
    maps: NodeMaps = loaded["maps"]
    enrolled = int(WorkloadFlags.ENROLLED | WorkloadFlags.LOCAL)
    set_workload(maps, SRC_ADDR, enrolled)
    try:
        frame = tcp_frame(SRC_ADDR, "10.244.2.2", 40000, 8080, ACK)
        retval, changed = observe(loaded, "pod_egress", frame, SRC_ADDR, [8080, *ALL_LISTENERS])
        assert (retval, changed) == (TC_ACT_OK, {"passed": 1})
    finally:
        set_workload(maps, SRC_ADDR, 0)


def test_established_socket_is_matched_first(loaded: dict[str, Any]) -> None:
    """A reply to a node-namespace socket goes to that socket, before any decision."""
    maps: NodeMaps = loaded["maps"]
    plain = int(WorkloadFlags.LOCAL)
    set_workload(maps, "10.244.1.9", plain)
    fd = loaded["programs"]["pod_egress"].fd

    def run() -> tuple[int, dict[str, int]]:
        for addr in ("10.244.1.9/32", "10.244.2.2/32"):
            subprocess.run(["ip", "-n", NS, "addr", "replace", addr, "dev", "lo"], check=True)
        server = socket.socket()
        server.bind(("10.244.1.9", 8080))
        server.listen(1)
        client = socket.socket()  # stands for ztunnel's connection on behalf of a peer
        client.bind(("10.244.2.2", 0))
        client.settimeout(5)
        client.connect(("10.244.1.9", 8080))
        try:
            cport = client.getsockname()[1]
            before = counters(maps, "10.244.1.9")
            reply = tcp_frame("10.244.1.9", "10.244.2.2", 8080, cport, ACK)
            verdict = prog_test_run(fd, reply).retval
            return verdict, delta(before, counters(maps, "10.244.1.9"))
        finally:
            client.close()
            server.close()

    try:
        verdict, changed = in_namespace(run)
        # found the socket: assigned, or refused outside a real TC ingress (then dropped)
        assert changed in ({"assigned_established": 1}, {"dropped_assign_failed": 1}), changed
        assert verdict == (TC_ACT_OK if "assigned_established" in changed else TC_ACT_SHOT)
    finally:
        set_workload(maps, "10.244.1.9", 0)


def test_missing_listener_answers_the_syn_with_a_reset(loaded: dict[str, Any]) -> None:
    """Refused, not silently dropped: RST|ACK from the destination, acking the SYN."""
    maps: NodeMaps = loaded["maps"]
    enrolled = int(WorkloadFlags.ENROLLED | WorkloadFlags.LOCAL)
    set_workload(maps, SRC_ADDR, enrolled)
    fd = loaded["programs"]["pod_egress"].fd
    syn = tcp_frame(SRC_ADDR, "10.244.2.2", 40000, 8080, SYN)
    try:
        retval, out = in_namespace(lambda: prog_test_run_out(fd, syn))
    finally:
        set_workload(maps, SRC_ADDR, 0)
    assert retval == TC_ACT_REDIRECT
    assert out[0:6] == syn[6:12] and out[6:12] == syn[0:6]  # back where it came from
    src, dst = socket.inet_ntoa(out[26:30]), socket.inet_ntoa(out[30:34])
    assert (src, dst) == ("10.244.2.2", SRC_ADDR)
    sport, dport, seq, ack, offset, flags, window = struct.unpack("!HHIIBBH", out[34:50])
    assert (sport, dport) == (8080, 40000)
    assert (seq, ack) == (0, 2)  # the SYN's seq was 1
    assert flags == 0x14  # RST|ACK
    assert offset == 5 << 4 and window == 0
    assert out[14:26] == syn[14:26]  # IP header otherwise unchanged
    assert checksum(out[14:34]) == 0
    assert tcp_checksum_ok(syn) and tcp_checksum_ok(out)
