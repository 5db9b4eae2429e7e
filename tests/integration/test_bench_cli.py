"""`python -m bench` as a user runs it: a SIGTERM mid-run leaves no lab and no proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def test_sigterm_mid_run_tears_everything_down(tmp_path: Path) -> None:
    prefix = f"bs{os.getpid() % 10000}"
    lab_netns = f"{prefix}p2p-"
    argv = [sys.executable, "-m", "bench", "--case", "pod-to-pod", "--quick"]
    argv += ["--lab-prefix", prefix, "--results", str(tmp_path)]
    log_path = tmp_path / "bench.log"  # a file, not a pipe nobody drains while we wait
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        # wait until measuring has started: the Envoys run from the run's work folder
        while time.monotonic() < deadline and not _pids_mentioning(f"{tmp_path}/"):
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.2)
        assert _pids_mentioning(f"{tmp_path}/"), "the case never started its processes"
        assert _namespaces(lab_netns)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        left_namespaces = _namespaces(lab_netns)
        left_pids = _pids_mentioning(f"{tmp_path}/")
        if left_namespaces or left_pids:  # clean up what the harness failed to, then fail
            for pid in left_pids:
                os.kill(pid, signal.SIGKILL)
            subprocess.run(
                [sys.executable, "-m", "ambient", "lab", "down", "--name", f"{prefix}p2p"],
                cwd=REPO,
                check=False,
                capture_output=True,
                timeout=60,
            )
    assert left_namespaces == []
    assert left_pids == []
