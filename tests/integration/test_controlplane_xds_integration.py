"""A control plane and two ztunnel xDS/CA clients over real gRPC/TLS on 127.0.0.1.

No root needed: the control plane serves a temporary config folder on 127.0.0.1 (any
free port), each client authenticates with its node credential. Checked: a pod added
to the folder reaches both clients within 1 s and a deleted one disappears; the CA
signs a node's own identities and refuses other nodes' identities and callers without
valid credentials; clients keep their state while the control plane is down and
converge after it returns; a NACKed push leaves the clients on their previous state
and shows in the status endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.messages import ADDRESS_TYPE_URL
from api.messages import workload as wl
from controlplane.ca.credentials import NodeTokens
from controlplane.server import ControlPlane, ControlPlaneConfig
from controlplane.xds.core import ServerSnapshot
from ztunnel.errors import IdentityError
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.proxy_state import ProxyState
from ztunnel.xds.client import Backoff, ControlPlaneEndpoint, XdsClient, node_id

pytestmark = pytest.mark.timeout(90)

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
"""


def pod_yaml(name: str, node: str, ip: str, sa: str = "default") -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, uid: uid-{name}, labels: {{app: {name}}}}}
spec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: app}}]}}
status:
  phase: Running
  podIP: {ip}
  conditions: [{{type: Ready, status: "True"}}]
