"""The demo's verdicts: what counts as a pass, over what was observed."""

from __future__ import annotations

import io

import pytest

from lab.demo import (
    SABOTAGE,
    CheckResult,
    DemoConfig,
    DemoError,
    DemoReport,
    Progress,
    answers_by_version,
    callers_seen,
    metric_value,
    run_demo,
    summary,
)


def test_answers_by_version_counts_each_body() -> None:
    got = {
        "bodies": {
            "Hello from backend v1\nclient: 10.244.1.2:4000\n": 3,
            "Hello from backend v2\nclient: 10.244.1.2:4001\n": 2,
            "something else": 1,
        }
    }
    assert answers_by_version(got) == {"v1": 3, "v2": 2}
    assert answers_by_version({}) == {}


def test_callers_seen() -> None:
    got = {"bodies": {"Hello\nclient: 10.244.1.2:4000\n": 1, "Hi\nclient: 10.244.2.9:1\n": 1}}
    assert callers_seen(got) == {"10.244.1.2", "10.244.2.9"}


def test_metric_value_sums_matching_samples() -> None:
    text = "\n".join([
        "# HELP istio_tcp_connections_opened_total x",
        'istio_tcp_connections_opened_total{reporter="source",source_workload="frontend",'
        'destination_workload="backend-v1"} 2.0',
        'istio_tcp_connections_opened_total{reporter="source",source_workload="frontend",'
        'destination_workload="backend-v1",destination_service="x"} 1.0',
        'istio_tcp_connections_opened_total{reporter="destination",source_workload="frontend",'
        'destination_workload="backend-v1"} 5.0',
    ])  # fmt: skip
    labels = {"reporter": "source", "source_workload": "frontend"}
    assert metric_value(text, "istio_tcp_connections_opened_total", labels) == 3.0
    assert metric_value(text, "istio_tcp_sent_bytes_total", labels) == 0.0


def test_report_passes_only_with_every_check() -> None:
    report = DemoReport()
    assert not report.passed  # no checks ran: not a pass
    report.checks = [CheckResult(1, "a", True, ("x",)), CheckResult(2, "b", False, ("y",))]
    assert not report.passed
    text = summary(report, DemoConfig(name="dx", keep=True))
    assert "1/2 checks passed" in text and "ambient lab down --name dx" in text
    assert "FAIL" in text


def test_progress_names_steps_and_times_them() -> None:
    out, report = io.StringIO(), DemoReport()
    with Progress(out, report).step("build"):
        pass
    with pytest.raises(RuntimeError), Progress(out, report).step("broken"):
        raise RuntimeError("boom")
    assert [s for s, _ in report.steps] == ["build", "broken"]
    assert "✔ build" in out.getvalue() and "✘ broken" in out.getvalue()


def test_unknown_sabotage_is_refused_before_anything_runs() -> None:
    with pytest.raises(DemoError) as err:
        run_demo(DemoConfig(name="dx", sabotage=frozenset({"no-such"})), io.StringIO())
    assert "no-such" in str(err.value)
    # the CLI offers exactly the sabotages the scenario knows
    from lab.demo_cli import cli

    (option,) = [p for p in cli.params if p.name == "sabotage"]
    assert set(option.type.choices) == set(SABOTAGE)  # type: ignore[attr-defined]
