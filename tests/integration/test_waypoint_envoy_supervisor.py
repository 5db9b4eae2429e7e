"""``ambient waypoint run`` leaves no Envoy behind when it is killed itself.

No root needed: a stand-in Envoy (a shell loop) records its pid; the supervisor runs in
its own Python process and is SIGKILLed; the stand-in must be gone (the parent-death
signal), or it would keep 15008 bound against the next run. About 2 s (Python start).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_envoy_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL of 'waypoint run' leaves no Envoy behind (it would keep 15008 bound)."""
    pid_file = tmp_path / "envoy.pid"
    envoy = tmp_path / "envoy"
    envoy.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nwhile :; do sleep 0.05; done\n")
    envoy.chmod(0o755)
    script = (
        "import asyncio, pathlib, sys\n"
        "from tests.unit.test_waypoint_envoy_bootstrap import _config\n"
        "from waypoint.run import RunConfig, supervise\n"
        f"tmp = pathlib.Path({str(tmp_path)!r})\n"
        f"config = RunConfig(_config(tmp), tmp / 'work', envoy=pathlib.Path({str(envoy)!r}))\n"
        "asyncio.run(supervise(config, stop=asyncio.Event()))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and runner.poll() is None, "no envoy started"
            time.sleep(0.02)
        child = int(pid_file.read_text())
        runner.kill()
        runner.wait(5)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
            if state == "Z":  # gone, awaiting its reaper
                break
            time.sleep(0.02)
        else:
            assert not Path(f"/proc/{child}").exists(), "envoy outlived its supervisor"
    finally:
        if runner.poll() is None:
            runner.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):  # only when the test failed
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
