"""``controlplane run --kubernetes``: cluster state and caller identities from the API.

PROTOCOL FIXTURE: ``RecordedApi`` below is not a Kubernetes API server. It serves
recorded responses of the Kubernetes API over HTTP on 127.0.0.1 (``PodList`` and
``NamespaceList`` bodies, empty lists, an idle watch stream, a 404 for Istio CRDs that
are not installed, and ``authentication.k8s.io/v1`` TokenReview answers), so that the
official ``kubernetes`` client inside the control plane runs its real request paths.
Checked: a ztunnel presenting its (projected) service-account token gets the workload
state over xDS and certificates for pods on its own node only; other tokens are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from controlplane.server import ControlPlane, ControlPlaneConfig
from ztunnel.errors import IdentityError
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.proxy_state import ProxyState
from ztunnel.xds.client import Backoff, ControlPlaneEndpoint, XdsClient, node_id

pytestmark = pytest.mark.timeout(90)


def pod(ns: str, name: str, node: str, sa: str, *, ip: str, uid: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "10"},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def listing(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "20"}, "items": items}


LISTS = {
    "/api/v1/namespaces": listing(
        "NamespaceList",
        [
            {
                "metadata": {
                    "name": "demo",
                    "resourceVersion": "5",
                    "labels": {"istio.io/dataplane-mode": "ambient"},
                }
            },
            {"metadata": {"name": "istio-system", "resourceVersion": "6"}},
        ],
    ),
    "/api/v1/pods": listing(
        "PodList",
        [
            pod("istio-system", "ztunnel-n1", "node1", "ztunnel", ip="10.0.0.11", uid="uid-z1"),
            pod("demo", "alice-1", "node1", "alice", ip="10.244.1.5", uid="uid-a1"),
            pod("demo", "bob-1", "node2", "bob", ip="10.244.2.5", uid="uid-b1"),
        ],
    ),
    "/api/v1/services": listing("ServiceList", []),
    "/api/v1/serviceaccounts": listing("ServiceAccountList", []),
}


def review(token: str) -> dict[str, Any]:
    """Recorded TokenReview answers (authentication.k8s.io/v1)."""
    users = {
        "ztunnel-n1-token": ("system:serviceaccount:istio-system:ztunnel", "ztunnel-n1", "uid-z1"),
        "alice-token": ("system:serviceaccount:demo:alice", "alice-1", "uid-a1"),
    }
    status: dict[str, Any]
    if token in users:
        username, pod_name, pod_uid = users[token]
        status = {
            "authenticated": True,
            "user": {
                "username": username,
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [pod_name],
                    "authentication.kubernetes.io/pod-uid": [pod_uid],
                },
            },
            "audiences": ["istio-ca"],
        }
    else:
        status = {"authenticated": False, "error": "invalid bearer token"}
    return {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {},
        "spec": {"token": token, "audiences": ["istio-ca"]},
        "status": status,
    }


class RecordedApi:
    """PROTOCOL FIXTURE: recorded Kubernetes API responses over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.reviews: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: dict[str, Any], code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                watch = parse_qs(url.query).get("watch", [""])[0] in ("true", "True", "1")
                if url.path not in LISTS:
                    self._json(
                        {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "code": 404, "reason": "NotFound", "message": "not found"},
                        404,
                    )  # fmt: skip
                elif not watch:
                    self._json(LISTS[url.path])
                else:  # an idle watch: no events until the fixture stops (or 2 s pass)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    api.stopping.wait(2.0)
                    with contextlib.suppress(OSError):
                        self.wfile.write(b"0\r\n\r\n")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                token = body["spec"]["token"]
                api.reviews.append(token)
                self._json(review(token), 201)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self) -> Any:
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[RecordedApi]:
    fixture = RecordedApi()
    yield fixture
    fixture.close()


async def scenario(api: RecordedApi, tmp_path: Path) -> None:
    state = tmp_path / "state"
    plane = ControlPlane(
        ControlPlaneConfig(
            state_dir=state, kubernetes=True, listen="127.0.0.1:0", admin_listen="127.0.0.1:0"
        ),
        kube_api_client=api.client(),
    )
    await plane.start()
    clients: list[CaClient] = []
    task = None
    try:

        def endpoint(token: str) -> ControlPlaneEndpoint:
            path = tmp_path / f"{token}.txt"
            path.write_text(token)
            return ControlPlaneEndpoint(
                f"127.0.0.1:{plane.xds_port}", state / "root-cert.pem", path, "localhost"
            )

        node1 = CaClient(endpoint("ztunnel-n1-token"))
        app = CaClient(endpoint("alice-token"))
        forged = CaClient(endpoint("forged-token"))
        clients += [node1, app, forged]
        alice = SpiffeId("cluster.local", "demo", "alice")
        assert (await node1.issue(alice)).identity == alice
        with pytest.raises(IdentityError, match="no pod with that identity"):
            await node1.issue(SpiffeId("cluster.local", "demo", "bob"))
        with pytest.raises(IdentityError, match="may not request other identities"):
            await app.issue(alice)
        with pytest.raises(IdentityError, match="refused"):
            await forged.issue(alice)
        assert "ztunnel-n1-token" in api.reviews

        states: list[ProxyState] = []
        xds = XdsClient(
            endpoint("ztunnel-n1-token"), node_id(), states.append, backoff=Backoff(maximum=0.5)
        )
        task = asyncio.create_task(xds.run())
        await asyncio.wait_for(xds.first_state.wait(), 10)
        names = {w.name for w in states[-1].workloads.values()}
        assert {"alice-1", "bob-1"} <= names
        proxies = plane.status()["proxies"]
        assert isinstance(proxies, list) and [p["node"] for p in proxies] == ["node1"]
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for c in clients:
            await c.close()
        await plane.stop(0.2)


def test_kubernetes_mode_with_service_account_tokens(api: RecordedApi, tmp_path: Path) -> None:
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(scenario(api, tmp_path), 60))
    assert time.monotonic() - started < 60
