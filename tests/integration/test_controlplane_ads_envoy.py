"""A real Envoy on the control plane's ADS over TLS with a node token: config, a live edit,
certificate renewal.

No root needed: the control plane serves a temporary config folder on 127.0.0.1 (a
namespace bound to the waypoint ``wp``, its pod on node1, a backend with two subsets
and a VirtualService 80/20). Envoy 1.40 runs the waypoint's own bootstrap
(``waypoint.bootstrap``: ADS, ``authorization: Bearer <node1's token>``, node metadata
naming the waypoint), on delta and on state-of-the-world ADS, and gets listeners,
clusters, endpoints, routes and its certificate over xDS. Listeners that would bind an
address (HBONE on 15008) are moved to free ports on 127.0.0.1, nothing else is
touched. Checked through Envoy's admin: the listeners and clusters are active,
``default`` holds a certificate for exactly ``spiffe://cluster.local/ns/demo/sa/wp``,
an edit of the VirtualService's weights reaches the same Envoy process within seconds,
ACKed, with no NACK; a DestinationRule connection-pool edit (clusters change, endpoints
do not) leaves no cluster warming after 2 s (Envoy's ``/stats``); with a short
certificate lifetime the certificate is replaced live at half-life.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from controlplane.ca.credentials import NodeTokens
from controlplane.cli import cli
from controlplane.server import ControlPlane, ControlPlaneConfig
from controlplane.xds.envoytypes import ROUTE
from tests.integration.envoy_harness import Envoy, eventually, free_ports, on_loopback
from tests.waypoint_envoy_fixtures import virtual_service

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: demo, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: demo, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec:
  clusterIP: 10.96.0.9
  selector: {gateway.networking.k8s.io/gateway-name: wp}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp
  namespace: demo
  uid: uid-wp
  labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}
spec: {nodeName: node1, serviceAccountName: wp, containers: [{name: envoy}]}
status: {phase: Running, podIP: 10.244.1.9, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-v1, namespace: demo, uid: uid-b1, labels: {app: backend, version: v1}}
spec: {nodeName: node2, serviceAccountName: backend, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.2.11, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-v2, namespace: demo, uid: uid-b2, labels: {app: backend, version: v2}}
spec: {nodeName: node2, serviceAccountName: backend, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.2.12, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: 5678}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def destination_rule(max_connections: int) -> str:
    """The DestinationRule of :data:`CONFIG` with a connection pool: every backend cluster
    changes, its endpoints do not."""
    without_rule = CONFIG.partition("---\napiVersion: networking.istio.io/v1\nkind: Destina")[0]
    return without_rule + (
        f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: demo}}
spec:
  host: backend
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {max_connections}}}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""
    )


def bootstrap(xds_port: int, root: Path, token: str, api_type: str, admin: int) -> dict[str, Any]:
    """The waypoint's own bootstrap (``waypoint.bootstrap``), on ``api_type`` ADS."""
    from waypoint.bootstrap import WaypointConfig, render_bootstrap

    config = WaypointConfig(
        namespace="demo",
        service_account="wp",
        gateway_name="wp",
        kind="waypoint",
        instance_ips=("10.244.1.9",),
        xds_address=f"127.0.0.1:{xds_port}",
        root_cert=root,
        admin_port=admin,
    )
    out = render_bootstrap(config, token)
    out["dynamic_resources"]["ads_config"]["api_type"] = api_type
    return out


def route_weights(dump: dict[str, Any]) -> dict[str, int]:
    """Cluster -> weight in the dynamic route configurations Envoy holds."""
    weights = {}
    for entry in dump.get("RoutesConfigDump", {}).get("dynamic_route_configs", []):
        for host in entry["route_config"].get("virtual_hosts", []):
            for route in host.get("routes", []):
                for cluster in (
                    route.get("route", {}).get("weighted_clusters", {}).get("clusters", [])
                ):
                    weights[cluster["name"].split("|")[2]] = int(cluster["weight"])
    return weights


