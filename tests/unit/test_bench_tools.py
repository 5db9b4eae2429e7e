"""Parsers of the load tools' output and of /proc, and the probes' cost arithmetic."""

from __future__ import annotations

import json

import pytest

from bench import load
from bench.case import check_case
from bench.cases.pod_to_pod import PodToPod, cost_metrics
from bench.envoy.admin import parse_envoy_stats
from bench.errors import BenchError, MeasurementError, ToolError
from bench.procs import (
    Usage,
    WatchedProcess,
    descendants,
    listening_ports,
    machine_busy_seconds,
    netns_argv,
    parse_busy_seconds,
    parse_cpu_seconds,
    parse_peak_rss_bytes,
    parse_ppid,
)

STAT = (
    "4242 (envoy (main) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 "
    "250 150 0 0 20 0 9 0 12345 300000000 20000 18446744073709551615"
)


def test_cpu_seconds_counts_fields_after_the_command_name() -> None:
    assert parse_cpu_seconds(STAT, 100) == pytest.approx(4.0)


def test_peak_rss_reads_vmhwm() -> None:
    status = "Name:\tenvoy\nVmPeak:\t  999 kB\nVmHWM:\t   78212 kB\nVmRSS:\t 70000 kB\n"
    assert parse_peak_rss_bytes(status) == 78212 * 1024
    with pytest.raises(ValueError, match="VmHWM"):
        parse_peak_rss_bytes("Name:\tzombie\n")


def test_listening_ports_only_listen_state() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   1: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   2: 0202F40A:1F90 0102F40A:C350 01 00000000:00000000 00:00000000 00000000 0\n"
    )
    assert listening_ports(text) == {8080, 15000}


def test_netns_argv_execs_in_the_named_namespace() -> None:
    assert netns_argv("lab-pod", ["iperf3", "-s"]) == [
        "nsenter",
        "--net=/run/netns/lab-pod",
        "--",
        "iperf3",
        "-s",
    ]


def test_parse_iperf3_reads_received_rate() -> None:
    doc = {"end": {"sum_received": {"bits_per_second": 9.7e9}, "sum_sent": {}}}
    assert load.parse_iperf3(json.dumps(doc)) == 9.7e9
    with pytest.raises(MeasurementError, match="busy"):
        load.parse_iperf3(json.dumps({"error": "the server is busy running a test"}))
    with pytest.raises(ToolError, match="no JSON"):
        load.parse_iperf3("iperf3: error")


def test_parse_wrk_finds_the_summary_line() -> None:
    text = (
        "Running 1s test @ http://10.244.2.2:8080/\n  1 threads and 1 connections\n"
        + load.WRK_MARK
        + '{"requests":100,"duration_us":1000000,"p50_us":20,"p99_us":40}\n'
    )
    assert load.parse_wrk(text) == {
        "requests": 100.0,
        "duration_us": 1e6,
        "p50_us": 20.0,
        "p99_us": 40.0,
    }
    with pytest.raises(ToolError, match="no summary"):
        load.parse_wrk("Running 1s test\n")


def test_wrk_script_prints_marked_json() -> None:
    assert load.WRK_MARK in load.WRK_SCRIPT
    assert "latency:percentile(99)" in load.WRK_SCRIPT


def test_cost_metrics_add_up_proxies() -> None:
    before = [Usage(1.0, 10_000_000), Usage(2.0, 20_000_000)]
    after = [Usage(1.5, 12_000_000), Usage(2.25, 20_000_000)]
    metrics = cost_metrics(before, after, load_cpu_s=0.5, duration_s=2.0, server_cpu_s=1.0)
    assert metrics == {
        "load_cpu_pct": 25.0,
        "server_cpu_pct": 50.0,
        "proxy_cpu_s": pytest.approx(0.75),
        "proxy_rss_mb": 32.0,
    }
    assert cost_metrics([], [], load_cpu_s=1.0, duration_s=1.0) == {"load_cpu_pct": 100.0}
    with_machine = cost_metrics(
        before, after, load_cpu_s=0.5, duration_s=2.0, server_cpu_s=1.0, machine_busy_s=3.0
    )
    # 3.0 busy - (0.5 load + 1.0 servers + 0.75 proxies) = 0.75 s over 2 s
    assert with_machine["other_cpu_pct"] == pytest.approx(37.5)
    with pytest.raises(BenchError, match="lasted 0"):
        cost_metrics([], [], load_cpu_s=1.0, duration_s=0.0)


