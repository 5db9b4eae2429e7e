"""Data paths between a client pod and a server pod, shared by the pod-to-pod cases.

A data path is a context manager factory ``(PodPair, RunSettings) -> LivePath``: it
starts whatever carries the traffic (nothing for the direct path, two Envoys for the
sidecar reference, ztunnels later) and says where the client dials and which proxy
processes to account CPU and memory to. Every variant of a case is live at once, so
measurements can alternate without restarting anything.
"""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.case import RunSettings
from bench.envoy import bootstrap, pki
from bench.envoy.proxy import DEFAULT_CONCURRENCY, start_envoy
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


def parse_envoy_stats(text: str) -> dict[str, int]:
    """Counters and gauges of Envoy's admin ``/stats`` text output (``name: value``)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def envoy_stats(netns: str, admin_port: int, name_filter: str) -> dict[str, int]:
    """Envoy's stats matching the regex ``name_filter``, read from its admin in ``netns``."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter={urllib.parse.quote(name_filter)}"
    code = (
        "import urllib.request\n"
        f"print(urllib.request.urlopen({url!r}, timeout=5).read().decode())\n"
    )
    run = run_in_netns(netns, [sys.executable, "-c", code], timeout_s=15)
    if run.returncode != 0:
        raise ToolError(f"cannot read Envoy stats in {netns}: {run.stderr.strip()[-300:]}")
    return parse_envoy_stats(run.stdout)


def handshake_summary(netns: str, admin_port: int) -> list[str]:
    """One line: the client sidecar's upstream TLS handshakes and how many were resumed."""
    stats = envoy_stats(netns, admin_port, r"^cluster\.outbound-.*\.ssl\.")
    handshakes = sum(v for k, v in stats.items() if k.endswith(".ssl.handshake"))
    resumed = sum(v for k, v in stats.items() if k.endswith(".ssl.session_reused"))
    errors = sum(v for k, v in stats.items() if k.endswith(".ssl.connection_error"))
    return [
        f"client sidecar: {handshakes} upstream TLS handshakes ({resumed} resumed "
        f"sessions, {errors} connection errors)"
    ]


@contextlib.contextmanager
def direct(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
    """No mesh: the client dials the server pod's IP; packets cross both nodes' veths."""
    del settings
    yield LivePath(
        client_netns=pair.client.netns,
        http=Endpoint(pair.server.ip, HTTP_PORT),
        bulk=Endpoint(pair.server.ip, BULK_PORT),
    )


HTTP_TUNNEL = bootstrap.Tunnel("http", 18080, 15443, HTTP_PORT)
BULK_TUNNEL = bootstrap.Tunnel("bulk", 15201, 15444, BULK_PORT)


@dataclass(frozen=True)
class EnvoyPairSettings:
    """How the sidecar-style Envoy pair is set up."""

    concurrency: int = DEFAULT_CONCURRENCY
    """Worker threads per Envoy (Istio's sidecar default is 2)."""
    http_tunnel: bootstrap.Tunnel = HTTP_TUNNEL
    """Client dials 127.0.0.1:18080; the server sidecar's mTLS port 15443 -> origin."""
    bulk_tunnel: bootstrap.Tunnel = BULK_TUNNEL
    """Client dials 127.0.0.1:15201; the server sidecar's mTLS port 15444 -> iperf3."""


def envoy_pair(options: EnvoyPairSettings | None = None) -> PathFactory:
    """The sidecar-style reference: an Envoy in each pod, mTLS (TLS 1.3) between them.

    The client pod's Envoy listens on 127.0.0.1 (the app dials it, as with a sidecar
    without iptables), presents ``spiffe://cluster.local/ns/<ns>/sa/<client sa>`` and
    accepts only the server's identity; the server pod's Envoy requires a client
    certificate with the client's identity and forwards to the app on 127.0.0.1.
    """
    opts = options or EnvoyPairSettings()

    @contextlib.contextmanager
    def build(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
        work = settings.work_dir / "envoy-pair"
        client, server = pair.client, pair.server
        mesh = pki.make_mesh_pki(
            work / "pki",
            [
                (client.namespace, client.service_account),
                (server.namespace, server.service_account),
            ],
        )
        client_id = pki.spiffe_id(client.namespace, client.service_account)
        server_id = pki.spiffe_id(server.namespace, server.service_account)
        client_cert, server_cert = mesh.workloads[client_id], mesh.workloads[server_id]
        tunnels = [opts.http_tunnel, opts.bulk_tunnel]
        server_config = bootstrap.server_sidecar(
            listen_ip=server.ip,
            tunnels=tunnels,
            tls=bootstrap.TlsFiles(
                server_cert.cert_path, server_cert.key_path, mesh.root_path, client_id
            ),
        )
        client_config = bootstrap.client_sidecar(
            server_ip=server.ip,
            tunnels=tunnels,
            tls=bootstrap.TlsFiles(
                client_cert.cert_path, client_cert.key_path, mesh.root_path, server_id
            ),
            sni=f"{server.service_account}.{server.namespace}",
        )
        with contextlib.ExitStack() as stack:
            proxies: list[NetnsProcess] = []
            for name, pod, config in (
                ("envoy-server-sidecar", server, server_config),
                ("envoy-client-sidecar", client, client_config),
            ):
                proxy = start_envoy(name, pod.netns, config, work, concurrency=opts.concurrency)
                stack.callback(proxy.stop)
                proxies.append(proxy)
            live = LivePath(
                client_netns=client.netns,
                http=Endpoint("127.0.0.1", opts.http_tunnel.client_port),
                bulk=Endpoint("127.0.0.1", opts.bulk_tunnel.client_port),
                proxies=tuple(proxies),
                summary=lambda: handshake_summary(client.netns, bootstrap.ADMIN_PORT),
            )
            # the whole chain, mTLS verified both ways, must work before anything is timed
            check_http(live.client_netns, live.http)
            yield live

    return build
