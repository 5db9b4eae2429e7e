"""Worker steering: which of ztunnel's workers takes a new connection.

The workers share the listeners with ``SO_REUSEPORT``; by default the kernel picks
one by a hash of the connection's 4-tuple. :file:`bpf/worker_steer.c` picks by load
instead: the lowest-numbered worker with fewer than two connections open on that
listener, else the one with the fewest. A client's connections one after another stay
on one warm worker, parallel ones spread.

Loading, in the parent before it forks the workers (:func:`load`): a short-lived
child (``python -m ztunnel.steering``) makes the three ``REUSEPORT_SOCKARRAY`` maps
with libbpf, compiles the program with BCC (whose LLVM would otherwise stay in every
worker's memory for good), loads it, and hands the file descriptors back over a Unix
socket (``SCM_RIGHTS``). The load counts map is memory-mapped; the workers inherit
descriptors and mapping with ``fork``. Each worker puts its listening sockets in the
maps and attaches the programs (:meth:`WorkerSteering.join`), and counts every
connection it is done with (:meth:`WorkerSteering.finished`: a store in the mapping).

Where the kernel or the privileges refuse any of it, :func:`load` raises
:class:`SteeringError` and ztunnel keeps the kernel's hash (with a warning): steering
changes where connections are served, never whether.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ztunnel.errors import ZtunnelError

LISTENERS = ("outbound", "plaintext", "hbone")
"""The steered listeners, in the order of the program's load slots."""
SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "worker_steer.c"
SO_ATTACH_REUSEPORT_EBPF = 52
BPF_PROG_TYPE_SK_REUSEPORT = 21
BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20
BPF_ANY = 0
LOAD_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 5.0
"""How long the parent waits for the descriptors once the loader child has exited
(they are in the socket by then, or the child's end is closed)."""
_COUNTERS_PER_SLOT = 2  # steered (by the program), finished (by the worker)
_FINISHED = 1


class SteeringError(ZtunnelError):
    """Worker steering could not be loaded or joined (the kernel's hash stays)."""


def _libbpf() -> ctypes.CDLL:
    from agent.errors import PinnedStateError
    from agent.pinned import libbpf

    try:
        return libbpf()
    except PinnedStateError as err:  # no libbpf here
        raise SteeringError(err.message, hint=err.hint) from err


@dataclass
class Steering:
    """The loaded programs and maps: file descriptors of this process, kept across fork."""

    workers: int
    programs: dict[str, int]
    """Listener -> ``SK_REUSEPORT`` program."""
    sockets: dict[str, int]
    """Listener -> its ``REUSEPORT_SOCKARRAY`` (index: worker)."""
    counts_fd: int
    counts: memoryview = field(repr=False)
    """``u64`` counters, two per (listener, worker) slot: steered, finished."""

    def for_worker(self, worker: int) -> WorkerSteering:
        """What worker ``worker`` (0-based) uses."""
        if not 0 <= worker < self.workers:
            raise SteeringError(f"worker {worker} outside 0..{self.workers - 1}")
        return WorkerSteering(self, worker)

    def open_connections(self, listener: str, worker: int) -> int:
        """Connections the program gave ``worker`` on ``listener`` and it has not finished."""
        first = self._slot(listener, worker) * _COUNTERS_PER_SLOT
        steered, finished = self.counts[first], self.counts[first + _FINISHED]
        return int(steered) - int(finished)

    def _slot(self, listener: str, worker: int) -> int:
        return LISTENERS.index(listener) * self.workers + worker

    def close(self) -> None:
        """Close this process's descriptors (listeners that joined keep the program)."""
        self.counts.release()
        for fd in (*self.programs.values(), *self.sockets.values(), self.counts_fd):
            os.close(fd)


class WorkerSteering:
    """One worker's side: put its listeners in the maps, count the connections it ends."""

    def __init__(self, steering: Steering, worker: int) -> None:
        self.steering = steering
        self.worker = worker
        self._finished_at = {
            listener: steering._slot(listener, worker) * _COUNTERS_PER_SLOT + _FINISHED
            for listener in LISTENERS
        }

    def join(self, listener: str, sock: socket.socket) -> None:
        """Put ``sock`` (listening, ``SO_REUSEPORT``) in ``listener``'s map at this worker's
        index and attach the program to its reuseport group (every worker does; the group
        has one program)."""
        steering = self.steering
        key = ctypes.c_uint32(self.worker)
        value = ctypes.c_uint64(sock.fileno())
        lib = _libbpf()
        if lib.bpf_map_update_elem(
            steering.sockets[listener], ctypes.byref(key), ctypes.byref(value), BPF_ANY
        ):
            err = ctypes.get_errno()
            raise SteeringError(
                f"worker {self.worker}: cannot add its {listener} listener to the steering "
                f"map: {os.strerror(err)}"
            )
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, steering.programs[listener]
            )
        except OSError as err:
            raise SteeringError(
                f"worker {self.worker}: cannot attach the steering program to its "
                f"{listener} listener: {err.strerror or err}"
            ) from err

    def finished(self, listener: str) -> None:
        """This worker is done with one connection accepted on ``listener``."""
        self.steering.counts[self._finished_at[listener]] += 1


