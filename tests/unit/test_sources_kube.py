"""The Kubernetes source against the official client and an HTTP protocol fixture.

PROTOCOL FIXTURE: ``ApiFixture`` below is not a Kubernetes API server. It serves
recorded API responses (a list, a stream of watch events, a ``410 Gone`` error event,
a dropped connection, a 404 for a CRD that is not installed) over real HTTP on
127.0.0.1, so that the official ``kubernetes`` client, pointed at it, runs its real
request, streaming and error paths. Response bodies follow the Kubernetes API's
wire format (``kind: PodList`` with ``metadata.resourceVersion``; watch lines of
``{"type": ..., "object": ...}``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from controlplane.errors import KubernetesSourceError
from controlplane.model import Pod
from controlplane.sources.kube import Backoff, KindTable, KubernetesSource, ResourceKind

NAMESPACES = ResourceKind("Namespace", "", "v1", "namespaces")
PODS = ResourceKind("Pod", "", "v1", "pods")
PEER_AUTH = ResourceKind("PeerAuthentication", "security.istio.io", "v1", "peerauthentications")
KINDS = (NAMESPACES, PODS, PEER_AUTH)


def pod(name: str, rv: str, version: str = "v1", ip: str = "10.244.1.5") -> dict[str, Any]:
    """A pod as the API returns it (list items carry no apiVersion/kind)."""
    return {
        "metadata": {
            "name": name,
            "namespace": "demo",
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "labels": {"app": "backend", "version": version},
        },
        "spec": {"nodeName": "node1", "serviceAccountName": "backend"},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": {"apiVersion": "v1", "kind": "Pod", **obj}}


# --- the fixture ---------------------------------------------------------------------------


@dataclass
class Json:
    """A complete JSON response."""

    body: dict[str, Any]
    status: int = 200


@dataclass
class Stream:
    """A chunked watch response: one JSON line per event, then (optionally) held open."""

    events: list[dict[str, Any]]
    hold: float = 0.0


@dataclass
class Drop:
    """The connection is closed without any response."""


Response = Json | Stream | Drop


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@dataclass
class ApiFixture:
    """PROTOCOL FIXTURE: scripted, recorded Kubernetes API responses over HTTP."""

    script: dict[tuple[str, str], list[Response]]
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def next_response(self, path: str, mode: str) -> Response:
        """The next scripted response; a list repeats its last one, an idle watch hangs."""
        queue = self.script.get((path, mode))
        if queue is None:
            return Json(status_body(404, "NotFound", f"the server could not find {path}"), 404)
        if mode == "list" and len(queue) == 1:
            return queue[0]
        if not queue:
            return Stream([], hold=5.0)
        return queue.pop(0)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                mode = "watch" if query.get("watch") in ("true", "True", "1") else "list"
                fixture.requests.append((mode, url.path, query))
                response = fixture.next_response(url.path, mode)
                if isinstance(response, Drop):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif isinstance(response, Json):
                    data = json.dumps(response.body).encode()
                    self.send_response(response.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._stream(response)

            def _stream(self, response: Stream) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for item in response.events:
                        line = json.dumps(item).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                        time.sleep(0.02)
                    deadline = time.monotonic() + response.hold
                    while time.monotonic() < deadline and not fixture.stopping.is_set():
                        time.sleep(0.02)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client went away: that is how a stopped watch ends

        return Handler

    def watches(self, path: str) -> list[str]:
        return [
            q.get("resourceVersion", "") for m, p, q in self.requests if (m, p) == ("watch", path)
        ]

    def lists(self, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if (m, p) == ("list", path))


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[tuple[ThreadingHTTPServer, ApiFixture]] = []

    def start(script: dict[tuple[str, str], list[Response]]) -> tuple[ApiFixture, Any]:
        fixture = ApiFixture(script)
        server = ThreadingHTTPServer(("127.0.0.1", 0), fixture.handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, fixture))
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{server.server_address[1]}"
        return fixture, client.ApiClient(config)

    yield start
    for server, fixture in servers:
        fixture.stopping.set()
        server.shutdown()
        server.server_close()


NS_LIST = Json(
    {
        "kind": "NamespaceList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "100"},
        "items": [
            {
                "metadata": {
                    "name": "demo",
                    "resourceVersion": "90",
                    "labels": {"istio.io/dataplane-mode": "ambient"},
                }
            }
        ],
    }
)


def pod_list(rv: str, *pods: dict[str, Any]) -> Json:
    return Json(
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": list(pods),
        }
    )


GONE = {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version: 203")}


# --- list ------------------------------------------------------------------------------------


def test_load_lists_every_kind_and_names_missing_crds(serve: Any) -> None:
    fixture, api = serve(
        {
            ("/api/v1/namespaces", "list"): [NS_LIST],
            ("/api/v1/pods", "list"): [pod_list("200", pod("a", "150"), pod("b", "160"))],
        }
    )
    state = KubernetesSource(api, kinds=KINDS).load()
    assert set(state.namespaces) == {"demo"}
    assert sorted(state.pods) == [("demo", "a"), ("demo", "b")]
    assert state.pods[("demo", "a")].uid == "uid-a"
    assert [str(w) for w in state.warnings] == [
        "/apis/security.istio.io/v1/peerauthentications: warning: "
        "the cluster does not serve security.istio.io/v1 peerauthentications; "
        "is the CRD installed? (no objects of this kind are read)"
    ]
    assert fixture.lists("/api/v1/pods") == 1


def test_load_pages_through_large_lists(serve: Any) -> None:
    first = pod_list("200", pod("a", "150"), pod("b", "151"))
    first.body["metadata"]["continue"] = "page-2-token"
    fixture, api = serve(
        {
            ("/api/v1/pods", "list"): [first, pod_list("200", pod("c", "152")), pod_list("999")],
        }
    )
    state = KubernetesSource(api, kinds=(PODS,), page_size=2).load()
    assert sorted(name for _, name in state.pods) == ["a", "b", "c"]
    queries = [q for m, p, q in fixture.requests if m == "list"]
    assert queries == [{"limit": "2"}, {"limit": "2", "continue": "page-2-token"}]


def test_an_expired_continue_token_restarts_the_list(serve: Any) -> None:
    first = pod_list("200", pod("a", "150"))
    first.body["metadata"]["continue"] = "old-token"
    gone = Json(status_body(410, "Expired", "the continue token expired"), 410)
    fixture, api = serve(
        {("/api/v1/pods", "list"): [first, gone, pod_list("300", pod("a", "150"), pod("b", "160"))]}
    )
    state = KubernetesSource(api, kinds=(PODS,), page_size=1).load()
    assert sorted(name for _, name in state.pods) == ["a", "b"]
    assert fixture.lists("/api/v1/pods") == 3


def test_load_reports_invalid_objects_from_the_api(serve: Any) -> None:
    bad = pod("bad", "170", ip="not-an-ip")
    _, api = serve(
        {
            ("/api/v1/namespaces", "list"): [NS_LIST],
            ("/api/v1/pods", "list"): [pod_list("200", pod("a", "150"), bad)],
        }
    )
    state = KubernetesSource(api, kinds=(NAMESPACES, PODS)).load()
    assert list(state.pods) == [("demo", "a")]
    assert [(e.file, e.kind, e.name, e.field) for e in state.errors] == [
        ("/api/v1/pods", "Pod", "bad", "status.podIP")
    ]


def test_load_fails_clearly_when_the_api_refuses_or_is_unreachable(serve: Any) -> None:
    _, api = serve(
        {("/api/v1/namespaces", "list"): [Json(status_body(403, "Forbidden", "no"), 403)]}
    )
    with pytest.raises(KubernetesSourceError, match="HTTP 403"):
        KubernetesSource(api, kinds=(NAMESPACES,)).load()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    config.retries = 0
    with pytest.raises(KubernetesSourceError, match="cannot list /api/v1/namespaces"):
        KubernetesSource(client.ApiClient(config), kinds=(NAMESPACES,)).load()


# --- list + watch -----------------------------------------------------------------------------


def test_watch_follows_events_relists_on_410_and_reconnects(serve: Any) -> None:
    fixture, api = serve(
        {
            ("/api/v1/namespaces", "list"): [NS_LIST],
            ("/api/v1/namespaces", "watch"): [Stream([], hold=5.0)],
            ("/api/v1/pods", "list"): [
                pod_list("200", pod("a", "150")),
                pod_list("300", pod("a", "250", version="v2"), pod("c", "260")),
            ],
            ("/api/v1/pods", "watch"): [
                Stream(
                    [
                        event("ADDED", pod("b", "201")),
                        event("MODIFIED", pod("a", "202", version="v2")),
                        event("DELETED", pod("b", "203")),
                    ]
                ),
                Stream([GONE]),
                Drop(),
                Stream([event("ADDED", pod("d", "301"))], hold=5.0),
            ],
        }
    )
    source = KubernetesSource(api, kinds=KINDS, backoff=Backoff(initial=0.05, maximum=0.2))

    async def follow() -> list[dict[str, str]]:
        seen: list[dict[str, str]] = []
        async for state in source.watch(interval=0.0):
            seen.append({name: p.labels["version"] for (_, name), p in state.pods.items()})
            if "d" in seen[-1]:
                break
        return seen

    seen = asyncio.run(asyncio.wait_for(follow(), timeout=20))
    assert seen[0] == {"a": "v1"}
    assert {"a": "v1", "b": "v1"} in seen
    assert {"a": "v2", "b": "v1"} in seen
    assert seen.index({"a": "v2"}) > seen.index({"a": "v2", "b": "v1"})
    assert {"a": "v2", "c": "v1"} in seen, "the relist after 410 replaced the state"
    assert seen[-1] == {"a": "v2", "c": "v1", "d": "v1"}
    versions = fixture.watches("/api/v1/pods")
    assert versions[:2] == ["200", "203"], "watch resumed from the last event's version"
    assert fixture.lists("/api/v1/pods") == 2, "410 Gone led to exactly one relist"
    assert versions[2:] and set(versions[2:]) == {"300"}, "reconnects resume from the relist"
    assert len(versions) >= 4, "the dropped connection was retried"


def test_a_forbidden_kind_does_not_hold_the_others_back(serve: Any) -> None:
    _, api = serve(
        {
            ("/api/v1/namespaces", "list"): [NS_LIST],
            ("/api/v1/namespaces", "watch"): [Stream([], hold=5.0)],
            ("/api/v1/pods", "list"): [Json(status_body(403, "Forbidden", "no"), 403)],
        }
    )
    source = KubernetesSource(api, kinds=(NAMESPACES, PODS), backoff=Backoff(0.05, 0.1))

    async def first() -> Any:
        async for state in source.watch(interval=0.0):
            return state
        return None

    state = asyncio.run(asyncio.wait_for(first(), timeout=10))
    assert set(state.namespaces) == {"demo"}
    assert [w.message for w in state.warnings] == [
        "the API refuses to list v1 pods (HTTP 403 Forbidden); grant list and watch on it "
        "(retrying)"
    ]


def test_watch_stops_cleanly_when_the_consumer_leaves(serve: Any) -> None:
    _, api = serve(
        {
            ("/api/v1/namespaces", "list"): [NS_LIST],
            ("/api/v1/namespaces", "watch"): [Stream([], hold=30.0)],
        }
    )
    source = KubernetesSource(api, kinds=(NAMESPACES,))

    async def first() -> set[str]:
        async for state in source.watch(interval=0.0):
            return set(state.namespaces)
        return set()

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(first(), timeout=10)) == {"demo"}
    assert time.monotonic() - started < 8, "the held watch was interrupted, not waited out"
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-namespaces")]


# --- the pure table ---------------------------------------------------------------------------


def pod_in(table: KindTable, name: str) -> Pod:
    obj = table.objects[("demo", name)]
    assert isinstance(obj, Pod)
    return obj


def test_kind_table_keeps_last_good_version_and_applies_deletes() -> None:
    table = KindTable(PODS)
    table.replace([pod("a", "1"), pod("b", "2")], "10")
    assert table.synced and table.resource_version == "10"
    table.apply("MODIFIED", event("MODIFIED", pod("a", "11", ip="nope"))["object"])
    assert pod_in(table, "a").ip == "10.244.1.5"
    assert "previous version stays in force" in table.all_issues()[0].message
    assert table.resource_version == "11"
    table.apply("MODIFIED", event("MODIFIED", pod("a", "12", version="v3"))["object"])
    assert pod_in(table, "a").labels["version"] == "v3"
    assert table.all_issues() == []
    table.apply("DELETED", event("DELETED", pod("b", "13"))["object"])
    assert sorted(table.objects) == [("demo", "a")]
    table.replace([pod("c", "20")], "20")
    assert sorted(table.objects) == [("demo", "c")]


# --- configuration from a kubeconfig, through the CLI -------------------------------------


def test_resources_command_reads_the_cluster_through_a_kubeconfig(
    serve: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from ambient.cli import root

    fixture, api = serve(
        {
            ("/api/v1/namespaces", "list"): [NS_LIST],
            ("/api/v1/pods", "list"): [pod_list("200", pod("a", "150"))],
            ("/api/v1/services", "list"): [
                Json({"kind": "ServiceList", "metadata": {"resourceVersion": "5"}, "items": []})
            ],
            ("/api/v1/serviceaccounts", "list"): [
                Json(
                    {
                        "kind": "ServiceAccountList",
                        "metadata": {"resourceVersion": "5"},
                        "items": [],
                    }
                )
            ],
        }
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""\
apiVersion: v1
kind: Config
clusters: [{{name: fx, cluster: {{server: "{api.configuration.host}"}}}}]
users: [{{name: u, user: {{token: not-a-secret}}}}]
contexts: [{{name: fx, context: {{cluster: fx, user: u}}}}]
current-context: fx
"""
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(
        root, ["controlplane", "resources", "--kubernetes", "--kubeconfig", str(kubeconfig)]
    )
    assert result.exit_code == 0, result.output
    assert "Kubernetes//Pod/demo/a" in result.output
    assert "HBONE" in result.output
    assert fixture.lists("/api/v1/pods") == 1


def test_missing_kubeconfig_is_a_clear_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from ambient.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["controlplane", "resources", "--kubernetes", "--kubeconfig", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert "error: no usable Kubernetes configuration" in err
    assert "hint:" in err and "Traceback" not in err
