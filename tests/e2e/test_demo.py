"""The demo end to end: every check passes, each is its own test, each can fail.

One demo run is shared by the per-check tests (module fixture); a second run without
the node agents shows that the capture checks really depend on capture.
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

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def _leftovers(name: str) -> tuple[list[str], list[int]]:
    """Namespaces named after the lab, and processes in a namespace of that name."""
    netns = [
        line.split()[0]
        for line in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if line.startswith(f"{name}-")
    ]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"{name}-node" in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return netns, pids


@pytest.fixture(scope="module")
def demo_run() -> Iterator[tuple[DemoReport, str, str]]:
    name = f"e2e{uuid.uuid4().hex[:5]}"
    out = io.StringIO()
    report = run_demo(DemoConfig(name=name), out)
    yield report, out.getvalue(), name


@pytest.mark.parametrize("number", range(1, len(CHECKS) + 1))
def test_check_passes(demo_run: tuple[DemoReport, str, str], number: int) -> None:
    report, output, _ = demo_run
    result = next(c for c in report.checks if c.number == number)
    assert result.passed, f"check {number} ({result.title}) failed:\n{output}"
    assert result.evidence, "a check always shows its evidence"


def test_report_and_summary(demo_run: tuple[DemoReport, str, str]) -> None:
    report, output, _ = demo_run
    assert report.passed
    assert [c.number for c in report.checks] == list(range(1, len(CHECKS) + 1))
    text = summary(report, DemoConfig())
    assert f"{len(CHECKS)}/{len(CHECKS)} checks passed" in text
    assert "teardown" in output


def test_nothing_left_behind(demo_run: tuple[DemoReport, str, str]) -> None:
    _, _, name = demo_run
    netns, pids = _leftovers(name)
    assert netns == [], f"namespaces left: {netns}"
    assert pids == [], f"processes left: {pids}"
    assert not list(Path("/sys/fs/bpf/ambient").glob(f"{name}-*"))


def test_without_capture_the_capture_checks_fail() -> None:
    """With the agents not running, enrollment and fail-closed report FAIL."""
    name = f"e2n{uuid.uuid4().hex[:5]}"
    report = run_demo(DemoConfig(name=name, run_agents=False), io.StringIO())
    by_number = {c.number: c for c in report.checks}
    assert by_number[1].passed  # plain routing does not need the mesh
    assert not by_number[2].passed
    assert not by_number[3].passed, "traffic flowed in clear, so fail-closed must FAIL"
    assert not report.passed
    assert _leftovers(name) == ([], [])
