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
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bench.envoy.proxy import envoy_argv
from controlplane.envoy import telemetry
from controlplane.envoy.bootstrap import as_json, proxy_bootstrap, static_secrets
from controlplane.envoy.hbone import PEER_PRINCIPAL_KEY
from controlplane.envoy.proxy import proxy_resources
from tests.integration.waypoint_envoy_peers import (
    NetnsLoop,
    Seen,
    Tunnel,
    issue,
    netns_with,
    open_tunnel,
    request,
    start_pod,
    wait_for,
)
from tests.waypoint_envoy_fixtures import (
    BACKEND_VIP,
    CACHE_VIP,
    DB_VIP,
    WAYPOINT,
    WEB_VIP,
    demo_state,
)
from ztunnel.errors import HboneStreamError
from ztunnel.identity.certs import LocalCA
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.proxy.hbone import Authority

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
DEBUG = (
    [
        "--component-log-level",
        "upstream:debug,connection:debug,http:debug,http2:debug,router:debug,filter:debug,pool:debug",
    ]
    if os.environ.get("WAYPOINT_ENVOY_DEBUG")
    else []
)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with netns_with(NETNS, (WAYPOINT_IP, *PODS)) as name:
        yield name


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create(dt.datetime.now(dt.UTC))


async def _open(cert: Any, roots: bytes, authority: Authority, status: int = 200) -> Tunnel:
    return await open_tunnel((WAYPOINT_IP, WAYPOINT_ID), cert, roots, authority, status)


@pytest.fixture(scope="module")
def waypoint(netns: str, ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    roots = ca.root_pem
    waypoint_cert = issue(ca, WAYPOINT_ID)
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
        backend_cert = issue(ca, BACKEND_ID)
        # cache-0 runs as "cache" but its server presents backend's certificate.
        certs = {"db": issue(ca, SpiffeId(TD, "demo", "db"))}
        servers = [
            loop.run(
                start_pod(
                    ip,
                    certs.get(PODS[ip], backend_cert),
                    roots,
                    seen,
                    waypoint=WAYPOINT_ID,
                    answer=PODS[ip],
                    echo=PODS[ip] in ("db", "cache"),
                )
            )
            for ip in PODS
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

        wait_for(lambda: envoy.poll() is None and loop.run(listening()), 20, "envoy on 15008")
        yield loop, seen, issue(ca, CLIENT_ID), roots
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
            status, body = await request(tunnel)
            assert status == "HTTP/1.1 200 OK", status
            counts[body] += 1
        for _ in range(20):
            assert (await request(tunnel, "end-user: jason\r\n"))[1] == "v2"
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
        _, body = await request(tunnel, "x-echo-header: 1\r\n")
        tunnel.channel.close()
        return body

    headers = loop.run(scenario()).lower()
    assert f"x-test-peer: {CLIENT_ID}" in headers
    assert "x-test-downstream: 10.1.0.9:" in headers  # the tunnel's source, not 127.0.0.1


def test_authorization_policy_at_the_waypoint(waypoint: Any, ca: LocalCA) -> None:
    """The policy allows only frontend's GETs: the principal comes from the tunnel."""
    loop, _, client_cert, roots = waypoint
    stranger = issue(ca, SpiffeId(TD, "demo", "stranger"))

    async def scenario() -> list[str]:
        ours = await _open(client_cert, roots, Authority(BACKEND_VIP, 80))
        theirs = await _open(stranger, roots, Authority(BACKEND_VIP, 80))
        statuses = [
            (await request(ours))[0],
            (await request(ours, method="POST"))[0],
            (await request(theirs))[0],
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
        status, body = await request(tunnel, "x-echo-header: 1\r\n", host="web.demo")
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


def test_authorization_policy_on_a_tcp_service(waypoint: Any, ca: LocalCA) -> None:
    """db's policy admits only frontend: a stranger's connection is closed unanswered."""
    loop, _, client_cert, roots = waypoint
    stranger = issue(ca, SpiffeId(TD, "demo", "stranger"))

    async def echo(cert: Any) -> bytes:
        tunnel = await _open(cert, roots, Authority(DB_VIP, 5432))
        try:
            await tunnel.stream.write(b"\x00\x01hello")
            return bytes(await asyncio.wait_for(tunnel.stream.read(), 5))
        except HboneStreamError:
            return b""
        finally:
            tunnel.channel.close()

    assert loop.run(echo(client_cert)) == b"\x00\x01hello"
    assert loop.run(echo(stranger)) == b""


def test_endpoint_with_the_wrong_identity_is_refused(waypoint: Any) -> None:
    """The waypoint checks the destination's certificate against the pod's account."""
    loop, seen, client_cert, roots = waypoint

    async def scenario(authority: Authority) -> bytes:
        try:  # the waypoint may reset the tunnel at any point once the TLS check fails
            tunnel = await _open(client_cert, roots, authority)
        except HboneStreamError:
            return b""
        try:
            await tunnel.stream.write(b"PING\r\n")
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
        status, body = await request(tunnel)
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
