"""Log lines written in batches: one system call per batch, not one per line.

ztunnel writes an access line per connection and side (as Istio's does). Through the
standard ``StreamHandler`` each line was its own ``write`` on the log's file or pipe
(and, under Kubernetes, a wake-up of the process reading that pipe). Here a line is
formatted at once and queued; the queue is written when it holds ``BATCH_BYTES`` or
``FLUSH_INTERVAL_S`` after its first line, whichever comes first, and at exit. A line
logged outside the event loop's thread is written at once, after what is queued.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TextIO

FLUSH_INTERVAL_S = 0.05
"""How long a line may wait for others to share its write."""
BATCH_BYTES = 64 * 1024
"""Queued text that is written without waiting for the interval."""


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` whose lines leave in batches from the event loop's thread."""

    def __init__(
        self,
        stream: TextIO,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float = FLUSH_INTERVAL_S,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        super().__init__(stream)
        self._loop = loop
        self._thread = threading.get_ident()
        self._interval = interval
        self._batch_bytes = batch_bytes
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging reports its own errors
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line) + 1
        if (
            self._size >= self._batch_bytes
            or threading.get_ident() != self._thread
            or self._loop.is_closed()
        ):
            self._write()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Write what is queued now (the timer's callback; logging calls it at exit)."""
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the log's reader is gone (or the stream closed): nothing to tell it

    def close(self) -> None:
        self.flush()
        super().close()


def batch_stream_handlers(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Put a :class:`BatchedStreamHandler` in place of each plain ``StreamHandler`` on the
    root logger (same stream, formatter, level and filters); return the undo, which
    writes what is queued first."""
    root = logging.getLogger()
    swapped: list[tuple[logging.Handler, BatchedStreamHandler]] = []
    for handler in list(root.handlers):
        if type(handler) is not logging.StreamHandler:
            continue  # files, pytest's capture...: left as they are
        batched = BatchedStreamHandler(handler.stream, loop)
        batched.setFormatter(handler.formatter)
        batched.setLevel(handler.level)
        for filter_ in handler.filters:
            batched.addFilter(filter_)
        root.removeHandler(handler)
        root.addHandler(batched)
        swapped.append((handler, batched))

    def undo() -> None:
        for handler, batched in swapped:
            batched.flush()
            root.removeHandler(batched)
            root.addHandler(handler)

    return undo