def active_state(envoy: Envoy) -> dict[str, Any] | None:
    dump = envoy.config_dump()
    listeners = [
        entry["name"]
        for entry in dump.get("ListenersConfigDump", {}).get("dynamic_listeners", [])
        if "active_state" in entry
    ]
    clusters = [
        entry["cluster"]["name"]
        for entry in dump.get("ClustersConfigDump", {}).get("dynamic_active_clusters", [])
    ]
    secrets = {
        entry["name"]: entry
        for entry in dump.get("SecretsConfigDump", {}).get("dynamic_active_secrets", [])
    }
    if listeners and clusters and route_weights(dump) and {"default", "ROOTCA"} <= set(secrets):
        return {"listeners": listeners, "clusters": clusters, "dump": dump}
    return None


def cluster_manager_stats(envoy: Envoy) -> dict[str, int]:
    """Envoy's ``cluster_manager.*`` counters and gauges from its admin ``/stats``."""
    stats = envoy.admin("/stats?format=json&filter=^cluster_manager%5C.")
    return {s["name"]: int(s["value"]) for s in stats["stats"] if isinstance(s.get("value"), int)}


def active_max_connections(envoy: Envoy) -> dict[str, int]:
    """Active cluster -> its circuit breakers' ``max_connections``."""
    dump = envoy.config_dump()
    out = {}
    for entry in dump.get("ClustersConfigDump", {}).get("dynamic_active_clusters", []):
        thresholds = entry["cluster"].get("circuit_breakers", {}).get("thresholds", [{}])
        out[entry["cluster"]["name"]] = int(thresholds[0].get("max_connections", 0))
    return out


async def destination_rule_edit(config: Path, envoy: Envoy) -> float:
    """A connection-pool edit of the DestinationRule (the clusters change, their endpoints
    do not): Envoy's CDS update is applied and no cluster stays warming (it would until
    ``initial_fetch_timeout``, 15 s, if the unchanged assignments were not sent again).
    The seconds from the edit to the updated clusters being active."""
    before = await asyncio.to_thread(cluster_manager_stats, envoy)
    assert before["cluster_manager.warming_clusters"] == 0, before
    (config / ".demo.tmp").write_text(destination_rule(7))
    os.replace(config / ".demo.tmp", config / "demo.yaml")
    started = time.monotonic()
    await eventually(
        lambda: (
            cluster_manager_stats(envoy)["cluster_manager.cds.update_success"]
            > before["cluster_manager.cds.update_success"]
        ),
        5,
        "the DestinationRule's CDS update",
        envoy,
    )

    def settled() -> bool:
        stats = cluster_manager_stats(envoy)
        backends = {n: m for n, m in active_max_connections(envoy).items() if "|backend." in n}
        return (
            stats["cluster_manager.warming_clusters"] == 0
            and bool(backends)
            and set(backends.values()) == {7}
        )

    await eventually(settled, 2, "the changed clusters active, none warming, within 2 s", envoy)
    return time.monotonic() - started


def certificate_identities(envoy: Envoy) -> set[str]:
    certs = envoy.admin("/certs")
    return {
        uri
        for entry in certs.get("certificates", [])
        for cert in entry.get("cert_chain", [])
        for san in cert.get("subject_alt_names", [])
        if (uri := san.get("uri"))
    }


