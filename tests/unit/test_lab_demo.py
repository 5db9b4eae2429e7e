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


def test_binomial_interval_and_split() -> None:
    from lab.demo_l7 import binomial_interval, split_within

    low, high = binomial_interval(1000, 0.8)
    assert 757 < low < 759 and 841 < high < 843
    assert split_within({"v1": 800, "v2": 200}, {"v1": 80, "v2": 20}, 1000)
    assert split_within({"v1": 760, "v2": 240}, {"v1": 80, "v2": 20}, 1000)
    # 2 v1 pods and 1 v2 pod without a waypoint: ztunnel spreads by endpoint, 2:1
    assert not split_within({"v1": 667, "v2": 333}, {"v1": 80, "v2": 20}, 1000)
    assert not split_within({"v1": 800, "v2": 199}, {"v1": 80, "v2": 20}, 1000)  # one lost


def test_switch_delay_needs_every_later_answer_from_the_new_version() -> None:
    from lab.demo_l7 import stamped_versions, switch_delay

    log = "\n".join(
        [
            "100.000 200 Hello from backend v1",
            "100.400 200 Hello from backend v2",
            "100.500 200 Hello from backend v1",
            "100.700 200 Hello from backend v2",
            "garbage",
            "100.900 200 Hello from backend v2",
        ]
    )
    stamped = stamped_versions(log)
    assert len(stamped) == 5
    assert switch_delay(stamped, 100.1, "v2") == pytest.approx(0.6)
    assert switch_delay(stamped[:3], 100.1, "v2") is None
    assert switch_delay([(100.0, "v1")], 99.0, "v2") is None


def test_demo_config_runs_selected_checks() -> None:
    assert DemoConfig().runs(13)
    assert DemoConfig(checks=frozenset({8})).runs(8)
    assert not DemoConfig(checks=frozenset({8})).runs(1)


def test_thirteen_checks_numbered_in_order() -> None:
    from lab.demo import CHECKS

    numbers = [int((c.__doc__ or "").partition(".")[0]) for c in CHECKS]
    assert numbers == list(range(1, 14))


def test_l7_checks_report_fail_with_the_missing_piece() -> None:
    from types import SimpleNamespace

    from lab.demo_l7 import L7_CHECKS

    world = SimpleNamespace(l7_missing="no 'ambient waypoint run'", ingress_missing="no pod")
    for check in L7_CHECKS:
        result = check(world)  # type: ignore[arg-type]
        assert not result.passed
        assert result.evidence[0].startswith("not run: no ")
