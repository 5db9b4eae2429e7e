"""Log lines leave in batches (ztunnel's access lines): one write per batch, in order."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import pytest

from ztunnel.logbatch import BatchedStreamHandler, batch_stream_handlers


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("the log's reader is gone")


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger


def test_lines_wait_for_the_interval_then_leave_in_one_write() -> None:
    async def scenario() -> CountingStream:
        stream = CountingStream()
        handler = BatchedStreamHandler(stream, asyncio.get_running_loop(), interval=0.05)
        log = _logger(handler, "test.batch.interval")
        for i in range(3):
            log.info("line %d", i)
        assert stream.writes == 0  # queued, not written
        await asyncio.sleep(0.1)
        return stream

    stream = asyncio.run(scenario())
    assert stream.writes == 1
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"


def test_a_full_batch_is_written_without_waiting() -> None:
    async def scenario() -> CountingStream:
        stream = CountingStream()
        handler = BatchedStreamHandler(
            stream, asyncio.get_running_loop(), interval=60, batch_bytes=100
        )
        log = _logger(handler, "test.batch.size")
        for i in range(10):
            log.info("%02d %s", i, "x" * 20)  # 24 bytes a line: a write every 5 lines
        return stream

    stream = asyncio.run(scenario())
    assert stream.writes == 2
    assert stream.getvalue().splitlines() == [f"{i:02d} {'x' * 20}" for i in range(10)]


def test_a_line_from_another_thread_is_written_at_once_after_the_queued_ones() -> None:
    async def scenario() -> CountingStream:
        stream = CountingStream()
        handler = BatchedStreamHandler(stream, asyncio.get_running_loop(), interval=60)
        log = _logger(handler, "test.batch.thread")
        log.info("from the loop")
        worker = threading.Thread(target=log.info, args=("from a thread",))
        worker.start()
        worker.join()
        return stream

    stream = asyncio.run(scenario())
    assert stream.writes == 1
    assert stream.getvalue() == "from the loop\nfrom a thread\n"


def test_a_gone_reader_loses_the_lines_but_not_the_process() -> None:
    async def scenario() -> None:
        handler = BatchedStreamHandler(BrokenStream(), asyncio.get_running_loop(), interval=0.01)
        log = _logger(handler, "test.batch.broken")
        log.info("nobody reads this")
        await asyncio.sleep(0.05)  # the timer's write fails quietly
        handler.flush()

    asyncio.run(scenario())


def test_the_root_stream_handler_is_batched_and_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = logging.getLogger()
    stream = CountingStream()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(plain)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        undo = batch_stream_handlers(asyncio.get_running_loop())
        try:
            assert plain not in root.handlers
            batched = [h for h in root.handlers if isinstance(h, BatchedStreamHandler)]
            assert len(batched) == 1 and batched[0].stream is stream
            assert caplog.handler in root.handlers  # other handlers stay
            logging.getLogger("test.batch.root").info("one")
            logging.getLogger("test.batch.root").info("two")
            assert stream.writes == 0
        finally:
            undo()  # writes what is queued
        assert plain in root.handlers
        assert not any(isinstance(h, BatchedStreamHandler) for h in root.handlers)

    try:
        asyncio.run(scenario())
    finally:
        root.removeHandler(plain)
    assert stream.writes == 1
    assert stream.getvalue() == "INFO one\nINFO two\n"
    assert [r.getMessage() for r in caplog.records if r.name == "test.batch.root"] == ["one", "two"]