async def scenario(
    tmp_path: Path, api_type: str, ttl: dt.timedelta = dt.timedelta(hours=24)
) -> None:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    (config / "demo.yaml").write_text(CONFIG)
    (config / "vs.yaml").write_text(virtual_service(80, 20))
    token = NodeTokens.load_or_create(state).issue("node1", dt.datetime.now(dt.UTC))
    ports = free_ports(4)
    plane = ControlPlane(
        ControlPlaneConfig(
            state_dir=state,
            config_dir=config,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            watch_interval=0.05,
            certificate_ttl=ttl,
        ),
        envoy_resources=on_loopback(ports),
    )
    await plane.start()
    root = state / "root-cert.pem"
    envoy = Envoy(tmp_path, bootstrap(plane.xds_port, root, token, api_type, ports + 3))
    log = ""
    try:
        first = await eventually(lambda: active_state(envoy), 20, "listeners, clusters", envoy)
        assert route_weights(first["dump"]) == {"v1": 80, "v2": 20}
        assert any(c.startswith("outbound|80|v1|") for c in first["clusters"])
        assert await asyncio.to_thread(certificate_identities, envoy) == {
            "spiffe://cluster.local/ns/demo/sa/wp"
        }
        pid = envoy.process.pid
        if ttl < dt.timedelta(minutes=1):
            await rotation(envoy, ttl)

        (config / ".vs.tmp").write_text(virtual_service(10, 90))
        os.replace(config / ".vs.tmp", config / "vs.yaml")
        started = time.monotonic()
        await eventually(
            lambda: route_weights(envoy.config_dump()) == {"v1": 10, "v2": 90},
            10,
            "the weight edit",
            envoy,
        )
        took = time.monotonic() - started
        assert envoy.process.pid == pid and envoy.process.poll() is None
        assert took < 5, f"the edit took {took:.2f} s"
        warmed = await destination_rule_edit(config, envoy)
        assert warmed < 2, f"the DestinationRule edit took {warmed:.2f} s to warm"

        status = json.loads(json.dumps(plane.status()))
        (proxy,) = status["envoyProxies"]
        assert proxy["kind"] == "waypoint" and proxy["namespace"] == "demo"
        assert proxy["node"] == "node1"
        routes = proxy["types"][ROUTE]
        assert routes["nacks"] == 0 and routes["acks"] >= 2
        assert all(t["nacks"] == 0 for t in proxy["types"].values()), proxy["types"]
        assert status["envoy"]["pushToAck"]["count"] >= 5
        renewed = ttl < dt.timedelta(minutes=1)
        assert (
            (status["envoy"]["certificatesIssued"] >= 2)
            if renewed
            else (status["envoy"]["certificatesIssued"] == 1)
        )
        shown = await asyncio.to_thread(
            CliRunner().invoke, cli, ["status", "--admin", f"127.0.0.1:{plane.admin_port}"]
        )
        assert shown.exit_code == 0, shown.output
        assert "waypoint demo/wp" in shown.output and "RouteConfiguration" in shown.output
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{plane.admin_port}/metrics", timeout=5
            ).read()
        )
        assert b"pilot_xds_envoy_proxies 1.0" in metrics
        assert b"pilot_xds_envoy_push_to_ack_seconds_bucket" in metrics
    finally:
        log = envoy.stop()
        await plane.stop(0.2)
    assert "rejected" not in log.lower(), log


def certificate_serials(envoy: Envoy) -> set[str]:
    certs = envoy.admin("/certs")
    return {
        str(cert.get("serial_number"))
        for entry in certs.get("certificates", [])
        for cert in entry.get("cert_chain", [])
        if any(san.get("uri") for san in cert.get("subject_alt_names", []))
    }


async def rotation(envoy: Envoy, ttl: dt.timedelta) -> None:
    """The certificate is replaced at half-life, live, before it expires."""
    first = await asyncio.to_thread(certificate_serials, envoy)
    assert len(first) == 1
    started = time.monotonic()
    await eventually(
        lambda: (serials := certificate_serials(envoy)) and serials != first,
        ttl.total_seconds(),
        "a renewed certificate",
        envoy,
    )
    assert time.monotonic() - started < ttl.total_seconds() * 0.9


@pytest.mark.parametrize("api_type", ["DELTA_GRPC", "GRPC"])
def test_envoy_gets_its_config_and_a_live_weight_edit(tmp_path: Path, api_type: str) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path, api_type), 50))


def test_envoy_certificate_is_renewed_at_half_life(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path, "GRPC", dt.timedelta(seconds=10)), 50))


