"""Load generators: iperf3 for bulk throughput, wrk for request/response and new connections.

Both are C programs from Debian, far cheaper per byte and per request than the paths
they measure, so on two cores the figure is bounded by the path (and by sharing the
CPUs with it), not by a Python loop. Each run is bounded by ``-t``/``-d`` and a hard
subprocess timeout. The output parsers are pure functions.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from bench import wrkstats
from bench.errors import MeasurementError, ToolError
from bench.procs import netns_argv, run_in_netns

log = logging.getLogger(__name__)
T = TypeVar("T")

# Grace on top of the measurement for tool start-up and connection set-up.
TIMEOUT_SLACK_S = 20.0
BUSY_RETRY_S = 0.5
WRK_MARK = "BENCH_WRK "
WRK_SCRIPT = """\
-- Written by bench/load.py: print wrk's summary as one JSON line (microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"mean_us":%.3f,"max_us":%d}\\n',
    "MARK", summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
HIST
end
""".replace("MARK", WRK_MARK).replace("HIST\n", wrkstats.HIST_LUA)


@dataclass(frozen=True)
class BulkResult:
    """What one iperf3 run measured."""

    gbit_per_s: float
    """Received bits per second at the server, in Gbit/s."""
    client_cpu_s: float
    """CPU the iperf3 client used."""


@dataclass(frozen=True)
class RequestResult:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    errors: int
    """Connect, read, write, status and timeout errors together."""
    p50_us: float
    p99_us: float
    mean_us: float
    client_cpu_s: float
    """CPU wrk used."""
    latency_valid: bool = True
    """False when the measured latencies could not be recovered (p50/p99/mean are NaN)."""

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s


def latency_consistent(
    *, mean_us: float, requests: float, connections: int, duration_us: float, slack: float = 1.25
) -> bool:
    """Little's law as a sanity check of a closed-loop run.

    With ``connections`` requests in flight at most, the latencies of all ``requests``
    cannot add up to more than ``connections * duration``. wrk's own corrected figures
    break it on a busy machine (see :mod:`bench.wrkstats`); ours must not.
    """
    return mean_us * requests <= slack * connections * duration_us


def measured_latencies(
    text: str, doc: dict[str, float], connections: int
) -> tuple[float, float, float] | None:
    """p50, p99 and mean (us) of the latencies wrk measured, before its correction.

    None when the histogram is missing, does not invert, or fails the checks: its
    count must equal the completed requests, and Little's law must hold.
    """
    corrected = wrkstats.parse_histogram(text)
    if not corrected:
        log.warning(
            "wrk printed no histogram (max latency %.0f us: too wide a span to export)",
            doc.get("max_us", math.nan),
        )
        return None
    requests = int(doc["requests"])
    expected = wrkstats.expected_interval(int(doc["duration_us"]), requests, connections)
    try:
        real = wrkstats.undo_correction(corrected, expected)
    except ValueError as err:
        log.warning("wrk histogram: %s", err)
        return None
    if sum(real.values()) != requests:
        log.warning("wrk histogram holds %d samples for %d requests", sum(real.values()), requests)
        return None
    mean = wrkstats.hist_mean(real)
    if not latency_consistent(
        mean_us=mean, requests=requests, connections=connections, duration_us=doc["duration_us"]
    ):
        log.warning("wrk histogram: mean %.0f us breaks Little's law", mean)
        return None
    return (
        float(wrkstats.hist_percentile(real, 50)),
        float(wrkstats.hist_percentile(real, 99)),
        mean,
    )


def parse_iperf3(text: str) -> float:
    """Received bits per second from ``iperf3 -J`` output; raises on an error report."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ToolError(f"iperf3 printed no JSON: {text[:300]!r}") from err
    if doc.get("error"):
        raise MeasurementError(f"iperf3 failed: {doc['error']}")
    try:
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError) as err:
        raise ToolError(f"iperf3 JSON has no end.sum_received.bits_per_second ({err})") from err
    if not bps > 0:
        raise MeasurementError("iperf3 moved no bytes")
    return bps


def parse_wrk(text: str) -> dict[str, float]:
    """The JSON line our wrk script prints, as numbers."""
    for line in text.splitlines():
        if line.startswith(WRK_MARK):
            try:
                doc = json.loads(line[len(WRK_MARK) :])
            except json.JSONDecodeError as err:
                raise ToolError(f"wrk summary line is not JSON: {line!r}") from err
            return {k: float(v) for k, v in doc.items()}
    raise ToolError(f"wrk printed no summary line: {text[-400:]!r}")


