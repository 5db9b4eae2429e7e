"""Undoing wrk's coordinated-omission correction recovers the measured histogram exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import load, wrkstats


def test_correction_adds_samples_below_stalls_and_undo_removes_them() -> None:
    real = {70: 1000, 80: 500, 4000: 10}
    corrected = wrkstats.apply_correction(real, expected=75)
    assert sum(corrected.values()) > sum(real.values())
    assert wrkstats.hist_percentile(corrected, 99) > 1000  # wrk's p99: mostly synthetic
    assert wrkstats.undo_correction(corrected, expected=75) == real
    assert wrkstats.hist_percentile(real, 99) == 80


@given(
    st.dictionaries(st.integers(1, 3000), st.integers(1, 50), min_size=1, max_size=40),
    st.integers(1, 400),
)
def test_undo_inverts_apply(real: dict[int, int], expected: int) -> None:
    corrected = wrkstats.apply_correction(real, expected)
    assert wrkstats.undo_correction(corrected, expected) == real


def test_undo_rejects_impossible_histograms() -> None:
    # a stall at 400 with e=100 must have added samples at 300 and 200
    with pytest.raises(ValueError, match="absent"):
        wrkstats.undo_correction({400: 1, 150: 3}, expected=100)


def test_expected_interval_is_wrks_integer_arithmetic() -> None:
    assert wrkstats.expected_interval(3_000_000, 40_000, 1) == 75
    assert wrkstats.expected_interval(3_000_000, 40_000, 16) == 1200
    assert wrkstats.expected_interval(1_000_000, 5, 16) == 0


def test_percentile_and_mean() -> None:
    hist = {10: 98, 20: 1, 1000: 1}
    assert wrkstats.hist_percentile(hist, 50) == 10
    assert wrkstats.hist_percentile(hist, 99) == 20
    assert wrkstats.hist_percentile(hist, 100) == 1000
    assert wrkstats.hist_mean(hist) == pytest.approx((980 + 20 + 1000) / 100)


def test_parse_histogram_line() -> None:
    text = "noise\n" + wrkstats.HIST_MARK + "70:1000,80:500,4000:10\n"
    assert wrkstats.parse_histogram(text) == {70: 1000, 80: 500, 4000: 10}
    assert wrkstats.parse_histogram("nothing here\n") is None


def test_measured_latencies_from_a_corrected_wrk_output() -> None:
    real = {70: 39_000, 90: 1_000, 4_000: 20}
    requests = sum(real.values())
    duration_us = 3_000_000
    corrected = wrkstats.apply_correction(
        real, wrkstats.expected_interval(duration_us, requests, 1)
    )
    text = wrkstats.HIST_MARK + ",".join(f"{v}:{c}" for v, c in sorted(corrected.items()))
    doc = {"requests": float(requests), "duration_us": float(duration_us)}
    p50, p99, mean = load.measured_latencies(text, doc, connections=1) or (0, 0, 0)
    assert (p50, p99) == (70.0, 90.0)
    assert mean == pytest.approx(wrkstats.hist_mean(real))
    # a histogram that does not account for every request is refused
    doc_more = {"requests": float(requests + 5), "duration_us": float(duration_us)}
    assert load.measured_latencies(text, doc_more, connections=1) is None


def test_wrk_script_exports_the_histogram() -> None:
    assert wrkstats.HIST_MARK in load.WRK_SCRIPT
    assert "latency(i)" in load.WRK_SCRIPT