def test_pod_to_pod_declares_a_consistent_case() -> None:
    case = PodToPod()
    check_case(case)
    assert case.baseline().name == "direct"
    assert set(case.paths) == {v.name for v in case.variants}


def test_parse_envoy_stats_reads_counters() -> None:
    text = (
        "cluster.outbound-http.ssl.handshake: 1393\n"
        "cluster.outbound-http.ssl.session_reused: 1391\n"
        "cluster.outbound-http.ssl.ciphers.TLS_AES_128_GCM_SHA256: 2\n"
        "server.hot_restart_epoch: No recorded values\n"
    )
    assert parse_envoy_stats(text) == {
        "cluster.outbound-http.ssl.handshake": 1393,
        "cluster.outbound-http.ssl.session_reused": 1391,
        "cluster.outbound-http.ssl.ciphers.TLS_AES_128_GCM_SHA256": 2,
    }


def test_busy_seconds_from_proc_stat() -> None:
    text = "cpu  100 20 30 1000 50 5 15 10 0 0\ncpu0 50 10 15 500 25 2 7 5 0 0\n"
    assert parse_busy_seconds(text, 100) == pytest.approx((100 + 20 + 30 + 5 + 15 + 10) / 100)
    with pytest.raises(ValueError, match="cpu"):
        parse_busy_seconds("intr 1 2 3\n", 100)
    assert machine_busy_seconds() > 0


def test_parent_and_children_fields() -> None:
    assert parse_ppid(STAT) == 1
    # cutime 0 and cstime 0 in STAT: children add nothing
    assert parse_cpu_seconds(STAT, 100, with_children=True) == pytest.approx(4.0)


def test_descendants_walk_the_tree() -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1}
    assert sorted(descendants(10, parents)) == [10, 11, 12, 13]
    assert descendants(20, parents) == [20]


def test_watched_process_reads_our_own_tree() -> None:
    import os

    me = WatchedProcess("pytest", "root", os.getpid())
    me.check_alive()
    usage = me.usage()
    assert usage.cpu_s > 0 and usage.peak_rss_bytes > 1_000_000
    gone = WatchedProcess("gone", "x", 2**22 + 7)
    with pytest.raises(ToolError, match="has exited"):
        gone.check_alive()
    assert gone.usage() == Usage(0.0, 0)


def test_tree_usage_names_the_largest_process_of_the_tree() -> None:
    import os
    import subprocess
    import sys

    # A child that makes 80 MB resident (written, so the pages are really there).
    child = subprocess.Popen(
        [sys.executable, "-c", "b = b'x' * (80 << 20); print(1, flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"1\n"
        usage = WatchedProcess("pytest", "root", os.getpid()).usage()
        own = WatchedProcess("child", "root", child.pid).usage()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert own.largest_rss_bytes == own.rss_bytes > 80 << 20
    # The tree's largest is one process's figure (the child's or pytest's own), not the sum.
    assert 80 << 20 < usage.largest_rss_bytes < usage.rss_bytes


def test_latency_consistency_follows_littles_law() -> None:
    # 1 connection, 1 s: 10,000 requests can average at most ~100 us
    assert load.latency_consistent(mean_us=95.0, requests=10_000, connections=1, duration_us=1e6)
    assert not load.latency_consistent(
        mean_us=1191.0, requests=10_476, connections=1, duration_us=1_006_867
    )
    # 16 connections share the bound
    assert load.latency_consistent(mean_us=370.0, requests=42_750, connections=16, duration_us=1e6)
