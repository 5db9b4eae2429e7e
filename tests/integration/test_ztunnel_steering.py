"""Worker steering (bpf/worker_steer.c) in the kernel: BCC compiles and loads the
``SK_REUSEPORT`` programs in a child (:func:`ztunnel.steering.load`), listeners of two
or three "workers" inside a namespace this test creates join them, and the kernel
hands connections to the listener the program picks:

- one after another, every connection goes to worker 0 (a warm worker);
- held open in parallel, they spread: two per worker, then to the least loaded;
- each listener's connections count apart (HBONE's are not outbound's);
- a worker whose listener is gone leaves its connections to the others;
- ``ambient ztunnel run --workers 2`` inside the namespace loads it and says so.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from agent.testrun import in_netns
from ztunnel.steering import Steering, load

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(120)]

NS = f"steer{os.getpid()}"
PORT = 15001
T = TypeVar("T")


@pytest.fixture
def steerings() -> Iterator[list[Steering]]:
    """Steerings a test loads, closed after it."""
    loaded: list[Steering] = []
    yield loaded
    for steering in loaded:
        steering.close()


def loaded(steerings: list[Steering], workers: int) -> Steering:
    steerings.append(load(workers))
    return steerings[-1]


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NS], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True, timeout=10)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, timeout=10)


class Workers:
    """One listener per worker on 127.0.0.1:PORT inside the namespace, joined to ``listener``;
    the connections made and still open."""

    def __init__(self, steering: Steering, listener: str, count: int, port: int = PORT) -> None:
        self.steering = steering
        self.listener = listener
        self.port = port
        self.socks: list[socket.socket] = []
        self.held: list[tuple[socket.socket, socket.socket, int]] = []
        for worker in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            sock.setblocking(False)
            steering.for_worker(worker).join(listener, sock)
            self.socks.append(sock)

    def connect(self) -> int:
        """A new connection, held open: the worker that got it."""
        client = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        ready, _, _ = select.select([s for s in self.socks if s.fileno() >= 0], [], [], 5)
        assert len(ready) == 1, "one listener, and only one, holds the connection"
        accepted, _ = ready[0].accept()
        worker = self.socks.index(ready[0])
        self.held.append((client, accepted, worker))
        return worker

    def finish(self, worker: int) -> None:
        """Close one of ``worker``'s connections, and count it finished as ztunnel does."""
        held = next(h for h in self.held if h[2] == worker)
        self.held.remove(held)
        held[0].close()
        held[1].close()
        self.steering.for_worker(worker).finished(self.listener)

    def one_after_another(self, count: int) -> list[int]:
        chosen = []
        for _ in range(count):
            chosen.append(self.connect())
            self.finish(chosen[-1])
        return chosen

    def close(self) -> None:
        for client, accepted, _ in self.held:
            client.close()
            accepted.close()
        for sock in self.socks:
            sock.close()


def with_workers(
    netns: str, steering: Steering, listener: str, count: int, fn: Callable[[Workers], T]
) -> T:
    """``fn(workers)`` inside the namespace; every socket closed after it."""

    def body() -> T:
        workers = Workers(steering, listener, count)
        try:
            return fn(workers)
        finally:
            workers.close()

    return in_netns(netns, body)


def test_one_connection_after_another_stays_on_the_first_worker(
    netns: str, steerings: list[Steering]
) -> None:
    steering = loaded(steerings, 2)
    chosen = with_workers(netns, steering, "outbound", 2, lambda w: w.one_after_another(30))
    # The kernel's hash would give a new client port either worker (all on one: 2**-29).
    assert chosen == [0] * 30
    assert steering.open_connections("outbound", 0) == 0


def test_parallel_connections_spread_two_per_worker_then_to_the_least_loaded(
    netns: str, steerings: list[Steering]
) -> None:
    steering = loaded(steerings, 3)

    def scenario(workers: Workers) -> list[int]:
        chosen = [workers.connect() for _ in range(9)]
        workers.finish(1)  # one finishes on worker 1: the next goes there, the least loaded
        return [*chosen, workers.connect()]

    chosen = with_workers(netns, steering, "plaintext", 3, scenario)
    assert chosen[:6] == [0, 0, 1, 1, 2, 2]
    assert chosen[6:] == [0, 1, 2, 1]  # all at two: the fewest, the lowest first
    assert [steering.open_connections("plaintext", w) for w in range(3)] == [3, 3, 3]


def test_each_listener_counts_its_own_connections(netns: str, steerings: list[Steering]) -> None:
    steering = loaded(steerings, 2)

    def scenario(outbound: Workers) -> list[int]:
        assert [outbound.connect() for _ in range(2)] == [0, 0]  # worker 0 has two outbound
        hbone = Workers(steering, "hbone", 2, port=15008)
        try:
            return [hbone.connect() for _ in range(4)]
        finally:
            hbone.close()

    assert with_workers(netns, steering, "outbound", 2, scenario) == [0, 0, 1, 1]
    assert steering.open_connections("outbound", 0) == 2
    assert [steering.open_connections("hbone", w) for w in range(2)] == [2, 2]


def test_a_worker_without_its_listener_leaves_connections_to_the_others(
    netns: str, steerings: list[Steering]
) -> None:
    steering = loaded(steerings, 2)

    def scenario(workers: Workers) -> list[int]:
        workers.socks[0].close()  # worker 0 has gone: the program's pick fails
        return workers.one_after_another(5)

    assert with_workers(netns, steering, "outbound", 2, scenario) == [1] * 5


def test_ztunnel_with_two_workers_steers_its_connections(netns: str, tmp_path: Path) -> None:
    """The CLI loads the programs before it forks; both workers join every listener."""
    argv = [sys.executable, "-m", "ambient", "ztunnel", "run", "--no-transparent"]
    argv += ["--workers", "2", "--ca-dir", str(tmp_path / "ca"), "--proxy-address", "127.0.0.1"]
    log_path = tmp_path / "ztunnel.log"
    with log_path.open("w") as log:
        ztunnel = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("ztunnel listening") < 2:
            assert ztunnel.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        text = log_path.read_text()
        assert "worker steering: least-loaded over 2 workers (eBPF)" in text
        assert "kernel's hash" not in text, text
    finally:
        ztunnel.send_signal(signal.SIGTERM)
        try:
            ztunnel.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ztunnel.kill()
            ztunnel.wait(timeout=10)
