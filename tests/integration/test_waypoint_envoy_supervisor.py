"""``ambient waypoint run`` leaves no Envoy behind when it is killed itself.

No root needed: a stand-in Envoy (a shell loop) records its pid; the supervisor runs in
its own Python process and is SIGKILLed; the stand-in must be gone (the parent-death
signal), or it would keep 15008 bound against the next run. About 2 s (Python start).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_envoy_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL of 'waypoint run' leaves no Envoy behind (it would keep 15008 bound)."""
    pid_file = tmp_path / "envoy.pid"
    envoy = tmp_path / "envoy"
    envoy.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nwhile :; do sleep 0.05; done\n")
    envoy.chmod(0o755)
    script = (
        "import asyncio, pathlib, sys\n"
        "from tests.unit.test_waypoint_envoy_bootstrap import _config\n"
        "from waypoint.run import RunConfig, supervise\n"
        f"tmp = pathlib.Path({str(tmp_path)!r})\n"
        f"config = RunConfig(_config(tmp), tmp / 'work', envoy=pathlib.Path({str(envoy)!r}))\n"
        "asyncio.run(supervise(config, stop=asyncio.Event()))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and runner.poll() is None, "no envoy started"
            time.sleep(0.02)
        child = int(pid_file.read_text())
        runner.kill()
        runner.wait(5)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
            if state == "Z":  # gone, awaiting its reaper
                break
            time.sleep(0.02)
        else:
            assert not Path(f"/proc/{child}").exists(), "envoy outlived its supervisor"
    finally:
        if runner.poll() is None:
            runner.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):  # only when the test failed
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


# --- the drain on SIGTERM, with a real Envoy -------------------------------------------------

ENVOY = Path(sys.executable).parent / "envoy"
HOLD_S = 15.0  # the longest a held backend request waits for its release


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Backend:
    """An HTTP server on 127.0.0.1: ``/hold`` answers once released, ``/`` at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = threading.Event()
        release, held = self.release, self.held

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/hold":
                    held.set()
                    release.wait(HOLD_S)
                with contextlib.suppress(OSError):  # the client may be gone (second signal)
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _static_listener(port: int, backend: int) -> str:
    """A listener on 127.0.0.1:port proxying HTTP to the backend (merged into the
    waypoint bootstrap with Envoy's ``--config-yaml``); no control plane answers, so the
    first fetches give up at once and the static listener serves."""
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    address = "{socket_address: {address: 127.0.0.1, port_value: %d}}"
    return (
        "dynamic_resources: {cds_config: {initial_fetch_timeout: 0.1s}, lds_config: "
        "{initial_fetch_timeout: 0.1s}}\n"
        "static_resources: {listeners: [{name: drain_test, address: "
        + address % port
        + ", filter_chains: [{filters: [{name: hcm, typed_config: {'@type': "
        + f"'{hcm}.HttpConnectionManager', stat_prefix: drain_test, http_filters: "
        + f"[{{name: router, typed_config: {{'@type': '{router}'}}}}], route_config: "
        + "{virtual_hosts: [{name: all, domains: ['*'], routes: [{match: {prefix: /}, "
        + "route: {cluster: drain_backend, timeout: 0s}}]}]}}}]}]}], clusters: [{name: "
        + "drain_backend, type: STATIC, load_assignment: {cluster_name: drain_backend, "
        + "endpoints: [{lb_endpoints: [{endpoint: {address: "
        + address % backend
        + "}}]}]}}]}"
    )


def _get(port: int, path: str, timeout: float) -> tuple[int, str]:
    """One HTTP/1.1 GET through Envoy; (status, the connection header)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("connection", "")
    finally:
        connection.close()


class _Supervisor:
    """``supervise`` (real signal handling) in its own Python process."""

    def __init__(self, tmp_path: Path, backend: int, drain_seconds: float) -> None:
        self.port, admin, dead = _free_port(), _free_port(), _free_port()
        script = (
            "import asyncio, logging, pathlib\n"
            "from tests.unit.test_waypoint_envoy_bootstrap import _config\n"
            "from waypoint.run import RunConfig, supervise\n"
            "logging.basicConfig(level=logging.INFO)\n"
            f"tmp = pathlib.Path({str(tmp_path)!r})\n"
            f"proxy = _config(tmp, xds_address='127.0.0.1:{dead}', admin_port={admin})\n"
            f"extra = ('--config-yaml', {_static_listener(self.port, backend)!r})\n"
            "config = RunConfig(proxy, tmp / 'work', concurrency=1, extra_args=extra,\n"
            f"                   drain_seconds={drain_seconds})\n"
            "asyncio.run(supervise(config))\n"
        )
        self.log = (tmp_path / "supervisor.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=Path(__file__).parents[2],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.output()
            with contextlib.suppress(OSError):
                if _get(self.port, "/", 1)[0] == 200:
                    return
            assert time.monotonic() < deadline, f"envoy not serving:\n{self.output()}"
            time.sleep(0.1)

    def refuses(self, timeout: float) -> bool:
        """A new connection to the listener is refused within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            except ConnectionRefusedError:
                return True
            time.sleep(0.05)
        return False

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


@pytest.fixture
def backend() -> Iterator[_Backend]:
    server = _Backend()
    try:
        yield server
    finally:
        server.close()


def _in_flight(port: int) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def call() -> None:
        try:
            result.append(_get(port, "/hold", HOLD_S + 5))
        except OSError as error:
            result.append(error)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.skipif(not ENVOY.exists(), reason="no envoy binary beside this Python")
@pytest.mark.timeout(30)
def test_sigterm_drains_envoy(tmp_path: Path, backend: _Backend) -> None:
    """SIGTERM: a request in flight completes (told ``connection: close``), a new
    connection is refused at once, and the run exits 0 as soon as the request is done."""
    supervisor = _Supervisor(tmp_path, backend.port, drain_seconds=10)
    try:
        supervisor.wait_ready(15)
        thread, result = _in_flight(supervisor.port)
        assert backend.held.wait(5), "the request did not reach the backend"
        # To the whole process group, as the lab stops a pod: Envoy has its own group.
        os.killpg(supervisor.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        assert supervisor.refuses(3), f"new connections still accepted:\n{supervisor.output()}"
        time.sleep(0.5)
        assert supervisor.process.poll() is None, f"ended in flight:\n{supervisor.output()}"
        backend.release.set()
        thread.join(5)
        assert result == [(200, "close")], result
        assert supervisor.process.wait(5) == 0, supervisor.output()
        assert time.monotonic() - signalled < 5, "the run waited out the deadline"
        assert "envoy drained" in supervisor.output()
    finally:
        supervisor.close()


@pytest.mark.skipif(not ENVOY.exists(), reason="no envoy binary beside this Python")
@pytest.mark.timeout(30)
def test_second_signal_stops_the_drain_at_once(tmp_path: Path, backend: _Backend) -> None:
    """A second signal during the drain ends it now: exit 0 well before the deadline."""
    supervisor = _Supervisor(tmp_path, backend.port, drain_seconds=20)
    try:
        supervisor.wait_ready(15)
        _in_flight(supervisor.port)
        assert backend.held.wait(5), "the request did not reach the backend"
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.refuses(3), f"new connections still accepted:\n{supervisor.output()}"
        time.sleep(0.3)
        assert supervisor.process.poll() is None, f"ended in flight:\n{supervisor.output()}"
        supervisor.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        assert supervisor.process.wait(5) == 0, supervisor.output()
        assert time.monotonic() - signalled < 3
        assert "second signal" in supervisor.output()
    finally:
        supervisor.close()
