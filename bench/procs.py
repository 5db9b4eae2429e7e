"""Processes inside lab namespaces: started, watched and stopped by PID, never by name.

A long-running process (a server, a proxy) is a :class:`NetnsProcess`; a load tool
that runs to completion goes through :func:`run_in_netns`, which also returns the CPU
time it used (so a report can say when the load generator, not the path, was the
bound). CPU and peak RSS of a proxy come from ``/proc/<pid>``; the parsers are pure.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from bench.errors import ToolError

NETNS_DIR = Path("/run/netns")
TCP_LISTEN = "0A"


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside the named network namespace (nsenter execs it: same PID)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def parse_cpu_seconds(stat_text: str, clock_ticks: int, *, with_children: bool = False) -> float:
    """utime + stime of ``/proc/<pid>/stat``, in seconds (plus cutime + cstime, the
    waited-for children's, when ``with_children``).

    The command name (field 2) may hold spaces and parentheses, so fields are counted
    from the last ``)``.
    """
    rest = stat_text[stat_text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    ticks = int(rest[11]) + int(rest[12])
    if with_children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks / clock_ticks


def parse_busy_seconds(proc_stat_text: str, clock_ticks: int) -> float:
    """CPU seconds all CPUs spent not idle, from the ``cpu`` line of ``/proc/stat``.

    Busy = user + nice + system + irq + softirq + steal (idle and iowait are not).
    """
    for line in proc_stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            return (user + nice + system + irq + softirq + steal) / clock_ticks
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (see :func:`parse_busy_seconds`)."""
    return parse_busy_seconds(Path("/proc/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def parse_ppid(stat_text: str) -> int:
    """The parent PID (field 4) of ``/proc/<pid>/stat``."""
    return int(stat_text[stat_text.rindex(")") + 2 :].split()[1])


def descendants(root: int, parents: Mapping[int, int]) -> list[int]:
    """``root`` and every process below it, given each PID's parent PID."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:  # the process went away between listing and reading
        return None


def tree_usage(root: int) -> Usage | None:
    """CPU seconds and peak RSS of ``root`` and its descendants (multi-process proxies).

    ``None`` when ``root`` is gone. CPU of children that already exited and were
    waited for is included through the parent's cutime/cstime.
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            text = _read(f"/proc/{entry.name}/stat")
            if text is not None:
                with contextlib.suppress(ValueError, IndexError):
                    parents[int(entry.name)] = parse_ppid(text)
    if root not in parents:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, peak, rss, largest = 0.0, 0, 0, 0
    for pid in descendants(root, parents):
        stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
        if stat is None or status is None:
            continue
        with contextlib.suppress(ValueError, IndexError):
            cpu += parse_cpu_seconds(stat, ticks, with_children=True)
            peak += parse_peak_rss_bytes(status)
            resident = parse_status_kb(status, "VmRSS") * 1024
            rss += resident
            largest = max(largest, resident)
    return Usage(cpu, peak, rss, largest)


def parse_status_kb(status_text: str, field: str) -> int:
    """A ``kB`` field (``VmHWM``, ``VmRSS``, ...) of ``/proc/<pid>/status``."""
    for line in status_text.splitlines():
        if line.startswith(f"{field}:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected {field} unit {unit!r}")
            return int(value)
    raise ValueError(f"no {field} line (is the process a zombie?)")


def parse_peak_rss_bytes(status_text: str) -> int:
    """``VmHWM`` (peak resident set size) of ``/proc/<pid>/status``, in bytes."""
    return parse_status_kb(status_text, "VmHWM") * 1024


def raise_fd_limit() -> int:
    """Lift this process's soft open-files limit to the hard one (children inherit it).

    Proxies holding a thousand connections need two descriptors per connection; a
    soft limit of 1024 would measure EMFILE instead of the proxy.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in LISTEN state in the text of a ``/proc/<pid>/net/tcp`` file."""
    ports: set[int] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == TCP_LISTEN:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True)
class Usage:
    """CPU and memory a process used."""

    cpu_s: float
    peak_rss_bytes: int
    rss_bytes: int = 0
    """Resident set size when read (VmRSS)."""
    largest_rss_bytes: int = 0
    """The largest VmRSS of one process of the tree when read (a worker's, for ztunnel)."""


class ProxyProcess(Protocol):
    """What a data path's cost accounting needs of a proxy process."""

    name: str
    netns: str

    @property
    def pid(self) -> int:
        """Its PID (the root of its process tree)."""
        ...

    def usage(self) -> Usage:
        """CPU seconds and peak RSS of it and its children so far."""
        ...

    def check_alive(self) -> None:
        """Raise :class:`ToolError` if it has exited."""
        ...


class WatchedProcess:
    """A proxy started by someone else (e.g. ``Lab.spawn_in_node``), watched by PID."""

    def __init__(self, name: str, netns: str, pid: int) -> None:
        self.name = name
        self.netns = netns
        self._pid = pid
        self._last_usage = Usage(0.0, 0)

    @property
    def pid(self) -> int:
        """The watched PID."""
        return self._pid

    def usage(self) -> Usage:
        """CPU and peak RSS of the process tree (the last values read, once it is gone)."""
        current = tree_usage(self._pid)
        if current is not None:
            self._last_usage = current
        return self._last_usage

    def check_alive(self) -> None:
        """Raise :class:`ToolError` if the PID is gone (or a zombie)."""
        stat = _read(f"/proc/{self._pid}/stat")
        if stat is None or stat[stat.rindex(")") + 2 :].startswith("Z"):
            raise ToolError(f"{self.name} (pid {self._pid}, in {self.netns}) has exited")


class NetnsProcess:
    """A long-running process inside a network namespace, logging to a file.

    Use as a context manager: it is stopped (SIGTERM, then SIGKILL) on exit, by PID.
    """

    def __init__(self, name: str, netns: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.netns = netns
        self.argv = list(argv)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_usage = Usage(0.0, 0)

    @property
    def pid(self) -> int:
        """The PID (the program itself: nsenter execs it)."""
        if self._proc is None:
            raise ToolError(f"{self.name} was not started")
        return self._proc.pid

    def start(self) -> NetnsProcess:
        """Start it; raise :class:`ToolError` when the binary cannot be run."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    netns_argv(self.netns, self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                raise ToolError(
                    f"cannot start {self.name} ({self.argv[0]}) in {self.netns}: {err}",
                    hint="run `make setup` to install the benchmark tools",
                ) from err
        return self

    def alive(self) -> bool:
        """Whether it is still running."""
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`ToolError` with the log's tail if it has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ToolError(
                f"{self.name} exited with status {self._proc.returncode}: {self.log_tail()}",
                hint=f"see {self.log_path}",
            )

    def log_tail(self, limit: int = 600) -> str:
        """The last characters of its log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return "(no log)"

    def usage(self) -> Usage:
        """CPU seconds and peak RSS of its process tree so far (last values once gone)."""
        if self.alive():
            current = tree_usage(self.pid)
            if current is not None:
                self._last_usage = current
        return self._last_usage

    def listening(self) -> set[int]:
        """TCP ports listening in its namespace, IPv4 or IPv6 (through its /proc entry)."""
        ports: set[int] = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                ports |= listening_ports(Path(f"/proc/{self.pid}/net/{table}").read_text())
        return ports

    def wait_listening(self, ports: Sequence[int], timeout_s: float = 10.0) -> None:
        """Block until every port in ``ports`` listens in its namespace, or fail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if set(ports) <= self.listening():
                return
            time.sleep(0.05)
        raise ToolError(
            f"{self.name} did not listen on {sorted(ports)} within {timeout_s:.0f} s: "
            f"{self.log_tail()}",
            hint=f"see {self.log_path}",
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; reads its usage first."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.usage()
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=timeout_s)

    def __enter__(self) -> NetnsProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class ToolRun:
    """A load tool's output and the CPU it used."""

    stdout: str
    stderr: str
    returncode: int
    cpu_s: float
    """User + system CPU of the tool (children's rusage around its run)."""
    wall_s: float


def run_in_netns(netns: str, argv: Sequence[str], *, timeout_s: float) -> ToolRun:
    """Run a load tool to completion inside ``netns``; killed after ``timeout_s``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            netns_argv(netns, argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ToolError(
            f"{argv[0]} in {netns} did not finish within {timeout_s:.0f} s",
            hint="the data path may be stalled; see the proxies' logs in the run's work folder",
        ) from err
    except OSError as err:
        raise ToolError(f"cannot run {argv[0]} in {netns}: {err}", hint="run `make setup`") from err
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ToolRun(proc.stdout, proc.stderr, proc.returncode, cpu, time.monotonic() - started)


@contextlib.contextmanager
def running(processes: Sequence[NetnsProcess]) -> Iterator[Sequence[NetnsProcess]]:
    """Start processes in order; stop every started one in reverse order on exit."""
    started: list[NetnsProcess] = []
    try:
        for process in processes:
            started.append(process.start())
        yield started
    finally:
        for process in reversed(started):
            process.stop()