# --- loading (parent) -------------------------------------------------------------


def load(workers: int, *, timeout: float = LOAD_TIMEOUT_S) -> Steering:
    """Compile and load the steering programs for ``workers`` workers in a child process."""
    if workers < 2:
        raise SteeringError("steering needs at least two workers")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "ztunnel.steering", str(workers), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise SteeringError(
                f"compiling the steering program took longer than {timeout:.0f}s"
            ) from err
        theirs.close()
        if done.returncode != 0:
            from agent.programs import loader_child_reason

            raise SteeringError(f"the steering program did not load: {loader_child_reason(done)}")
        ours.settimeout(ANSWER_TIMEOUT_S)
        try:
            message, fds, _flags, _addr = socket.recv_fds(ours, 4096, 2 * len(LISTENERS) + 1)
        except OSError as err:
            raise SteeringError(f"no answer from the steering loader: {err}") from err
        if not message:
            raise SteeringError("the steering loader exited without sending the programs")
    finally:
        theirs.close()
        ours.close()
    return _received(workers, message, fds)


def _received(workers: int, message: bytes, fds: list[int]) -> Steering:
    try:
        names = json.loads(message)["fds"]
        if len(names) != len(fds) or len(fds) != 2 * len(LISTENERS) + 1:
            raise ValueError(f"{len(fds)} descriptors for {names}")
        by_name = dict(zip(names, fds, strict=True))
        counts_fd = by_name["counts"]
        size = len(LISTENERS) * workers * _COUNTERS_PER_SLOT * 8
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        mapped = mmap.mmap(counts_fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        counts = memoryview(mapped).cast("Q")[: size // 8]
        return Steering(
            workers=workers,
            programs={name: by_name[f"program/{name}"] for name in LISTENERS},
            sockets={name: by_name[f"sockets/{name}"] for name in LISTENERS},
            counts_fd=counts_fd,
            counts=counts,
        )
    except (ValueError, KeyError, TypeError, OSError) as err:
        for fd in fds:
            os.close(fd)
        raise SteeringError(f"the steering loader's answer is unusable: {err}") from err


# --- loading (child) --------------------------------------------------------------


def _sockarray(lib: ctypes.CDLL, listener: str, workers: int) -> int:
    fd = int(
        lib.bpf_map_create(
            BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, f"steer_{listener}".encode(), 4, 8, workers, None
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise SteeringError(
            f"cannot create the {listener} steering map: {os.strerror(err)}",
            hint="needs root (CAP_BPF and CAP_NET_ADMIN) and Linux 4.19+",
        )
    return fd


def compile_and_send(workers: int, sock: socket.socket) -> None:
    """Make the maps, compile and load the programs, send the descriptors on ``sock``."""
    from agent.errors import ProgramLoadError
    from agent.programs import compile_source

    lib = _libbpf()
    sockets = {listener: _sockarray(lib, listener, workers) for listener in LISTENERS}
    flags = [f"-DWORKERS={workers}"] + [
        f"-DSOCKS_{listener.upper()}_FD={fd}" for listener, fd in sockets.items()
    ]
    try:
        module = compile_source(SOURCE, None, flags)
        programs = {
            listener: int(
                module.load_func(f"steer_{listener}".encode(), BPF_PROG_TYPE_SK_REUSEPORT).fd
            )
            for listener in LISTENERS
        }
    except ProgramLoadError as err:
        raise SteeringError(err.message, hint=err.hint) from err
    except Exception as err:  # BCC's load_func: the verifier's log is on stderr above
        raise SteeringError(f"the kernel refused the steering program: {err}") from err
    named = {f"program/{name}": fd for name, fd in programs.items()}
    named |= {f"sockets/{name}": fd for name, fd in sockets.items()}
    named["counts"] = int(module["worker_load"].map_fd)
    socket.send_fds(sock, [json.dumps({"fds": list(named)}).encode()], list(named.values()))


def _main(argv: list[str]) -> int:
    """``python -m ztunnel.steering WORKERS FD``: the child of :func:`load`."""
    from agent.programs import run_loader_child

    if len(argv) != 2 or not all(arg.isdigit() for arg in argv):
        print("usage: python -m ztunnel.steering WORKERS FD", file=sys.stderr)
        return 2

    def work() -> None:
        with socket.socket(fileno=int(argv[1])) as sock:
            compile_and_send(int(argv[0]), sock)

    return run_loader_child(work)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