"""


def uid(name: str) -> str:
    return f"Kubernetes//Pod/demo/{name}"


@dataclass
class Mesh:
    config: Path
    state: Path
    plane: ControlPlane
    clients: list[XdsClient]
    states: list[list[ProxyState]]
    tokens: dict[str, Path]

    def endpoint(self, node: str | None) -> ControlPlaneEndpoint:
        return ControlPlaneEndpoint(
            address=f"127.0.0.1:{self.plane.xds_port}",
            root_cert=self.state / "root-cert.pem",
            token_file=self.tokens[node] if node else None,
            server_name="localhost",
            timeout=5.0,
        )

    def workloads(self, index: int) -> set[str]:
        states = self.states[index]
        return set(states[-1].workloads) if states else set()

    async def http_status(self) -> dict[str, Any]:
        """``/debug/status`` over HTTP, as ``ambient controlplane status`` reads it."""
        url = f"http://127.0.0.1:{self.plane.admin_port}/debug/status"

        def fetch() -> dict[str, Any]:
            with urllib.request.urlopen(url, timeout=5) as response:
                data: dict[str, Any] = json.load(response)
            return data

        return await asyncio.to_thread(fetch)

    def status(self) -> dict[str, Any]:
        """The same status, read in-process (for polling)."""
        data: dict[str, Any] = json.loads(json.dumps(self.plane.status()))
        return data


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def on_both(mesh: Mesh, check: Callable[[set[str]], bool], timeout: float, what: str) -> None:
    """Wait until ``check`` holds for the workloads of both clients."""
    for index in (0, 1):

        def holds(i: int = index) -> bool:
            return check(mesh.workloads(i))

        assert await until(holds, timeout, what) < timeout


def plane_config(config: Path, state: Path, port: int = 0) -> ControlPlaneConfig:
    return ControlPlaneConfig(
        state_dir=state,
        config_dir=config,
        listen=f"127.0.0.1:{port}",
        admin_listen="127.0.0.1:0",
        watch_interval=0.05,
    )


@contextlib.asynccontextmanager
async def open_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    (config / "ns.yaml").write_text(NAMESPACE)
    (config / "a.yaml").write_text(pod_yaml("a", "node1", "10.244.1.5", "alice"))
    (config / "b.yaml").write_text(pod_yaml("b", "node2", "10.244.2.5", "bob"))
    plane = ControlPlane(plane_config(config, state))
    await plane.start()
    tokens = NodeTokens.load_or_create(state)
    token_files = {}
    for node in ("node1", "node2"):
        path = tmp_path / f"{node}.token"
        path.write_text(tokens.issue(node, dt.datetime.now(dt.UTC)))
        token_files[node] = path
    m = Mesh(config, state, plane, [], [[], []], token_files)
    tasks = []
    for index, node in enumerate(("node1", "node2")):
        client = XdsClient(
            m.endpoint(node),
            node_id(pod=f"ztunnel-{node}"),
            m.states[index].append,
            node_metadata={"NODE_NAME": node},
            backoff=Backoff(initial=0.05, maximum=0.3),
        )
        m.clients.append(client)
        tasks.append(asyncio.create_task(client.run()))
    try:
        for client in m.clients:
            await asyncio.wait_for(client.first_state.wait(), 5)
        yield m
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await m.plane.stop(0.2)


def in_mesh(tmp_path: Path, scenario: Callable[[Mesh], Awaitable[None]]) -> None:
    """Run ``scenario`` against a fresh control plane and two clients (60 s at most)."""

    async def main() -> None:
        async with open_mesh(tmp_path) as mesh:
            await scenario(mesh)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_initial_state_and_pods_added_and_deleted_reach_both_clients(tmp_path: Path) -> None:
    in_mesh(tmp_path, pods_added_and_deleted)


def test_ca_signs_own_identities_and_refuses_others(tmp_path: Path) -> None:
    in_mesh(tmp_path, ca_refusals)


def test_xds_refuses_a_stream_without_credentials(tmp_path: Path) -> None:
    in_mesh(tmp_path, xds_refusal)


def test_clients_keep_state_while_the_control_plane_is_down_and_converge(tmp_path: Path) -> None:
    in_mesh(tmp_path, control_plane_restart)


def test_nacked_push_keeps_previous_state_and_shows_in_status(tmp_path: Path) -> None:
    in_mesh(tmp_path, nacked_push)


async def pods_added_and_deleted(mesh: Mesh) -> None:
    assert mesh.workloads(0) == mesh.workloads(1) == {uid("a"), uid("b")}
    workload = mesh.states[0][-1].workloads[uid("a")]
    assert str(workload.addresses[0]) == "10.244.1.5" and workload.node == "node1"
    (mesh.config / "c.yaml").write_text(pod_yaml("c", "node1", "10.244.1.6"))
    await on_both(mesh, lambda w: uid("c") in w, 1.0, "pod c added")
    (mesh.config / "a.yaml").unlink()
    await on_both(mesh, lambda w: uid("a") not in w, 1.0, "pod a deleted")
    status = await mesh.http_status()
    proxies = status["proxies"]
    assert isinstance(proxies, list) and {p["node"] for p in proxies} == {"node1", "node2"}
    for proxy in proxies:
        address_type = proxy["types"][ADDRESS_TYPE_URL]
        assert address_type["ackedVersion"] == address_type["sentVersion"] != ""


async def ca_refusals(mesh: Mesh) -> None:
    alice = SpiffeId("cluster.local", "demo", "alice")
    bob = SpiffeId("cluster.local", "demo", "bob")
    node1 = CaClient(mesh.endpoint("node1"))
    anonymous = CaClient(mesh.endpoint(None))
    forged_token = mesh.tokens["node1"].with_name("forged.token")
    forged_token.write_text(NodeTokens(b"y" * 32).issue("node1", dt.datetime.now(dt.UTC)))
    forged = CaClient(
        ControlPlaneEndpoint(
            address=f"127.0.0.1:{mesh.plane.xds_port}",
            root_cert=mesh.state / "root-cert.pem",
            token_file=forged_token,
            server_name="localhost",
        )
    )
    try:
        cert = await node1.issue(alice)
        assert cert.identity == alice
        assert cert.not_after - cert.not_before <= dt.timedelta(hours=24, minutes=1)
        with pytest.raises(IdentityError, match=r"UNAUTHENTICATED.*no pod with that identity"):
            await node1.issue(bob)
        with pytest.raises(IdentityError, match=r"UNAUTHENTICATED.*no credential"):
            await anonymous.issue(alice)
        with pytest.raises(IdentityError, match=r"UNAUTHENTICATED.*signature"):
            await forged.issue(alice)
    finally:
        for client in (node1, anonymous, forged):
            await client.close()
    url = f"http://127.0.0.1:{mesh.plane.admin_port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
        return text

    metrics = await asyncio.to_thread(scrape)
    assert "citadel_server_success_cert_issuance_count_total 1.0" in metrics
    assert 'citadel_server_refused_count_total{reason="impersonation"} 1.0' in metrics
    assert "pilot_xds 2.0" in metrics
    ca = (await mesh.http_status())["ca"]
    assert isinstance(ca, dict)
    assert ca["issued"] == 1 and ca["refusedImpersonation"] == 1
    assert ca["refusedUnauthenticated"] == 2


async def xds_refusal(mesh: Mesh) -> None:
    seen: list[ProxyState] = []
    client = XdsClient(
        mesh.endpoint(None), node_id(), seen.append, backoff=Backoff(initial=5, maximum=5)
    )
    task = asyncio.create_task(client.run())
    try:
        await until(lambda: "UNAUTHENTICATED" in client.last_error, 5.0, "stream refused")
        assert seen == [] and not client.first_state.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The refusal races the client's first writes; the client must still learn the
    # real status every time (Python's gRPC reports a write cut short as INTERNAL).
    import grpc

    from api.xds import DELTA_ADS_METHOD, encode_request
    from ztunnel.xds.client import XdsClientCore

    requests = [encode_request(r) for r in XdsClientCore(node_id(), {}).initial_requests()]
    assert len(requests) >= 2
    codes: list[str] = []
    async with mesh.endpoint(None).channel() as channel:
        for _ in range(20):
            call = channel.stream_stream(DELTA_ADS_METHOD)()
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                for data in requests:
                    await call.write(data)
                await call.read()
            codes.append((await call.code()).name)
    assert codes == ["UNAUTHENTICATED"] * 20


async def control_plane_restart(mesh: Mesh) -> None:
    port = mesh.plane.xds_port
    await mesh.plane.stop(0.2)
    await until(lambda: not any(c.connected for c in mesh.clients), 5.0, "clients disconnected")
    assert mesh.workloads(0) == mesh.workloads(1) == {uid("a"), uid("b")}  # still served
    (mesh.config / "d.yaml").write_text(pod_yaml("d", "node2", "10.244.2.9"))
    (mesh.config / "b.yaml").unlink()
    await asyncio.sleep(0.3)
    assert uid("d") not in mesh.workloads(0)
    mesh.plane = ControlPlane(plane_config(mesh.config, mesh.state, port))
    await mesh.plane.start()
    await on_both(mesh, lambda w: w == {uid("a"), uid("d")}, 5.0, "converged after restart")
    # the reconnect carried initial_resource_versions: unchanged 'a' was not resent,
    # only 'd' (new) was sent and 'b' removed
    proxies = mesh.status()["proxies"]
    assert len(proxies) == 2
    for proxy in proxies:
        assert proxy["types"][ADDRESS_TYPE_URL]["resources"] == 2
        assert proxy["types"][ADDRESS_TYPE_URL]["resourcesSent"] == 1


async def settled(mesh: Mesh, quiet: float = 1.5, timeout: float = 20.0) -> None:
    """Until the control plane has published nothing for ``quiet`` seconds.

    Its watch compares each build with the hub's current snapshot: a cycle that lands
    after a snapshot injected by the test would publish the good state over it.
    ``quiet`` outlasts the first watch cycles and the once-a-second stat sweep.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = mesh.plane.hub.snapshot, loop.time()
    while loop.time() - since < quiet:
        assert loop.time() < deadline, "the control plane kept publishing"
        await asyncio.sleep(0.05)
        if mesh.plane.hub.snapshot is not last:
            last, since = mesh.plane.hub.snapshot, loop.time()