async def refusals(tmp_path: Path) -> None:
    """Over gRPC: another node's token, no token, or no identity get no config and no key."""
    import grpc

    from api.xds import (
        SOTW_ADS_METHOD,
        DiscoveryRequest,
        decode_discovery_response,
        encode_discovery_request,
    )

    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    (config / "demo.yaml").write_text(CONFIG)
    tokens = NodeTokens.load_or_create(state)
    plane = ControlPlane(
        ControlPlaneConfig(
            state_dir=state, config_dir=config, listen="127.0.0.1:0", admin_listen="127.0.0.1:0"
        )
    )
    await plane.start()
    credentials = grpc.ssl_channel_credentials((state / "root-cert.pem").read_bytes())
    metadata = {
        "NAMESPACE": "demo",
        "SERVICE_ACCOUNT": "wp",
        "GATEWAY_NAME": "wp",
        "PROXY_KIND": "waypoint",
    }

    async def ask(node: str | None, meta: dict[str, str]) -> Any:
        headers = []
        if node is not None:
            token = tokens.issue(node, dt.datetime.now(dt.UTC))
            headers.append(("authorization", f"Bearer {token}"))
        request = DiscoveryRequest(
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            node_id="waypoint~10.244.1.9~wp.demo~demo.svc.cluster.local",
            node_metadata=meta,
            resource_names=("default", "ROOTCA"),
        )
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{plane.xds_port}",
            credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            call = channel.stream_stream(SOTW_ADS_METHOD)(metadata=headers)
            try:
                if node is not None:
                    # Without a token the server refuses before reading: a write racing
                    # that refusal fails in grpcio's client as INTERNAL, so none is sent.
                    await call.write(encode_discovery_request(request))
                return decode_discovery_response(await asyncio.wait_for(call.read(), 5))
            except grpc.aio.AioRpcError as err:
                return err.code()

    try:
        assert await ask("node2", metadata) == grpc.StatusCode.PERMISSION_DENIED  # wp: node1
        assert await ask(None, metadata) == grpc.StatusCode.UNAUTHENTICATED
        no_account = {k: v for k, v in metadata.items() if k != "SERVICE_ACCOUNT"}
        assert await ask("node1", no_account) == grpc.StatusCode.INVALID_ARGUMENT
        served = await ask("node1", metadata)
        assert len(served.resources) == 2  # the rightful caller gets default and ROOTCA
        status = plane.status()["envoy"]
        assert status["refused"] == 2 and status["certificatesIssued"] == 1  # type: ignore[index]
    finally:
        await plane.stop(0.2)


def test_envoy_streams_refused_without_the_right_node(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(refusals(tmp_path), 30))


async def restarts(tmp_path: Path, api_type: str) -> None:
    """Envoy keeps its config while the control plane is down, converges when it returns
    (an edit made meanwhile arrives), and a new Envoy process gets everything again."""
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    (config / "demo.yaml").write_text(CONFIG)
    (config / "vs.yaml").write_text(virtual_service(80, 20))
    token = NodeTokens.load_or_create(state).issue("node1", dt.datetime.now(dt.UTC))
    ports = free_ports(4)

    def make_plane(port: int) -> ControlPlane:
        return ControlPlane(
            ControlPlaneConfig(
                state_dir=state,
                config_dir=config,
                listen=f"127.0.0.1:{port}",
                admin_listen="127.0.0.1:0",
                watch_interval=0.05,
            ),
            envoy_resources=on_loopback(ports),
        )

    plane = make_plane(0)
    await plane.start()
    port = plane.xds_port
    config_json = bootstrap(port, state / "root-cert.pem", token, api_type, ports + 3)
    envoy = Envoy(tmp_path, config_json)
    try:
        await eventually(lambda: active_state(envoy), 20, "the first config", envoy)
        await plane.stop(0.2)
        (config / ".vs.tmp").write_text(virtual_service(30, 70))
        os.replace(config / ".vs.tmp", config / "vs.yaml")
        await asyncio.sleep(0.5)
        held = await asyncio.to_thread(envoy.config_dump)
        assert route_weights(held) == {"v1": 80, "v2": 20}  # kept while the plane is down
        plane = make_plane(port)
        await plane.start()
        await eventually(
            lambda: route_weights(envoy.config_dump()) == {"v1": 30, "v2": 70},
            20,
            "the edit made while the control plane was down",
            envoy,
        )
        envoy.stop()
        envoy = Envoy(tmp_path, config_json)
        again = await eventually(lambda: active_state(envoy), 20, "a new Envoy's config", envoy)
        assert route_weights(again["dump"]) == {"v1": 30, "v2": 70}
        await eventually(lambda: len(plane.hub.envoy_status()) == 1, 5, "one stream", envoy)
    finally:
        envoy.stop()
        await plane.stop(0.2)


@pytest.mark.parametrize("api_type", ["DELTA_GRPC", "GRPC"])
def test_envoy_survives_control_plane_and_envoy_restarts(tmp_path: Path, api_type: str) -> None:
    asyncio.run(asyncio.wait_for(restarts(tmp_path, api_type), 55))
