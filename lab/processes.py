"""Processes inside lab namespaces: starting, readiness, stopping, and finding strays.

Pods are entered with ``ip netns exec`` (a private mount namespace that bind-mounts the
pod's ``/etc/netns/<ns>/`` hosts and resolv.conf); nodes and the fabric with
``nsenter --net`` (network namespace only, so node processes share the host's
``/sys/fs/bpf``). Every process gets its own session, so stopping it stops its children.
Strays (after a builder was killed) are found by comparing ``/proc/<pid>/ns/net`` with
the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabProcessError
from lab.model import ProcessRecord
from lab.network import netns_inode, netns_path

STOP_TIMEOUT = 5.0
KILL_TIMEOUT = 3.0
_TCP_LISTEN = "0A"


def pod_enter_argv(netns: str) -> list[str]:
    """Prefix that runs a command in a pod namespace with its hosts/resolv.conf."""
    return ["ip", "netns", "exec", netns]


def node_enter_argv(netns: str) -> list[str]:
    """Prefix that runs a command in a node (or fabric) namespace, host mounts kept."""
    return ["nsenter", f"--net={netns_path(netns)}", "--"]


@dataclass
class LabProcess:
    """A process the lab started in one of its namespaces."""

    name: str
    """Unique within the lab; its log is ``logs/<name>.log``."""
    pid: int
    netns: str
    argv: tuple[str, ...]
    """The command as given (without the namespace-entering prefix)."""
    log_path: Path
    start_time: int
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    """Set in the process that started it; None when found through the saved state."""

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        if self.popen is not None:
            return self.popen.poll()
        return None if process_alive(self.pid, self.start_time) else -1

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.poll() is None

    def log_text(self) -> str:
        """Everything it wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def record(self) -> ProcessRecord:
        """The form saved in the lab state."""
        return ProcessRecord(
            name=self.name,
            pid=self.pid,
            netns=self.netns,
            argv=self.argv,
            log=str(self.log_path),
            start_time=self.start_time,
        )

    @classmethod
    def from_record(cls, rec: ProcessRecord) -> LabProcess:
        """A handle on a process started by another process."""
        return cls(
            name=rec.name,
            pid=rec.pid,
            netns=rec.netns,
            argv=rec.argv,
            log_path=Path(rec.log),
            start_time=rec.start_time,
        )


def spawn(
    enter: Sequence[str],
    netns: str,
    argv: Sequence[str],
    *,
    name: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LabProcess:
    """Starts ``argv`` in a namespace (entered by ``enter``) with output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log_path, "ab") as log:
        try:
            popen = subprocess.Popen(
                [*enter, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as err:
            raise LabProcessError(f"cannot start {name!r} ({argv[0]}) in {netns}: {err}") from err
    return LabProcess(
        name=name,
        pid=popen.pid,
        netns=netns,
        argv=tuple(argv),
        log_path=log_path,
        start_time=start_time(popen.pid) or 0,
        popen=popen,
    )


def stop(proc: LabProcess, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM to the process's session, SIGKILL after ``timeout``; returns its exit code."""
    if not proc.alive():
        return proc.poll()
    _signal_group(proc.pid, signal.SIGTERM)
    if _wait(proc, timeout):
        return proc.poll()
    _signal_group(proc.pid, signal.SIGKILL)
    if not _wait(proc, KILL_TIMEOUT):
        raise LabProcessError(f"process {proc.name!r} (pid {proc.pid}) did not die on SIGKILL")
    return proc.poll()


def wait_listening(proc: LabProcess, port: int, timeout: float) -> None:
    """Waits until ``proc``'s namespace has a TCP socket listening on ``port``.

    Reads ``/proc/<pid>/net/tcp{,6}``, which shows the sockets of that process's network
    namespace (only trusted once the process is inside the lab namespace), and accepts
    only a listening socket the process itself holds, so a server that fails because
    another one already has the port is not taken for ready.
    """
    want = netns_inode(proc.netns)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise LabProcessError(
                f"process {proc.name!r} exited with code {code} before listening on {port}",
                hint=f"see its log: {proc.log_path}\n{_tail(proc.log_text())}",
            )
        if _pid_netns(proc.pid) == want and _listening(proc.pid, port):
            return
        time.sleep(0.02)
    raise LabProcessError(
        f"process {proc.name!r} did not listen on port {port} within {timeout:.0f}s",
        hint=f"see its log: {proc.log_path}",
    )


def pids_in_netns(names: Collection[str]) -> dict[int, str]:
    """Every process (pid -> namespace name) whose network namespace is one of ``names``."""
    inodes = {ino: name for name in names if (ino := netns_inode(name)) is not None}
    found: dict[int, str] = {}
    if not inodes:
        return found
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        name = inodes.get((st.st_dev, st.st_ino))
        if name is not None:
            found[int(entry.name)] = name
    return found


def kill_pids(pids: Collection[int], timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM, then SIGKILL after ``timeout``; returns the pids still alive after that."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    left = _wait_gone(pids, timeout)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    return _wait_gone(left, KILL_TIMEOUT)


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its end
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def process_alive(pid: int, started: int) -> bool:
    """Whether ``pid`` is the same live (non-zombie) process that started at ``started``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return started == 0 or int(fields[19]) == started


def _pid_netns(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _listening(pid: int, port: int) -> bool:
    """Whether ``pid`` itself holds a socket listening on ``port`` (not just anyone)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _TCP_LISTEN and int(cols[1].split(":")[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return False
    wanted = {f"socket:[{ino}]" for ino in inodes}
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in wanted:
                return True
        except OSError:
            continue
    return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        _signal(pid, sig)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait(proc: LabProcess, timeout: float) -> bool:
    if proc.popen is not None:
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    return not _wait_gone([proc.pid], timeout, {proc.pid: proc.start_time})


def _wait_gone(
    pids: Collection[int], timeout: float, starts: Mapping[int, int] | None = None
) -> list[int]:
    starts = dict(starts or {})
    for pid in pids:
        starts.setdefault(pid, start_time(pid) or 0)
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if process_alive(pid, starts[pid])]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.splitlines()[-lines:])