async def nacked_push(mesh: Mesh) -> None:
    await settled(mesh)
    before = [set(mesh.workloads(i)) for i in (0, 1)]
    pushes_before = [len(s) for s in mesh.states]
    good = mesh.plane.hub.snapshot
    bad_workload = wl.Address(
        workload=wl.Workload(uid=uid("bad"), name="bad", namespace="demo", addresses=[b"\x0a\x00"])
    )
    messages = {
        type_url: {name: _Raw(r.value) for name, r in resources.items()}
        for type_url, resources in good.resources.items()
    }
    messages[ADDRESS_TYPE_URL][uid("bad")] = bad_workload  # type: ignore[assignment]
    mesh.plane.hub.publish(ServerSnapshot.build(messages))

    def nacked() -> bool:
        proxies = mesh.status()["proxies"]
        assert isinstance(proxies, list)
        return all(p["types"][ADDRESS_TYPE_URL]["lastNack"] for p in proxies)

    await until(nacked, 2.0, "both clients NACKed")
    assert [set(mesh.workloads(i)) for i in (0, 1)] == before
    assert [len(s) for s in mesh.states] == pushes_before  # no new state applied
    for proxy in (await mesh.http_status())["proxies"]:
        nack = proxy["types"][ADDRESS_TYPE_URL]["lastNack"]
        assert "2-byte address" in nack["error"] and uid("bad") in nack["error"]
        types = proxy["types"][ADDRESS_TYPE_URL]
        assert types["ackedVersion"] == good.versions[ADDRESS_TYPE_URL]
    for client in mesh.clients:
        assert client.core.types[ADDRESS_TYPE_URL].nacks == 1
    # the next good change is accepted (the bad resource is gone from the source's view)
    (mesh.config / "e.yaml").write_text(pod_yaml("e", "node1", "10.244.1.7"))
    await on_both(mesh, lambda w: uid("e") in w, 2.0, "recovered")


@dataclass(frozen=True)
class _Raw:
    """An already-serialized message (to rebuild a snapshot from another one's bytes)."""

    data: bytes

    def SerializeToString(self, deterministic: bool = False) -> bytes:
        return self.data
