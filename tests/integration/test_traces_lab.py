"""One request's trace across the ingress gateway, the waypoint and the backend, in a lab.

The tutorial as the demo builds it (2 nodes, agents, ztunnels, control plane, the
tutorial behind its namespace's waypoint, the ingress gateway; ``lab.demo.build_world``),
then the ``frontend`` Service labelled ``istio.io/ingress-use-waypoint: "true"`` as in
Istio's docs. ``outside`` sends ``GET /`` with a ``traceparent`` through the gateway;
``ambient lab traces --trace-id <id> -o json`` then shows, in one trace: the gateway's
spans, the waypoint's (the gateway tunnelled to it, not to the pod) and the span of the
frontend's http-echo, each the child of the hop before, the root the child of the
caller's span.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import Lab
from lab.demo import DemoConfig, DemoReport, Progress, build_world
from lab.demo_l7 import INGRESS_HOST, NAMESPACE, envoy_clusters
from tests.integration.meshlab import ambient
from tests.integration.test_lab_gateways import lab  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(180)]

TRACE = "7a3c0e2b9d1f4a6c8e0b2d4f6a8c0e11"
CALLER = "c0ffee00c0ffee01"
GATEWAY = "istio-ingressgateway.istio-system"
WAYPOINT = f"waypoint.{NAMESPACE}"
FRONTEND = f"frontend.{NAMESPACE}"


def _flatten(nodes: list[dict[str, Any]], parent: dict[str, Any] | None = None) -> Iterator[Any]:
    for node in nodes:
        yield node, parent
        yield from _flatten(node["children"], node)


def _service(span: dict[str, Any]) -> str:
    return str(span.get("localEndpoint", {}).get("serviceName", ""))


def _lab_traces(built: Lab) -> dict[str, Any] | None:
    done = ambient(built, "traces", "--trace-id", TRACE, "-o", "json")
    if done.returncode != 0:
        return None
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _poll(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return bool(cond())


def test_ingress_trace_crosses_gateway_waypoint_and_backend(lab: Lab) -> None:  # noqa: F811
    world = build_world(
        lab,
        DemoConfig(name=lab.name, checks=frozenset({13})),
        Progress(io.StringIO(), DemoReport()),
    )
    if world.capture is not None:
        world.capture.__exit__(None, None, None)
    assert not world.l7_missing and not world.ingress_missing, (
        world.l7_missing,
        world.ingress_missing,
    )
    # Istio's docs: kubectl label svc frontend istio.io/ingress-use-waypoint=true
    frontend = lab.service("frontend", NAMESPACE)
    lab.remove_service(frontend)
    lab.add_service(
        frontend.name,
        namespace=frontend.namespace,
        selector=frontend.selector,
        ports=frontend.ports,
        labels={**frontend.labels, "istio.io/ingress-use-waypoint": "true"},
        vip=frontend.vip,
    )
    gateway = lab.pod("istio-system/istio-ingressgateway")
    waypoint = lab.pod(f"{NAMESPACE}/waypoint")
    # wait until the gateway's frontend cluster tunnels to the waypoint pod (endpoint
    # id VIP:port@pod); checked at the end, after the trace, which is what must show it
    tunnelled = _poll(lambda: f"@{waypoint.ip}" in envoy_clusters(world, gateway), 20)
    curl = [
        "curl", "-sS", "-m", "5", "-w", " %{http_code}",
        "-H", f"traceparent: 00-{TRACE}-{CALLER}-01", f"http://{INGRESS_HOST}/",
    ]  # fmt: skip
    done = lab.exec("outside", curl)
    assert "Hello from frontend" in done.stdout, (
        done.stdout,
        done.stderr,
        [line for line in envoy_clusters(world, gateway).splitlines() if "frontend" in line],
        [line for line in envoy_clusters(world, waypoint).splitlines() if "frontend" in line],
        lab.logs_dir,
    )

    found: dict[str, Any] = {}

    def complete() -> bool:
        document = _lab_traces(lab)
        if document is None:
            return False
        found.update(document)
        services = {_service(s) for s, _ in _flatten(document["roots"])}
        # Each proxy exports its spans in batches of its own: until the last one is in,
        # a span whose parent is still missing stands as a root of its own.
        return {GATEWAY, WAYPOINT, FRONTEND} <= services and len(document["roots"]) == 1

    _poll(complete, 15)
    assert found.get("traceId") == TRACE, found
    spans = list(_flatten(found["roots"]))
    services = {_service(s) for s, _ in spans}
    assert {GATEWAY, WAYPOINT, FRONTEND} <= services, json.dumps(found, indent=1)[-3000:]
    # One tree: its root is the gateway's server span, child of the caller's span.
    (root,) = found["roots"]
    assert _service(root) == GATEWAY and root["kind"] == "SERVER"
    assert root["parentId"] == CALLER
    # The backend's span is the waypoint's child, and the waypoint's path up is the gateway's.
    (backend, parent) = next((s, p) for s, p in spans if _service(s) == FRONTEND)
    assert backend["kind"] == "SERVER" and backend["traceId"] == TRACE
    assert parent is not None and _service(parent) == WAYPOINT, json.dumps(found, indent=1)
    assert backend["parentId"] == parent["id"]
    by_id = {s["id"]: (s, p) for s, p in spans}
    chain = []
    node: dict[str, Any] | None = parent
    while node is not None:
        chain.append(_service(node))
        node = by_id[node["id"]][1]
    assert chain[0] == WAYPOINT and chain[-1] == GATEWAY and set(chain) == {WAYPOINT, GATEWAY}
    assert tunnelled
