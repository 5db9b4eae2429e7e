"""Statistics over benchmark samples: pure functions, no I/O, no clocks.

The harness never reports a single absolute time: every figure is the median of
several rounds, next to the baseline's median from the same run, and their ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    Matches numpy's default ("linear") method, so figures agree with common tools.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    weight = position - low
    return float(ordered[low] * (1.0 - weight) + ordered[high] * weight)


def median(values: Sequence[float]) -> float:
    """The median (the 50th percentile) of a non-empty sequence."""
    return percentile(values, 50.0)


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline``, or ``None`` when the baseline is zero or not finite."""
    if baseline == 0.0 or not math.isfinite(baseline) or not math.isfinite(value):
        return None
    return value / baseline


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much the rounds disagree (0 = identical rounds)."""
    mid = median(values)
    if mid == 0.0:
        return 0.0
    return (max(values) - min(values)) / abs(mid)


@dataclass(frozen=True)
class Summary:
    """What one variant scored on one metric over all rounds of a run."""

    n: int
    """Number of rounds that produced this metric."""
    median: float
    """Median over the rounds."""
    minimum: float
    """Smallest round."""
    maximum: float
    """Largest round."""
    spread: float
    """(max - min) / median."""


def summarize(values: Sequence[float]) -> Summary:
    """Median, extremes and spread of one metric's samples."""
    if not values:
        raise ValueError("cannot summarize zero samples")
    return Summary(
        n=len(values),
        median=median(values),
        minimum=float(min(values)),
        maximum=float(max(values)),
        spread=relative_spread(values),
    )


def is_better(value_ratio: float, higher_is_better: bool) -> bool:
    """Whether a ratio to the baseline means the variant did better than the baseline."""
    return value_ratio > 1.0 if higher_is_better else value_ratio < 1.0


def alternating_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order in which variants run in round ``round_index``.

    Rotating the order every round spreads warm-up and drift over all variants
    instead of always favouring the one that runs first.
    """
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]
