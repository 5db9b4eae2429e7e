"""The chart's requests and limits against the recorded footprint figures.

``deploy/footprint.json`` is the record of a ``footprint`` benchmark run; the chart's
values were set from it. If either changes without the other, these tests say which
value no longer covers which figure.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench.cases.footprint import (
    Footprint,
    NodeReading,
    ProcReading,
    footprint_record,
    node_figures,
    record_text,
)
from deploy.footprint import (
    chart_defaults,
    cpu_cores,
    footprint_problems,
    load_record,
    memory_mb,
)


def test_the_charts_defaults_cover_the_recorded_figures() -> None:
    assert footprint_problems(chart_defaults(), load_record()) == []


def test_the_record_holds_every_figure_the_benchmark_measures() -> None:
    """A changed benchmark case needs a new record (and a look at the chart)."""
    figures = load_record()["figures"]
    for probe in Footprint.probes:
        assert probe.name in figures, f"record has no probe {probe.name}"
        assert set(figures[probe.name]) == {m.name for m in probe.metrics}


@pytest.mark.parametrize(
    ("path", "quantity", "named"),
    [
        (("node", "agent", "resources", "limits", "memory"), "256Mi", "node.agent"),
        (("node", "ztunnel", "resources", "limits", "memory"), "300Mi", "node.ztunnel"),
        (("node", "ztunnel", "resources", "requests", "memory"), "64Mi", "node.ztunnel"),
        (("node", "ztunnel", "resources", "limits", "cpu"), "1", "node.ztunnel"),
        (("controlPlane", "resources", "limits", "memory"), "100Mi", "controlPlane"),
        (("controlPlane", "resources", "requests", "cpu"), "10m", "controlPlane"),
    ],
)
def test_a_value_below_its_figure_is_named(
    path: tuple[str, ...], quantity: str, named: str
) -> None:
    values = copy.deepcopy(chart_defaults())
    node: Any = values
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = quantity
    problems = footprint_problems(values, load_record())
    assert problems and all(p.startswith(named) for p in problems), problems
    assert "deploy/footprint.json" in problems[0]


def test_more_workers_need_more_memory_than_the_default_limit() -> None:
    values = copy.deepcopy(chart_defaults())
    values["node"]["ztunnel"]["workers"] = 8
    problems = footprint_problems(values, load_record())
    assert any("node.ztunnel.resources.limits.memory" in p for p in problems)
    values["node"]["ztunnel"]["workers"] = ""
    assert "workers is empty" in footprint_problems(values, load_record())[0]


def test_higher_figures_than_the_chart_allows_are_caught() -> None:
    record = copy.deepcopy(load_record())
    record["figures"]["agent-compile"]["compile_peak_mb"]["max"] = 400.0
    assert any("node.agent.resources.limits.memory" in p for p in footprint_problems(
        chart_defaults(), record))  # fmt: skip


def test_quantities() -> None:
    assert cpu_cores("200m") == 0.2
    assert cpu_cores("2") == cpu_cores(2) == 2.0
    assert memory_mb("512Mi") == pytest.approx(536.870912)
    assert memory_mb("1Gi") == pytest.approx(1073.741824)
    assert memory_mb("1G") == 1000.0
    assert memory_mb(2_000_000) == 2.0
    assert memory_mb("1Ti") == pytest.approx(1_099_511.627776)
    assert memory_mb("2T") == 2_000_000.0


def _proc(pid: int, cpu: float, rss: float, peak: float) -> ProcReading:
    return ProcReading(pid, cpu, rss, peak)


def test_node_figures_read_each_worker_on_its_own() -> None:
    before = NodeReading([_proc(1, 1.0, 40, 40)], [_proc(10, 2.0, 47, 47), _proc(11, 5.0, 60, 60)])
    after = NodeReading(
        [_proc(1, 1.1, 41, 42)],
        [_proc(10, 2.0, 47, 47), _proc(11, 6.0, 70, 75), _proc(12, 0.5, 50, 55)],
    )
    got = node_figures(before, after, wall_s=2.0)
    assert got["agent_cpu_pct"] == pytest.approx(5.0)
    assert got["supervisor_cpu_pct"] == 0.0
    assert got["worker_cpu_pct"] == pytest.approx(50.0)  # 11: 1 s of 2; 12 is new: 0.5 s
    assert got["worker_peak_mb"] == 75
    assert got["ztunnel_cpu_pct"] == pytest.approx(75.0)
    assert got["ztunnel_peak_mb"] == 47 + 75 + 55


def test_the_record_comes_from_a_runs_summaries() -> None:
    results = {
        "settings": {"command": "python -m bench --case footprint", "rounds": 5},
        "machine": {"cpu_count": 2, "hostname": "x"},
        "summaries": [
            {"case": "footprint", "probe": "node-idle", "metric": "agent_rss_mb",
             "median": 42.61, "max": 42.66},
            {"case": "other", "probe": "p", "metric": "m", "median": 1, "max": 1},
        ],
    }  # fmt: skip
    record = footprint_record(results, "/x/bench/results/20261126T000000Z")
    assert record["figures"] == {"node-idle": {"agent_rss_mb": {"median": 42.6, "max": 42.7}}}
    assert record["machine"] == {"cpu_count": 2}
    assert '"agent_rss_mb": {"median": 42.6, "max": 42.7}' in record_text(record)
