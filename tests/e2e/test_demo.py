"""The demo end to end: every check passes, each is its own test, each can fail.

One demo run is shared by the per-check tests (module fixture). Further runs break one
property each (``ambient demo --break ...``) and show that the check guarding it
reports FAIL, so no check passes by construction.
"""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.demo import CHECKS, DemoConfig, DemoReport, run_demo, summary

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(600)]


def _leftovers(name: str) -> tuple[list[str], list[int]]:
    """Namespaces named after the lab, and processes whose command line names them."""
    netns = [
        line.split()[0]
        for line in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if line.startswith(f"{name}-")
    ]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"{name}-node" in cmdline or f"/lab/{name}/" in cmdline:
                pids.append(int(entry.name))
    return netns, pids


def _run(
    sabotage: frozenset[str] = frozenset(), checks: frozenset[int] = frozenset()
) -> tuple[DemoReport, str, str]:
    name = f"e2e{uuid.uuid4().hex[:5]}"
    out = io.StringIO()
    report = run_demo(DemoConfig(name=name, sabotage=sabotage, checks=checks), out)
    return report, out.getvalue(), name


MESH_CHECKS = frozenset(range(1, 8))
L7_CHECKS = frozenset(range(8, 14))
L7_BREAKS = {
    "no-canary-change": 8,
    "no-header-routing": 9,
    "no-retries": 10,
    "no-circuit-breaking": 11,
    "no-l7-authorization": 12,
    "no-ingress": 13,
}


@pytest.fixture(scope="module")
def demo_run() -> Iterator[tuple[DemoReport, str, str]]:
    yield _run()


@pytest.mark.parametrize("number", range(1, len(CHECKS) + 1))
def test_check_passes(demo_run: tuple[DemoReport, str, str], number: int) -> None:
    report, output, _ = demo_run
    result = next(c for c in report.checks if c.number == number)
    assert result.passed, f"check {number} ({result.title}) failed:\n{output}"
    assert result.evidence, "a check always shows its evidence"


def test_report_and_summary(demo_run: tuple[DemoReport, str, str]) -> None:
    report, output, _ = demo_run
    assert report.passed, output
    assert [c.number for c in report.checks] == list(range(1, len(CHECKS) + 1))
    text = summary(report, DemoConfig())
    assert f"{len(CHECKS)}/{len(CHECKS)} checks passed" in text
    assert "teardown" in output


def test_nothing_left_behind(demo_run: tuple[DemoReport, str, str]) -> None:
    _, _, name = demo_run
    assert _leftovers(name) == ([], [])
    assert not list(Path("/sys/fs/bpf/ambient").glob(f"{name}-*"))
    assert not list(Path("/etc/netns").glob(f"{name}-*"))


@pytest.mark.parametrize(
    ("sabotage", "failing"),
    [
        ("no-authorization-policy", {5}),
        ("no-peer-authentication", {4}),
        # ztunnel connects to the pod from the node's address: the backend (and, under
        # PERMISSIVE, check 4's view of the client) no longer sees the real caller.
        ("no-source-ip", {3}),
        # The tutorial namespace not bound to its waypoint: ztunnel alone spreads by
        # endpoint (2 v1 pods, 1 v2: 2:1), so the 80/20 split does not hold.
        ("no-waypoint", {8}),
        # Without capture nothing reaches ztunnel: the Service VIP is unreachable, traffic
        # crosses in clear, a stopped ztunnel changes nothing, and no metric moves.
        ("no-agents", {1, 2, 6, 7}),
    ],
)
def test_breaking_a_property_fails_its_check(sabotage: str, failing: set[int]) -> None:
    report, output, name = _run(frozenset({sabotage}), frozenset(failing) | MESH_CHECKS)
    failed = {c.number for c in report.checks if not c.passed}
    assert failing <= failed, f"--break {sabotage} should fail checks {failing}:\n{output}"
    assert not report.passed
    assert _leftovers(name) == ([], [])


@pytest.fixture(scope="module")
def l7_broken_run() -> Iterator[tuple[DemoReport, str, str]]:
    """One run of checks 8-13 with each one's property broken (each break touches only
    the configuration its own check applies, so one run shows all six)."""
    yield _run(frozenset(L7_BREAKS), L7_CHECKS)


@pytest.mark.parametrize(("sabotage", "number"), list(L7_BREAKS.items()))
def test_breaking_an_l7_property_fails_its_check(
    l7_broken_run: tuple[DemoReport, str, str], sabotage: str, number: int
) -> None:
    report, output, name = l7_broken_run
    result = next(c for c in report.checks if c.number == number)
    assert not result.passed, f"--break {sabotage} should fail check {number}:\n{output}"
    # It failed because of the break, not because L7 could not be set up at all.
    assert not result.evidence[0].startswith("not run"), output
    assert _leftovers(name) == ([], [])


def test_ctrl_c_tears_everything_down() -> None:
    """SIGINT while the mesh is coming up: exit 130, no namespace, process or pin left."""
    import signal
    import sys
    import time

    name = f"e2c{uuid.uuid4().hex[:5]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ambient", "demo", "--name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # Interrupt once the agents are being started: namespaces, pods and processes exist.
        while time.monotonic() < deadline and proc.poll() is None:
            if list(Path(f"/run/ambient/lab/{name}/logs").glob("agent-*.log")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the demo ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "teardown" in out
    assert _leftovers(name) == ([], [])
    assert not list(Path("/sys/fs/bpf/ambient").glob(f"{name}-*"))
