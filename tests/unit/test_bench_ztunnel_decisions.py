"""The ztunnel-decisions benchmark case: consistent, and its states make the decisions it times."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.case import RunSettings, check_case
from bench.cases import ztunnel_decisions
from bench.cases.ztunnel_decisions import ZtunnelDecisions, _Mesh
from ztunnel.proxy import inbound, outbound


def test_the_case_is_consistent_with_the_smallest_state_as_baseline() -> None:
    case = ZtunnelDecisions()
    check_case(case)
    assert case.baseline().name == "10-pods"


@pytest.mark.parametrize("size", [10, 40, 1000])
def test_every_state_meets_the_same_policies_on_the_measured_connection(size: int) -> None:
    mesh = _Mesh(size)
    target = mesh.state.workload_by_ip(ztunnel_decisions._ip(mesh.target))
    assert target is not None
    # The same mix whatever the size: the global DENY, four DENYs and three ALLOWs of
    # the namespace, and the one selector-bound ALLOW naming the target.
    kinds = sorted((p.scope.name, p.action.name) for p in mesh.state.policies_for(target))
    assert kinds == sorted(
        [("GLOBAL", "DENY"), ("WORKLOAD_SELECTOR", "ALLOW")]
        + [("NAMESPACE", "DENY")] * 4
        + [("NAMESPACE", "ALLOW")] * 3
    )
    mesh.outbound()  # raises unless the connection is tunnelled
    mesh.inbound()()  # raises unless the tunnel is allowed and its service found
    plan = mesh.plan()
    assert isinstance(plan, outbound.Tunnel) and plan.destination == target
    decision = inbound.decide_hbone(
        mesh.state,
        plan.request,
        peer_identity=mesh.client_identity,
        peer_ip=mesh.client.addresses[0],
        node="node2",
    )
    assert isinstance(decision, inbound.Admit)


def test_a_measurement_is_a_positive_time_per_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ztunnel_decisions, "SIZES", {"10-pods": 10, "1000-pods": 30})
    case = ZtunnelDecisions()
    settings = RunSettings(rounds=1, duration_s=0.05, quick=True, work_dir=tmp_path, lab_prefix="t")
    with case.environment(settings):
        for probe in case.probes:
            value = case.measure(case.variant("10-pods"), probe, 0)["decision"]
            assert 0 < value < 10_000
