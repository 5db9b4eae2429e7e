"""Statistics of the benchmark harness: percentiles, medians, ratios, ordering."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import stats


def test_percentile_matches_linear_interpolation() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert stats.percentile(values, 0) == 10.0
    assert stats.percentile(values, 100) == 40.0
    assert stats.percentile(values, 50) == 25.0
    # numpy.percentile([10, 20, 30, 40], 99) == 39.7
    assert stats.percentile(values, 99) == pytest.approx(39.7)


def test_percentile_ignores_input_order() -> None:
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        stats.percentile([1.0], 101)


def test_median_of_odd_and_even() -> None:
    assert stats.median([5.0, 1.0, 3.0]) == 3.0
    assert stats.median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_ratio_guards_zero_baseline() -> None:
    assert stats.ratio(9.7, 39.0) == pytest.approx(0.2487, rel=1e-3)
    assert stats.ratio(1.0, 0.0) is None
    assert stats.ratio(math.inf, 1.0) is None


def test_summarize_reports_spread() -> None:
    summary = stats.summarize([9.0, 10.0, 11.0])
    assert (summary.n, summary.median, summary.minimum, summary.maximum) == (3, 10.0, 9.0, 11.0)
    assert summary.spread == pytest.approx(0.2)


def test_is_better_follows_direction() -> None:
    assert stats.is_better(1.2, higher_is_better=True)
    assert not stats.is_better(1.2, higher_is_better=False)
    assert stats.is_better(0.5, higher_is_better=False)


def test_alternating_order_rotates_each_round() -> None:
    names = ["direct", "envoy", "ztunnel"]
    assert stats.alternating_order(names, 0) == ["direct", "envoy", "ztunnel"]
    assert stats.alternating_order(names, 1) == ["envoy", "ztunnel", "direct"]
    assert stats.alternating_order(names, 3) == names
    assert stats.alternating_order([], 2) == []


@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_is_within_bounds(values: list[float], q: float) -> None:
    p = stats.percentile(values, q)
    assert min(values) - 1e-6 <= p <= max(values) + 1e-6


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30))
def test_percentile_is_monotonic_in_q(values: list[float]) -> None:
    qs = [0, 10, 50, 90, 99, 100]
    ps = [stats.percentile(values, q) for q in qs]
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(ps))
