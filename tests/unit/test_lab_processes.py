"""Process and teardown helpers of the lab that need no root."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import processes
from lab.errors import LabBusyError, LabNetworkError
from lab.network import set_sysctls
from lab.state import StateStore
from lab.teardown import _teardown_order


def test_teardown_removes_pods_first_and_the_fabric_last() -> None:
    names = ["t1-fabric", "t1-node1", "t1-pod-a.demo", "t1-outside", "t1-pod-b.x", "t1-node2"]
    ordered = sorted(names, key=_teardown_order)
    assert ordered[:2] == ["t1-pod-a.demo", "t1-pod-b.x"]
    assert ordered[-1] == "t1-fabric"


def test_only_namespaced_sysctls_are_written() -> None:
    with pytest.raises(LabNetworkError, match="non-namespaced"):
        set_sysctls("t1-node1", {"kernel.panic": "1"})


def test_start_time_tells_a_live_process_from_a_gone_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = processes.start_time(child.pid)
        assert started is not None
        assert processes.process_alive(child.pid, started)
        assert not processes.process_alive(child.pid, started + 1)  # a reused pid
        assert processes.kill_pids([child.pid], timeout=5) == []
        child.wait(5)
        assert not processes.process_alive(child.pid, started)
        assert processes.start_time(child.pid) is None
    finally:
        child.kill()
        child.wait(5)


def test_kill_pids_escalates_to_sigkill() -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline().strip() == "ready"
        start = time.monotonic()
        assert processes.kill_pids([stubborn.pid], timeout=0.3) == []
        assert time.monotonic() - start < 5
        assert stubborn.wait(5) == -9
    finally:
        stubborn.kill()
        stubborn.wait(5)


def test_state_lock_is_exclusive_and_bounded(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.locked():
        start = time.monotonic()
        with pytest.raises(LabBusyError, match="stayed locked"), store.locked(timeout=0.2):
            pass
        assert time.monotonic() - start < 2
    with store.locked(timeout=0.2):  # free again
        pass
