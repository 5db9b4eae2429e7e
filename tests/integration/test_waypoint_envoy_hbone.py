"""A real Envoy as a waypoint: HBONE in, VirtualService routing, HBONE out.

One network namespace holds the waypoint (10.1.0.9) and three pods' HBONE servers
(backend v1 10.1.0.11, v2 10.1.0.12, db 10.1.0.13), built from ztunnel's own HBONE
code with certificates of our CA. Envoy runs the resources of ``proxy_resources``
(as a static bootstrap). A client with a workload identity opens HBONE tunnels to the
waypoint for the services' VIPs, as a source ztunnel does; the pods' servers check
that the tunnels come from the waypoint's identity to ``podIP:targetPort``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from bench.envoy.proxy import envoy_argv
from controlplane.envoy import telemetry
from controlplane.envoy.bootstrap import as_json, proxy_bootstrap, static_secrets
from controlplane.envoy.hbone import PEER_PRINCIPAL_KEY
from controlplane.envoy.proxy import proxy_resources
from tests.waypoint_envoy_fixtures import (
    BACKEND_VIP,
    CACHE_VIP,
    DB_VIP,
    WAYPOINT,
    WEB_VIP,
    demo_state,
)
from ztunnel.errors import HboneStreamError
from ztunnel.identity.certs import CertifiedKey, LocalCA
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.tls import client_context, peer_identity, server_context, verify_peer
from ztunnel.proxy.hbone import Authority, HboneClient, HboneServer, TunnelRequest
from ztunnel.proxy.hbone_io import HboneChannel, TunnelStream

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.timeout(90),
]

NETNS = f"wpenvoy-{os.getpid()}"
WAYPOINT_IP = WAYPOINT.ip
PODS = {"10.1.0.11": "v1", "10.1.0.12": "v2", "10.1.0.13": "db", "10.1.0.14": "cache"}
TD = "cluster.local"
WAYPOINT_ID = SpiffeId(TD, "demo", "w")
CLIENT_ID = SpiffeId(TD, "demo", "frontend")
BACKEND_ID = SpiffeId(TD, "demo", "backend")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
DEBUG = (
    [
        "--component-log-level",
        "upstream:debug,connection:debug,http:debug,http2:debug,router:debug,filter:debug,pool:debug",
    ]
    if os.environ.get("WAYPOINT_ENVOY_DEBUG")
    else []
)


@dataclass
class Seen:
    """What the pods' HBONE servers saw."""

    peers: set[str] = field(default_factory=set)
    authorities: set[str] = field(default_factory=set)


class NetnsLoop:
    """An asyncio loop on a thread that lives in the test's network namespace."""

    def __init__(self, netns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(netns,), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _main(self, netns: str) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
        except BaseException as err:
            self._error = err
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    _ip("netns", "add", NETNS)
    try:
        _ip("-n", NETNS, "link", "set", "lo", "up")
        for address in (WAYPOINT_IP, *PODS):
            _ip("-n", NETNS, "addr", "add", f"{address}/32", "dev", "lo")
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False, timeout=10)


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create(dt.datetime.now(dt.UTC))


def _issue(ca: LocalCA, identity: SpiffeId) -> CertifiedKey:
    return ca.issue(identity, dt.datetime.now(dt.UTC))


async def _http_server(stream: TunnelStream, body: bytes) -> None:
    """HTTP/1.1 with keep-alive over one tunnel: answers every request with ``body``."""
    buffered = b""
    while True:
        data = bytes(await stream.read())
        if not data:
            await stream.end()
            return
        buffered += data
        while b"\r\n\r\n" in buffered:
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            echo = b"" if b"x-echo-header" not in head.lower() else head
            payload = body + echo
            await stream.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                + f"content-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )


async def _echo(stream: TunnelStream) -> None:
    while data := bytes(await stream.read()):
        await stream.write(data)
    await stream.end()


async def _start_pod(ip: str, cert: CertifiedKey, roots: bytes, seen: Seen) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_identity(writer.get_extra_info("ssl_object"))
        seen.peers.add(str(peer))
        channel = HboneChannel(HboneServer(), reader, writer)

        async def on_request(stream: TunnelStream, request: TunnelRequest) -> None:
            seen.authorities.add(str(request.authority))
            core = channel.core
            assert isinstance(core, HboneServer)
            if peer != WAYPOINT_ID or request.authority.host != ip:
                core.respond(stream.stream_id, 401)
                channel.flush()
                return
            core.respond(stream.stream_id, 200)
            channel.flush()
            with contextlib.suppress(HboneStreamError):  # the client went away
                if PODS[ip] in ("db", "cache"):
                    await _echo(stream)
                else:
                    await _http_server(stream, PODS[ip].encode())

        await channel.run(on_request)

    return await asyncio.start_server(handle, ip, 15008, ssl=server_context(cert, roots))


