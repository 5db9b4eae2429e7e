"""The capture decision, table-tested on its Python mirror of bpf/include/decide.h.

The same table runs against the compiled programs in
``tests/integration/test_bpf_decision_run.py``.
"""

from __future__ import annotations

import pytest

from agent.capture import (
    CaptureSettings,
    decide_node_ingress_syn,
    decide_pod_egress_syn,
    listener_port,
)
from agent.errors import ConfigError
from agent.layout import Verdict, WorkloadFlags

ENROLLED = int(WorkloadFlags.ENROLLED | WorkloadFlags.LOCAL)
PLAIN = int(WorkloadFlags.LOCAL)
UNKNOWN = 0
CFG = CaptureSettings(
    outbound_excluded_ports=(15008, 22),
    inbound_excluded_ports=(9090,),
    excluded_cidrs=("172.30.0.0/16",),
)

# (src flags, dst flags, destination, port) -> verdict, for a SYN leaving a pod
POD_EGRESS_TABLE = [
    # enrolled source: outbound capture, whatever the destination...
    (ENROLLED, ENROLLED, "10.244.1.3", 8080, Verdict.REDIRECT_OUTBOUND),
    (ENROLLED, PLAIN, "10.244.1.4", 8080, Verdict.REDIRECT_OUTBOUND),
    (ENROLLED, UNKNOWN, "10.244.2.2", 80, Verdict.REDIRECT_OUTBOUND),
    (ENROLLED, UNKNOWN, "10.96.0.10", 80, Verdict.REDIRECT_OUTBOUND),
    # ...except excluded ports and CIDRs
    (ENROLLED, UNKNOWN, "10.244.2.2", 15008, Verdict.PASS),
    (ENROLLED, UNKNOWN, "10.244.2.2", 22, Verdict.PASS),
    (ENROLLED, UNKNOWN, "172.30.5.11", 443, Verdict.PASS),
    # an excluded outbound port to an enrolled local pod is still inbound-captured
    (ENROLLED, ENROLLED, "10.244.1.3", 22, Verdict.REDIRECT_INBOUND),
    (ENROLLED, ENROLLED, "10.244.1.3", 15008, Verdict.REDIRECT_HBONE),
    # a source outside the mesh: only its SYNs to enrolled local pods are captured
    (PLAIN, ENROLLED, "10.244.1.3", 8080, Verdict.REDIRECT_INBOUND),
    (PLAIN, ENROLLED, "10.244.1.3", 15008, Verdict.REDIRECT_HBONE),
    (PLAIN, ENROLLED, "10.244.1.3", 9090, Verdict.PASS),
    (PLAIN, PLAIN, "10.244.1.4", 8080, Verdict.PASS),
    (PLAIN, UNKNOWN, "10.244.2.2", 8080, Verdict.PASS),
    (UNKNOWN, ENROLLED, "10.244.1.3", 8080, Verdict.REDIRECT_INBOUND),
    # an enrolled pod known but not local (never written today) is not inbound-captured
    (PLAIN, int(WorkloadFlags.ENROLLED), "10.244.2.9", 8080, Verdict.PASS),
]

# (dst flags, port) -> verdict, for a SYN arriving on the uplink to a pod of this node
NODE_INGRESS_TABLE = [
    (ENROLLED, 15008, Verdict.REDIRECT_HBONE),
    (ENROLLED, 8080, Verdict.REDIRECT_INBOUND),
    (ENROLLED, 9090, Verdict.PASS),
    (PLAIN, 8080, Verdict.PASS),
    (PLAIN, 15008, Verdict.PASS),
    (UNKNOWN, 8080, Verdict.PASS),
]


@pytest.mark.parametrize(("src", "dst", "daddr", "dport", "verdict"), POD_EGRESS_TABLE)
def test_pod_egress_syn(src: int, dst: int, daddr: str, dport: int, verdict: Verdict) -> None:
    assert decide_pod_egress_syn(CFG, src, dst, daddr, dport) is verdict


@pytest.mark.parametrize(("dst", "dport", "verdict"), NODE_INGRESS_TABLE)
def test_node_ingress_syn(dst: int, dport: int, verdict: Verdict) -> None:
    assert decide_node_ingress_syn(CFG, dst, dport) is verdict


def test_each_redirect_names_its_listener() -> None:
    assert listener_port(CFG, Verdict.REDIRECT_OUTBOUND) == 15001
    assert listener_port(CFG, Verdict.REDIRECT_INBOUND) == 15006
    assert listener_port(CFG, Verdict.REDIRECT_HBONE) == 15008
    assert listener_port(CFG, Verdict.PASS) is None


def test_settings_survive_the_c_layout() -> None:
    assert CaptureSettings.from_c(CFG.to_c()) == CFG


def test_defaults_exclude_hbone_from_pods() -> None:
    assert CaptureSettings().outbound_excluded_ports == (15008,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"outbound_port": 0},
        {"hbone_port": 70000},
        {"outbound_excluded_ports": tuple(range(1, 18))},
        {"excluded_cidrs": ("not-a-cidr",)},
        {"excluded_cidrs": ("fd00::/8",)},
        {"mark": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CaptureSettings(**kwargs)  # type: ignore[arg-type]
