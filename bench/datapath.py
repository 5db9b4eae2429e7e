"""Data paths between a client pod and a server pod, shared by the pod-to-pod cases.

A data path is a context manager factory ``(PodPair, RunSettings) -> LivePath``: it
starts whatever carries the traffic (nothing for the direct path, two Envoys for the
sidecar reference, ztunnels later) and says where the client dials and which proxy
processes to account CPU and memory to. Every variant of a case is live at once, so
measurements can alternate without restarting anything. The Envoy pair's path is
``bench.envoy.pair.envoy_pair``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.case import RunSettings
from bench.envoy import bootstrap
from bench.envoy.proxy import start_envoy
from bench.errors import ToolError
from bench.procs import NetnsProcess, ProxyProcess, run_in_netns

if TYPE_CHECKING:
    from lab import Lab
    from lab.model import Pod

HTTP_PORT = 8080
"""The origin (HTTP/1.1 server) in the server pod."""
BULK_PORT = 5201
"""The iperf3 server in the server pod."""
ORIGIN_BODY = "hello from the bench origin\n"


@dataclass(frozen=True)
class Endpoint:
    """Where the client dials, from inside its own namespace."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        return f"http://{self.host}:{self.port}/"


@dataclass(frozen=True)
class LivePath:
    """A data path that is up: where to dial, from where, and which proxies carry it."""

    client_netns: str
    """Namespace the load generators run in."""
    http: Endpoint
    """The origin, as reached through this path."""
    bulk: Endpoint
    """The iperf3 server, as reached through this path."""
    proxies: Sequence[ProxyProcess] = ()
    """Processes whose CPU and peak RSS are this path's cost."""
    summary: Callable[[], list[str]] = lambda: []
    """Whole-run facts the path can tell while still up (e.g. TLS handshake counts)."""


@dataclass(frozen=True)
class PodPair:
    """The lab and the two pods every path connects (on different nodes)."""

    lab: Lab
    client: Pod
    server: Pod


PathFactory = Callable[[PodPair, RunSettings], AbstractContextManager[LivePath]]
"""How a case's variant builds its path."""


def start_apps(pod: Pod, work_dir: Path) -> list[NetnsProcess]:
    """Start the origin (Envoy direct_response on 8080) and iperf3 -s (5201) in ``pod``.

    The origin is native code with one worker, so request/response figures measure the
    path, not a Python server. The caller stops the returned processes.
    """
    origin = start_envoy(
        f"origin-{pod.name}",
        pod.netns,
        bootstrap.origin(port=HTTP_PORT, body=ORIGIN_BODY),
        work_dir,
        concurrency=1,
    )
    iperf = NetnsProcess(
        f"iperf3-{pod.name}",
        pod.netns,
        ["iperf3", "-s", "-p", str(BULK_PORT)],
        work_dir / "logs" / f"iperf3-{pod.name}.log",
    )
    try:
        iperf.start()
        iperf.wait_listening([BULK_PORT])
    except BaseException:
        iperf.stop()
        origin.stop()
        raise
    return [origin, iperf]


POD_SYSCTLS = {
    # wrk and the client Envoy close first, so TIME_WAIT piles up on the client side; a
    # connect-rate probe would otherwise run out of ephemeral ports and measure the
    # kernel's port search instead of the path.
    "net.ipv4.tcp_tw_reuse": "1",
    "net.ipv4.ip_local_port_range": "20000 65000",  # above every port we listen on
}
"""Set in both pods' namespaces (per-namespace sysctls, nothing in the root namespace)."""


def tune_pod(pod: Pod) -> None:
    """Apply :data:`POD_SYSCTLS` inside ``pod``'s network namespace."""
    argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in POD_SYSCTLS.items())]
    run = run_in_netns(pod.netns, argv, timeout_s=10)
    if run.returncode != 0:
        raise ToolError(
            f"cannot set {', '.join(POD_SYSCTLS)} in {pod.netns}: {run.stderr.strip()}",
            hint="the sysctl tool comes with procps (make setup)",
        )


def check_http(netns: str, endpoint: Endpoint, *, timeout_s: float = 10.0) -> None:
    """Fetch ``endpoint`` from ``netns`` until it answers the origin's body, or fail."""
    probe = (
        "import sys, urllib.request\n"
        f"body = urllib.request.urlopen({endpoint.url!r}, timeout=3).read().decode()\n"
        f"sys.exit(0 if body == {ORIGIN_BODY!r} else 3)\n"
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        run = run_in_netns(netns, [sys.executable, "-c", probe], timeout_s=10)
        if run.returncode == 0:
            return
        lines = (run.stderr or run.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit status {run.returncode}"
        time.sleep(0.2)
    raise ToolError(
        f"{endpoint.url} does not answer from {netns}: {last}",
        hint="the path's proxies may have refused the peer's certificate; see their logs",
    )


@contextlib.contextmanager
def direct(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
    """No mesh: the client dials the server pod's IP; packets cross both nodes' veths."""
    del settings
    yield LivePath(
        client_netns=pair.client.netns,
        http=Endpoint(pair.server.ip, HTTP_PORT),
        bulk=Endpoint(pair.server.ip, BULK_PORT),
    )
