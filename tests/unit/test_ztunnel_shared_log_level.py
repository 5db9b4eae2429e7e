"""SharedLogLevel: what one worker publishes, every forked worker sees, newest first."""

from __future__ import annotations

import logging
import os

import pytest

from ztunnel.workers import SharedLogLevel


def test_nothing_published_is_no_change() -> None:
    assert SharedLogLevel().changed(0) is None


def test_the_newest_level_wins_and_is_seen_once() -> None:
    shared = SharedLogLevel()
    first = shared.publish(logging.DEBUG)
    second = shared.publish(logging.WARNING)
    assert second == first + 1
    assert shared.changed(0) == (second, logging.WARNING)
    assert shared.changed(first) == (second, logging.WARNING)
    assert shared.changed(second) is None


def test_a_level_published_in_a_forked_worker_reaches_the_others() -> None:
    shared = SharedLogLevel()  # made before forking, as the supervisor does
    pid = os.fork()
    if pid == 0:  # the worker that answered /logging
        shared.publish(logging.DEBUG)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.changed(0) == (1, logging.DEBUG)


def test_a_level_outside_the_cell_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        SharedLogLevel().publish(256)
