"""wrk's latency histogram, with its coordinated-omission correction undone (pure).

At the end of a run wrk "corrects" its latency histogram (``stats_correct`` in wrk
4.x): with ``e = runtime / (requests / connections)``, every sample ``n >= 2e`` adds
synthetic samples at ``n - e, n - 2e, ...`` while above ``e``. That models an
open-loop client that would have kept sending during a stall; our probes are closed
loops that measure the path's round trip, and on a shared machine a few scheduler
stalls then swamp the percentiles with samples that never happened (a 4 ms stall at
a 75 us cycle adds 50 of them). Our wrk script prints the corrected histogram; this
module recovers the measured one exactly, from the top value down, and checks that its
count equals the number of requests wrk completed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

HIST_MARK = "BENCH_WRK_HIST "
MAX_EXPORT_WORK = 3_000_000_000
"""Bound on distinct values x value span for the Lua export: wrk scans the span for
every lookup, so this caps the export at a few seconds of CPU after the measurement."""

HIST_LUA = """\
  -- the histogram as value:count pairs (skipped when wrk's lookups would be too slow)
  local n = #latency
  if n > 0 and n * (latency.max - latency.min + 1) <= LIMIT then
    local parts = {}
    for i = 1, n do
      local v, c = latency(i)
      parts[#parts + 1] = string.format("%d:%d", v, c)
    end
    io.write("MARK" .. table.concat(parts, ",") .. "\\n")
  end
""".replace("LIMIT", str(MAX_EXPORT_WORK)).replace("MARK", HIST_MARK)


def parse_histogram(text: str) -> dict[int, int] | None:
    """The ``value:count`` line of our wrk script, or None when it printed none."""
    for line in text.splitlines():
        if line.startswith(HIST_MARK):
            body = line[len(HIST_MARK) :].strip()
            hist: dict[int, int] = {}
            for pair in body.split(","):
                value, count = pair.split(":")
                hist[int(float(value))] = hist.get(int(float(value)), 0) + int(float(count))
            return hist
    return None


def expected_interval(runtime_us: int, requests: int, connections: int) -> int:
    """wrk's ``e``: integer microseconds per request per connection (0 = no correction)."""
    per_connection = requests // connections
    return runtime_us // per_connection if per_connection > 0 else 0


def apply_correction(real: Mapping[int, int], expected: int) -> dict[int, int]:
    """What wrk does to a histogram (for tests, and to document the inverse below)."""
    out = dict(real)
    if expected <= 0:
        return out
    for n in sorted(real):
        if n < 2 * expected:
            continue
        m = n - expected
        while m > expected:
            out[m] = out.get(m, 0) + real[n]
            m -= expected
    return out


def undo_correction(corrected: Mapping[int, int], expected: int) -> dict[int, int]:
    """The measured histogram behind a corrected one.

    Synthetic samples land only below the sample that made them, so walking from the
    largest value down, each value's real count is its corrected count minus what the
    real counts above it added. Raises ``ValueError`` if the input cannot come from
    :func:`apply_correction`.
    """
    if expected <= 0:
        return dict(corrected)
    real: dict[int, int] = {}
    synthetic: dict[int, int] = {}
    for n in sorted(corrected, reverse=True):
        count = corrected[n] - synthetic.pop(n, 0)
        if count < 0:
            raise ValueError(f"value {n} has fewer samples than the correction added")
        if count == 0:
            continue
        real[n] = count
        if n >= 2 * expected:
            m = n - expected
            while m > expected:
                synthetic[m] = synthetic.get(m, 0) + count
                m -= expected
    if any(synthetic.values()):
        raise ValueError("synthetic samples fall on values absent from the histogram")
    return real


def hist_percentile(hist: Mapping[int, int], p: float) -> int:
    """wrk's percentile rule (first value whose cumulative count reaches the rank)."""
    total = sum(hist.values())
    if total == 0:
        raise ValueError("empty histogram")
    rank = math.floor(p / 100.0 * total + 0.5)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


def hist_mean(hist: Mapping[int, int]) -> float:
    """Mean of a histogram."""
    total = sum(hist.values())
    if total == 0:
        raise ValueError("empty histogram")
    return sum(v * c for v, c in hist.items()) / total