@dataclass
class Tunnel:
    stream: TunnelStream
    channel: HboneChannel
    task: asyncio.Task[None]


async def _open(
    cert: CertifiedKey, roots: bytes, authority: Authority, status: int = 200
) -> Tunnel:
    reader, writer = await asyncio.open_connection(
        WAYPOINT_IP, 15008, ssl=client_context(cert, roots)
    )
    verify_peer(writer.get_extra_info("ssl_object"), expected={WAYPOINT_ID})
    channel = HboneChannel(HboneClient(), reader, writer)
    task = asyncio.get_running_loop().create_task(channel.run())
    await asyncio.sleep(0)  # the channel sends the HTTP/2 preface first
    stream = channel.open_tunnel(TunnelRequest(authority, forwarded_for="10.1.0.50:40000"))
    response = await asyncio.wait_for(stream.response, 5)
    assert response.status == status, response
    return Tunnel(stream, channel, task)


async def _get(
    tunnel: Tunnel, headers: str = "", method: str = "GET", host: str = "backend"
) -> tuple[str, str]:
    """One request on the tunnel (no body); the status line and body."""
    request = f"{method} / HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n{headers}\r\n"
    await tunnel.stream.write(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
    return head.split(b"\r\n")[0].decode(), body.decode()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def waypoint(netns: str, ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    roots = ca.root_pem
    waypoint_cert = _issue(ca, WAYPOINT_ID)
    resources = proxy_resources(demo_state(), WAYPOINT)
    for route in resources.routes.values():
        # Shows what the inner listener knows of the outer connection.
        for key, text in (
            ("x-test-peer", f"%FILTER_STATE({PEER_PRINCIPAL_KEY}:PLAIN)%"),
            ("x-test-downstream", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        ):
            added = route.request_headers_to_add.add()
            added.header.key, added.header.value = key, text
    config = proxy_bootstrap(
        resources,
        static_secrets(
            b"".join(waypoint_cert.chain_pem).decode(),
            waypoint_cert.key_pem.decode(),
            roots.decode(),
        ),
        extra_clusters=[as_json(c) for c in telemetry.static_clusters()],
    )
    listener = config["static_resources"]["listeners"][0]  # connect_terminate
    listener["address"]["socket_address"]["address"] = WAYPOINT_IP
    path = tmp_path_factory.mktemp("waypoint") / "envoy.json"
    path.write_text(json.dumps(config))
    loop = NetnsLoop(netns)
    seen = Seen()
    log = path.with_suffix(".log").open("w")
    envoy = None
    try:
        backend_cert = _issue(ca, BACKEND_ID)
        # cache-0 runs as "cache" but its server presents backend's certificate.
        certs = {"db": _issue(ca, SpiffeId(TD, "demo", "db"))}
        servers = [
            loop.run(_start_pod(ip, certs.get(PODS[ip], backend_cert), roots, seen)) for ip in PODS
        ]
        envoy = subprocess.Popen(
            ["ip", "netns", "exec", netns, *envoy_argv(path, concurrency=1), *DEBUG],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection(WAYPOINT_IP, 15008)
            except OSError:
                return False
            writer.close()
            return True

        _wait_for(lambda: envoy.poll() is None and loop.run(listening()), 20, "envoy on 15008")
        yield loop, seen, _issue(ca, CLIENT_ID), roots
        for server in servers:
            server.close()
    finally:
        if envoy is not None:
            envoy.terminate()
            try:
                envoy.wait(10)
            except subprocess.TimeoutExpired:
                envoy.kill()
                envoy.wait(5)
        log.close()
        loop.stop()


def test_weighted_split_through_the_waypoint(waypoint: Any) -> None:
    loop, seen, client_cert, roots = waypoint

    async def scenario() -> dict[str, int]:
        tunnel = await _open(client_cert, roots, Authority(BACKEND_VIP, 80))
        counts = {"v1": 0, "v2": 0}
        for _ in range(200):
            status, body = await _get(tunnel)
            assert status == "HTTP/1.1 200 OK", status
            counts[body] += 1
        for _ in range(20):
            assert (await _get(tunnel, "end-user: jason\r\n"))[1] == "v2"
        tunnel.channel.close()
        return counts

    counts = loop.run(scenario())
    # 80/20 over 200 requests: the binomial 99.9% interval of v1 is about 138..180.
    assert 135 <= counts["v1"] <= 182, counts
    assert seen.peers == {str(WAYPOINT_ID)}
    assert seen.authorities >= {"10.1.0.11:5678", "10.1.0.12:5678"}


def test_peer_principal_reaches_the_inner_listener(waypoint: Any) -> None:
    """The route sees the HBONE client's identity (filter state shared with upstream)."""
    loop, _, client_cert, roots = waypoint

    async def scenario() -> str:
        tunnel = await _open(client_cert, roots, Authority(BACKEND_VIP, 80))
        _, body = await _get(tunnel, "x-echo-header: 1\r\n")
        tunnel.channel.close()
        return body

    headers = loop.run(scenario()).lower()
    assert f"x-test-peer: {CLIENT_ID}" in headers
    assert "x-test-downstream: 10.1.0.9:" in headers  # the tunnel's source, not 127.0.0.1


def test_authorization_policy_at_the_waypoint(waypoint: Any, ca: LocalCA) -> None:
    """The policy allows only frontend's GETs: the principal comes from the tunnel."""
    loop, _, client_cert, roots = waypoint
    stranger = _issue(ca, SpiffeId(TD, "demo", "stranger"))

    async def scenario() -> list[str]:
        ours = await _open(client_cert, roots, Authority(BACKEND_VIP, 80))
        theirs = await _open(stranger, roots, Authority(BACKEND_VIP, 80))
        statuses = [
            (await _get(ours))[0],
            (await _get(ours, method="POST"))[0],
            (await _get(theirs))[0],
        ]
        ours.channel.close()
        theirs.channel.close()
        return statuses

    assert loop.run(scenario()) == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 403 Forbidden",
    ]


def test_http_is_detected_on_an_undeclared_port(waypoint: Any) -> None:
    loop, _, client_cert, roots = waypoint

    async def scenario() -> tuple[str, str]:
        tunnel = await _open(client_cert, roots, Authority(WEB_VIP, 8000))
        status, body = await _get(tunnel, "x-echo-header: 1\r\n", host="web.demo")
        tunnel.channel.close()
        return status, body

    status, body = loop.run(scenario())
    assert status == "HTTP/1.1 200 OK"
    assert body.startswith("v1")
    assert "x-request-id" in body.lower()  # it went through the HTTP connection manager


def test_tcp_is_detected_and_proxied_opaquely(waypoint: Any) -> None:
    loop, seen, client_cert, roots = waypoint

    async def scenario() -> bytes:
        tunnel = await _open(client_cert, roots, Authority(DB_VIP, 5432))
        await tunnel.stream.write(b"\x00\x01not http at all")
        data = bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
        tunnel.channel.close()
        return data

    assert loop.run(scenario()) == b"\x00\x01not http at all"
    assert "10.1.0.13:5432" in seen.authorities


def test_endpoint_with_the_wrong_identity_is_refused(waypoint: Any) -> None:
    """The waypoint checks the destination's certificate against the pod's account."""
    loop, seen, client_cert, roots = waypoint

    async def scenario(authority: Authority) -> bytes:
        tunnel = await _open(client_cert, roots, authority)
        await tunnel.stream.write(b"PING\r\n")
        try:
            return bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
        except HboneStreamError:
            return b""
        finally:
            tunnel.channel.close()

    assert loop.run(scenario(Authority(CACHE_VIP, 6379))) == b""  # by its service
    assert loop.run(scenario(Authority("10.1.0.14", 6379))) == b""  # by its own address
    assert not any(a.startswith("10.1.0.14:") for a in seen.authorities)


def test_workload_addressed_tunnel_passes_through_to_the_pod(waypoint: Any) -> None:
    """waypoint-for all: a tunnel to ``podIP:port`` goes to that pod, any port."""
    loop, seen, client_cert, roots = waypoint

    async def scenario() -> tuple[str, str]:
        tunnel = await _open(client_cert, roots, Authority("10.1.0.12", 5678))
        status, body = await _get(tunnel)
        tunnel.channel.close()
        return status, body

    assert loop.run(scenario()) == ("HTTP/1.1 200 OK", "v2")
    assert "10.1.0.12:5678" in seen.authorities
    assert seen.peers == {str(WAYPOINT_ID)}


def test_unknown_authority_gets_no_service(waypoint: Any) -> None:
    loop, _, client_cert, roots = waypoint

    async def scenario() -> None:
        tunnel = await _open(client_cert, roots, Authority("10.96.0.99", 80), status=404)
        tunnel.channel.close()

    loop.run(scenario())
