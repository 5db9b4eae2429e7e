"""Worker steering without the kernel: the counters' layout, what the loader's answer
and the child's errors become, the configuration and the CLI's fallback to the kernel's
hash. (The programs themselves: tests/integration/test_ztunnel_steering.py.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from typing import Any

import pytest

from agent.programs import loader_child_reason
from ztunnel import steering as steering_module
from ztunnel.cli import _load_steering
from ztunnel.config import ZtunnelConfig
from ztunnel.errors import ConfigError
from ztunnel.steering import LISTENERS, Steering, SteeringError, _main, _received, load


def counters(workers: int) -> Steering:
    """A steering over plain memory: the counters' layout, with no program behind it."""
    size = len(LISTENERS) * workers * 2
    return Steering(
        workers=workers,
        programs={},
        sockets={},
        counts_fd=-1,
        counts=memoryview(bytearray(size * 8)).cast("Q"),
    )


def test_a_worker_counts_its_finished_connections_in_its_own_slot() -> None:
    steering = counters(3)
    steered = steering._slot("hbone", 2) * 2  # what the program increments at the SYN
    steering.counts[steered] += 5
    worker = steering.for_worker(2)
    worker.finished("hbone")
    worker.finished("hbone")
    assert steering.open_connections("hbone", 2) == 3
    # Nobody else's counters moved.
    others = [(listener, w) for listener in LISTENERS for w in range(3)]
    others.remove(("hbone", 2))
    assert all(steering.open_connections(listener, w) == 0 for listener, w in others)
    assert sum(steering.counts) == 5 + 2


def test_slots_follow_the_programs_layout() -> None:
    # bpf/worker_steer.c: slot = listener * WORKERS + worker, listeners in this order.
    steering = counters(4)
    assert LISTENERS == ("outbound", "plaintext", "hbone")
    assert [steering._slot(listener, 1) for listener in LISTENERS] == [1, 5, 9]


def test_a_worker_index_outside_the_workers_is_refused() -> None:
    with pytest.raises(SteeringError, match=r"worker 2 outside 0\.\.1"):
        counters(2).for_worker(2)


def test_one_worker_needs_no_steering() -> None:
    with pytest.raises(SteeringError, match="at least two workers"):
        load(1)


def test_an_unusable_answer_from_the_loader_is_an_error_and_its_descriptors_are_closed() -> None:
    fds = [fd for pair in (os.pipe(), os.pipe()) for fd in pair]
    with pytest.raises(SteeringError, match="unusable: 4 descriptors"):
        _received(2, json.dumps({"fds": ["a", "b", "c", "d"]}).encode(), fds)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(SteeringError, match="unusable"):
        _received(2, b"not json", [])


def test_the_childs_error_line_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def child(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert argv[1:3] == ["-m", "ztunnel.steering"] and argv[3] == "2"
        assert kwargs["pass_fds"] == (int(argv[4]),)
        stderr = (
            "error: cannot create the outbound steering map: Operation not permitted\n"
            "hint: needs root (CAP_BPF and CAP_NET_ADMIN) and Linux 4.19+\n"
        )
        return subprocess.CompletedProcess(argv, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", child)
    with pytest.raises(SteeringError) as raised:
        load(2)
    assert raised.value.message == (
        "the steering program did not load: "
        "cannot create the outbound steering map: Operation not permitted"
    )


def test_a_loader_childs_reason_is_its_error_line_else_its_last_line_else_its_code() -> None:
    def failed(stderr: str) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(["child"], 3, "", stderr)

    # The agent's capture-program child reports the same way (agent.programs).
    assert loader_child_reason(failed("error: no headers\nhint: install them\n")) == "no headers"
    assert loader_child_reason(failed("Traceback ...\nKeyError: 'x'\n")) == "KeyError: 'x'"
    assert loader_child_reason(failed("")) == "exit code 3"


def test_a_child_that_exits_without_answering_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def silent(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", silent)
    with pytest.raises(SteeringError, match="exited without sending the programs"):
        load(2)


def test_the_child_refuses_other_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["two"]) == 2
    assert "usage: python -m ztunnel.steering WORKERS FD" in capsys.readouterr().err


def test_an_unknown_worker_balance_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="worker_balance='random' is not known") as raised:
        ZtunnelConfig(worker_balance="random")
    assert raised.value.hint == "use one of least-loaded, kernel"


def test_the_cli_keeps_the_kernels_hash_when_steering_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[int] = []

    def refuse(workers: int) -> Steering:
        asked.append(workers)
        raise SteeringError("cannot create the outbound steering map", hint="needs root")

    monkeypatch.setattr(steering_module, "load", refuse)
    with caplog.at_level(logging.WARNING, logger="ztunnel"):
        assert _load_steering(ZtunnelConfig(workers=2)) is None
    assert asked == [2]
    assert (
        "worker steering unavailable, the kernel's hash spreads connections over the 2 "
        "workers: cannot create the outbound steering map (needs root)"
    ) in caplog.text
    # Not asked for, or nothing to steer: not loaded at all.
    assert _load_steering(ZtunnelConfig(workers=2, worker_balance="kernel")) is None
    assert _load_steering(ZtunnelConfig(workers=1)) is None
    assert asked == [2]
