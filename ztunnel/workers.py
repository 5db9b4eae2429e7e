"""Worker processes: several ztunnel event loops sharing the listeners (SO_REUSEPORT).

Python runs one event loop per core at best, so ztunnel scales across cores with
processes: the parent forks ``count`` workers before any event loop exists, each
binds the same ports with ``SO_REUSEPORT`` (the kernel spreads connections across
them), and the parent only supervises: a signal to the parent is passed to every
worker, and when one worker ends (``/quitquitquit``, a crash) the others are asked
to drain too, so the node never runs a partial ztunnel.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("ztunnel.workers")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess directory: set before it is imported, shared by workers."""


class SharedLogLevel:
    """The ``ztunnel`` logger's level, shared by one node's workers.

    ``/logging`` reaches a single worker (they share the admin port): that worker
    publishes the new level here, and every worker applies what was published last
    within :data:`FOLLOW_INTERVAL_S` (:meth:`changed`). Made before forking; the value
    is ``generation << 8 | level`` in shared memory, under a cross-process lock.
    """

    def __init__(self) -> None:
        self._cell = multiprocessing.get_context("fork").Value("q", 0)

    def publish(self, level: int) -> int:
        """Record ``level`` (a :mod:`logging` level, 0-255) as the newest; its generation."""
        if not 0 <= level <= 0xFF:
            raise ValueError(f"log level {level} does not fit the shared cell")
        with self._cell.get_lock():
            generation = (int(self._cell.value) >> 8) + 1
            self._cell.value = generation << 8 | level
        return generation

    def changed(self, seen: int) -> tuple[int, int] | None:
        """``(generation, level)`` if a level newer than generation ``seen`` was published."""
        value = int(self._cell.value)
        generation = value >> 8
        return (generation, value & 0xFF) if generation != seen else None


FOLLOW_INTERVAL_S = 0.5
"""How often a worker looks for a log level another worker was given."""


def _worker(target: Callable[[int], None], index: int) -> int:
    try:
        target(index)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def run_workers(count: int, target: Callable[[int], None]) -> int:
    """Run ``target(index)`` in ``count`` forked processes (index 0 to count - 1) until all
    end; the worst exit code."""
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # in the worker: never return into the parent's code
            os._exit(_worker(target, index))
        children.append(pid)
    log.info("ztunnel workers started: %s", children)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    worst = 0
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if remaining:
            # One worker ended: stop the rest, so the node is never half-served.
            forward(signal.SIGTERM, None)
    return worst