def bulk(netns: str, host: str, port: int, *, streams: int, duration_s: float) -> BulkResult:
    """An iperf3 upload of ``duration_s`` with ``streams`` parallel TCP streams.

    iperf3's server takes one test at a time and may still be closing the previous one,
    so a "busy" answer is retried once after a short pause.
    """
    seconds = max(1, math.ceil(duration_s))
    argv = [
        "iperf3",
        "-c",
        host,
        "-p",
        str(port),
        "-t",
        str(seconds),
        "-P",
        str(streams),
        "-J",
        "--connect-timeout",
        "3000",
    ]
    for attempt in range(2):
        run = run_in_netns(netns, argv, timeout_s=seconds + TIMEOUT_SLACK_S)
        try:
            bps = parse_iperf3(run.stdout)
        except MeasurementError as err:
            if attempt == 0 and "busy" in err.message:
                time.sleep(BUSY_RETRY_S)
                continue
            raise
        return BulkResult(gbit_per_s=bps / 1e9, client_cpu_s=run.cpu_s)
    raise AssertionError("unreachable: the loop returns or raises")


def requests(
    netns: str,
    url: str,
    *,
    connections: int,
    duration_s: float,
    script: Path,
    new_connection_each: bool = False,
) -> RequestResult:
    """wrk with one thread and ``connections`` keep-alive connections (closed-loop).

    With ``new_connection_each``, every request carries ``Connection: close``, so wrk
    opens a new TCP connection per request, one at a time when ``connections`` is 1.
    """
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    seconds = max(1, math.ceil(duration_s))
    argv = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "2s",
        "-s",
        str(script),
    ]
    if new_connection_each:
        argv += ["-H", "Connection: close"]
    run = run_in_netns(netns, [*argv, url], timeout_s=seconds + TIMEOUT_SLACK_S)
    if run.returncode != 0:
        output = run.stderr[-400:] or run.stdout[-400:]
        raise ToolError(f"wrk exited with {run.returncode}: {output}")
    doc = parse_wrk(run.stdout)
    measured = measured_latencies(run.stdout, doc, connections)
    if measured is None:
        log.warning(
            "wrk's latency histogram for %s could not be recovered; latency figures dropped",
            url,
        )
    errors = int(
        doc["connect_errors"]
        + doc["read_errors"]
        + doc["write_errors"]
        + doc["status_errors"]
        + doc["timeouts"]
    )
    if doc["requests"] <= 0:
        raise MeasurementError(
            f"wrk completed no request to {url} from {netns} in {seconds} s ({errors} errors)",
            hint="the path took connections but answered nothing: check that its proxies "
            "run and reach the server (their logs are in the run's work folder)",
        )
    p50, p99, mean = measured if measured is not None else (math.nan, math.nan, math.nan)
    return RequestResult(
        requests=int(doc["requests"]),
        duration_s=doc["duration_us"] / 1e6,
        errors=errors,
        p50_us=p50,
        p99_us=p99,
        mean_us=mean,
        client_cpu_s=run.cpu_s,
        latency_valid=measured is not None,
    )


HOLD_SCRIPT = """
import resource, socket, sys
from concurrent.futures import ThreadPoolExecutor
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
request = b"GET / HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n"

def open_one(index):
    conn = socket.create_connection((host, port), timeout=10)
    conn.sendall(request)  # one exchange proves the whole path is up for this connection
    if not conn.recv(4096).startswith(b"HTTP/1.1 200"):
        raise SystemExit("no 200 answer on connection %d" % index)
    return conn

with ThreadPoolExecutor(8) as pool:  # a few at a time, so the proxies' workers all serve
    held = list(pool.map(open_one, range(count)))
print("open", len(held), flush=True)
sys.stdin.readline()
for conn in held:
    conn.close()
print("closed", flush=True)
"""
"""Opens ``count`` keep-alive HTTP connections, one request each, holds them until a line
arrives on stdin, then closes them."""


@dataclass(frozen=True)
class HoldResult(Generic[T]):
    """What holding connections open measured."""

    held: int
    """Connections open (each with one completed request) at the moment of reading."""
    reading: T
    """What the caller's ``while_held`` returned."""
    client_cpu_s: float


def hold_connections(
    netns: str,
    host: str,
    port: int,
    *,
    count: int,
    while_held: Callable[[], T],
    timeout_s: float = 60.0,
) -> HoldResult[T]:
    """Open ``count`` connections from ``netns``, call ``while_held()``, close them.

    Bounded: the client gets ``timeout_s`` to open them all and is killed after that.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [sys.executable, "-c", HOLD_SCRIPT, host, str(port), str(count)]
    proc = subprocess.Popen(
        netns_argv(netns, argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, timeout_s)
        if not line.startswith("open "):
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise MeasurementError(
                f"holding {count} connections to {host}:{port} from {netns} failed: "
                f"{(line or err).strip()[-300:] or 'no output'}"
            )
        held = int(line.split()[1])
        reading = while_held()
        assert proc.stdin is not None
        proc.stdin.write("close\n")
        proc.stdin.flush()
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return HoldResult(held=held, reading=reading, client_cpu_s=cpu)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of ``proc``'s stdout, or "" at end of output or after ``timeout_s``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise MeasurementError(f"no answer from the connection holder within {timeout_s:.0f} s")
    return proc.stdout.readline()
