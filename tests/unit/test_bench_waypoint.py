"""The waypoint benchmark case's pure parts: its declarations, proxy roles, ratios."""

from __future__ import annotations

import os

import pytest

from bench.case import check_case
from bench.cases.waypoint import (
    DESTINATION,
    REFERENCE,
    SOURCE,
    WAYPOINT_ENVOY,
    WAYPOINT_ROLE,
    WaypointCase,
    find_in_tree,
    per_request,
    ratio_lines,
    role_costs,
    roles,
    stat_sum,
    tree_breakdown,
)
from bench.errors import BenchError
from bench.procs import WatchedProcess


def _proxy(name: str) -> WatchedProcess:
    return WatchedProcess(name, "ns", 1)


def test_the_case_is_consistent_and_compares_the_four_paths() -> None:
    case = WaypointCase()
    check_case(case)
    assert [v.name for v in case.variants] == ["direct", "envoy-mtls", "ztunnel", "waypoint"]
    assert case.baseline().name == "direct"
    assert REFERENCE in {v.name for v in case.variants}
    assert [p.name for p in case.probes] == ["rr-1", "rr-16"]
    for probe in case.probes:
        names = {m.name for m in probe.metrics}
        assert {"rate", "p50", "p99", "proxy_cpu_s", "proxy_rss_mb"} <= names
        assert {"proxy_cpu_us_per_req", "waypoint_cpu_us_per_req"} <= names
        for role in (SOURCE, WAYPOINT_ROLE, WAYPOINT_ENVOY, DESTINATION):
            assert {f"{role}_cpu_s", f"{role}_rss_mb"} <= names
    assert set(case.paths) == {v.name for v in case.variants}


def test_roles_by_position_source_waypoint_destination() -> None:
    src, wp, dst = _proxy("a"), _proxy("b"), _proxy("c")
    assert roles(()) == {}
    assert roles((src, dst)) == {SOURCE: src, DESTINATION: dst}
    assert roles((src, wp, dst)) == {SOURCE: src, WAYPOINT_ROLE: wp, DESTINATION: dst}
    with pytest.raises(BenchError):
        roles((src,))
    with pytest.raises(BenchError):
        roles((src, wp, wp, dst))


def test_role_costs_are_cpu_deltas_and_peak_rss_in_mb() -> None:
    before = {SOURCE: (1.0, 10_000_000), WAYPOINT_ROLE: (2.0, 5_000_000)}
    after = {SOURCE: (1.5, 12_000_000), WAYPOINT_ROLE: (2.25, 5_000_000)}
    assert role_costs(before, after) == {
        "src_cpu_s": 0.5,
        "src_rss_mb": 12.0,
        "waypoint_cpu_s": 0.25,
        "waypoint_rss_mb": 5.0,
    }
    assert role_costs({}, {}) == {}


def test_per_request_cpu_divides_by_the_requests_completed() -> None:
    figures = {"rate": 1000.0, "proxy_cpu_s": 0.6, "waypoint_cpu_s": 0.3}
    assert per_request(figures, 3.0) == pytest.approx(
        {"proxy_cpu_us_per_req": 200.0, "waypoint_cpu_us_per_req": 100.0}
    )
    assert per_request({"rate": 1000.0}, 3.0) == {}  # direct: no proxies
    assert per_request({"rate": 0.0, "proxy_cpu_s": 1.0}, 3.0) == {}


def test_ratio_lines_divide_medians_by_the_reference() -> None:
    samples = {
        ("envoy-mtls", "rr-1", "rate"): [100.0, 300.0, 200.0],
        ("waypoint", "rr-1", "rate"): [50.0, 40.0, 60.0],
        ("ztunnel", "rr-1", "rate"): [400.0],
        ("direct", "rr-1", "p50"): [10.0],  # no reference figure for p50: skipped
        ("waypoint", "rr-16", "rate"): [1.0],  # no reference at all for rr-16
    }
    lines = ratio_lines(samples, "envoy-mtls")
    assert lines == ["rr-1 vs `envoy-mtls` (median ratios): rate: waypoint 0.25, ztunnel 2.00"]


def test_ratio_lines_skip_a_zero_reference() -> None:
    samples = {("envoy-mtls", "rr-1", "p50"): [0.0], ("waypoint", "rr-1", "p50"): [5.0]}
    assert ratio_lines(samples, "envoy-mtls") == []


def test_the_process_tree_of_this_test() -> None:
    rows = tree_breakdown(os.getpid())
    assert rows and rows[0][1] > 0 and rows[0][2] > 0
    assert find_in_tree(os.getpid(), "no-such-command") is None


def test_stat_sum_adds_the_counters_with_the_suffix() -> None:
    text = (
        "http.hbone.downstream_rq_completed: 12\n"
        "http.inbound_vip.downstream_rq_completed: 3400\n"
        "http.inbound_vip.downstream_rq_completed_x: 9\n"
        "cluster.x.upstream_rq_completed: 5\n"
        "http.broken.downstream_rq_completed: n/a\n"
    )
    assert stat_sum(text, ".downstream_rq_completed") == 3412
    assert stat_sum("", ".downstream_rq_completed") == 0
