"""A real Envoy enforces the translated RBAC filters: 403 ``RBAC: access denied``, counted.

Envoy listens on 127.0.0.1 only. In place of the HBONE terminator, a
``set_filter_state`` filter copies a request header into the peer-principal key,
so the test chooses who the client is. A few seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambient.errors import AmbientError
from bench.envoy.proxy import envoy_argv, envoy_binary
from controlplane.envoy.bootstrap import as_json
from controlplane.envoy.hbone import PEER_PRINCIPAL_KEY
from controlplane.envoy.rbac import rbac_filters
from controlplane.model import AuthorizationPolicy, ClusterState, Service, ServicePort
from controlplane.sources.decode import decode
from tests.unit.test_controlplane_l7_validate import DIRECT_OK, hcm_listener

POLICIES = """
- action: DENY
  targetRefs: [{kind: Gateway, name: waypoint}]
  rules: [{to: [{operation: {methods: [POST]}}]}]
- action: ALLOW
  targetRefs: [{kind: Service, name: backend}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/frontend]}}]
    to: [{operation: {paths: ['/api/*']}}]
"""
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
SET_FILTER_STATE = "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _state() -> ClusterState:
    found = {}
    for i, spec in enumerate(yaml.safe_load(POLICIES)):
        raw = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": f"p{i}", "namespace": "demo"},
            "spec": spec,
        }
        obj = decode(raw).obj
        assert isinstance(obj, AuthorizationPolicy)
        found[obj.key] = obj
    return ClusterState(authorization_policies=found)


def _start(
    tmp_path: Path,
    listeners: list[dict[str, Any]],
    admin: int,
    *,
    clusters: list[dict[str, Any]] | None = None,
) -> subprocess.Popen[bytes]:
    """Envoy with ``listeners`` and an admin port, on 127.0.0.1; waits until the first
    listener accepts."""
    try:
        binary = envoy_binary()
        subprocess.run([str(binary), "--version"], capture_output=True, timeout=30, check=True)
    except (AmbientError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the envoy binary cannot run here: {err}")
    config: dict[str, Any] = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters or []},
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "envoy.log"
    with log.open("w") as out:
        proc = subprocess.Popen(envoy_argv(path, concurrency=1), stdout=out, stderr=out)
    port = listeners[0]["address"]["socket_address"]["port_value"]
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"envoy did not start: {log.read_text()}")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[tuple[int, int]]:
    backend = Service("demo", "backend", ports=(ServicePort(80, 8080, "http"),))
    rbac = [as_json(f) for f in rbac_filters(_state(), ("demo", "waypoint"), backend, port=80)]
    peer = {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": SET_FILTER_STATE,
            "on_request_headers": [
                {
                    "object_key": PEER_PRINCIPAL_KEY,
                    "factory_key": "envoy.string",
                    "format_string": {
                        "text_format_source": {"inline_string": "%REQ(x-test-peer)%"}
                    },
                }
            ],
        },
    }
    port, admin = _free_port(), _free_port()
    proc = _start(tmp_path, [hcm_listener("wp", port, [peer, *rbac], DIRECT_OK)], admin)
    try:
        yield port, admin
    finally:
        _stop(proc)


def _request(port: int, method: str, path: str, peer: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"x-test-peer": f"spiffe://{peer}"} if peer else {}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _stat(admin: int, name: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    try:
        conn.request("GET", f"/stats?filter=^{name}$&format=json")
        stats = json.loads(conn.getresponse().read())["stats"]
        return int(stats[0]["value"]) if stats else 0
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_envoy_enforces_deny_then_allow(envoy: tuple[int, int]) -> None:
    port, admin = envoy
    frontend = "cluster.local/ns/demo/sa/frontend"
    assert _request(port, "GET", "/api/items", frontend)[0] == 200
    assert _request(port, "POST", "/api/items", frontend) == (403, b"RBAC: access denied")
    assert _request(port, "GET", "/api/items", "cluster.local/ns/demo/sa/other")[0] == 403
    assert _request(port, "GET", "/api/items", None)[0] == 403
    assert _request(port, "GET", "/other", frontend)[0] == 403
    assert _stat(admin, "http.wp.rbac.denied") == 4
    assert _stat(admin, "http.wp.rbac.allowed") >= 1


TCP_POLICY = """
- action: ALLOW
  targetRefs: [{kind: Service, name: db}]
  rules:
  - from: [{source: {ipBlocks: [127.0.0.2]}}]
  - to: [{operation: {methods: [GET]}}]
"""


def _tcp_exchange(port: int, source: str) -> bytes:
    """Sends a line from ``source`` and reads until the peer closes (RBAC decides on the
    first byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.settimeout(5)
        s.sendall(b"hi\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


@contextlib.contextmanager
def _echo_server() -> Iterator[int]:
    """A one-thread echo server on 127.0.0.1 (bounded: closed with the test)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while data := conn.recv(4096):
                        conn.sendall(data)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.mark.timeout(60)
def test_envoy_enforces_network_rbac_on_tcp(tmp_path: Path) -> None:
    """A TCP chain: the ALLOW rule with an HTTP method matches nothing, the address
    rule admits 127.0.0.2 only; a refused connection is closed without a byte."""
    from controlplane.envoy.rbac import rbac_network_filters
    from tests.unit.test_controlplane_l7_validate import tcp_listener

    found = {}
    for spec in yaml.safe_load(TCP_POLICY):
        raw = {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "db", "namespace": "demo"},
            "spec": spec,
        }
        obj = decode(raw).obj
        assert isinstance(obj, AuthorizationPolicy)
        found[obj.key] = obj
    db = Service("demo", "db", ports=(ServicePort(5432, 5432, "tcp"),))
    state = ClusterState(authorization_policies=found)
    filters = [as_json(f) for f in rbac_network_filters(state, ("demo", "wp"), db, port=5432)]
    port, admin = _free_port(), _free_port()
    with _echo_server() as echo:
        proxy = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": "db", "cluster": "echo"},
        }
        listener = tcp_listener("db", port, [*filters, proxy])
        listener["filter_chains"][0]["filters"].pop()  # the direct response
        cluster = {
            "name": "echo",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "echo",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": echo,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        proc = _start(tmp_path, [listener], admin, clusters=[cluster])
        try:
            assert _tcp_exchange(port, "127.0.0.2") == b"hi\n"
            assert _tcp_exchange(port, "127.0.0.1") == b""
            # the readiness probe (from 127.0.0.1) was refused too
            assert _stat(admin, "tcp.allow.rbac.denied") >= 1
        finally:
            _stop(proc)
