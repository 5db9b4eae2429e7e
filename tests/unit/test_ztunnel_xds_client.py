"""ztunnel's delta-xDS client core, driven by the control plane's server core (in memory).

The two sans-IO cores talk through the real wire encoding (:mod:`api.xds`), so these
tests read like a transcript: subscribe, push, ACK or NACK, reconnect.
"""

from __future__ import annotations

from pathlib import Path

from api.messages import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from api.messages import workload as wl
from api.xds import (
    DeltaRequest,
    DeltaResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from controlplane.model import ClusterState, Namespace, Pod
from controlplane.server import snapshot_of
from controlplane.workloadapi import MeshConfig, translate
from controlplane.xds.core import ServerSnapshot, StreamCore
from ztunnel.xds.client import Backoff, XdsClientCore, node_id
from ztunnel.xds.translate import state_from_snapshot

UID = "Kubernetes//Pod/demo/{}"


def cluster(*names: str) -> ClusterState:
    ns = Namespace("demo", labels={"istio.io/dataplane-mode": "ambient"})  # type: ignore[arg-type]
    pods = {
        ("demo", n): Pod(
            "demo", n, node_name="node1", ip=f"10.244.1.{i + 2}", phase="Running", ready=True
        )
        for i, n in enumerate(names)
    }
    return ClusterState(namespaces={"demo": ns}, pods=pods)


def wire(responses: list[DeltaResponse]) -> list[DeltaResponse]:
    return [decode_response(encode_response(r)) for r in responses]


def exchange(
    server: StreamCore, client: XdsClientCore, snapshot: ServerSnapshot, now: float = 0.0
) -> list[DeltaRequest]:
    """Open a stream: the client's initial requests, the server's answers, the client's replies."""
    replies = []
    for request in client.initial_requests():
        for response in wire(
            server.receive(decode_request(encode_request(request)), snapshot, now)
        ):
            reply, _ = client.handle(response)
            replies.append(reply)
            server.receive(decode_request(encode_request(reply)), snapshot, now)
    return replies


def deliver(
    server: StreamCore, client: XdsClientCore, snapshot: ServerSnapshot
) -> list[DeltaRequest]:
    replies = []
    for response in wire(server.update(snapshot)):
        reply, _ = client.handle(response)
        replies.append(reply)
        server.receive(decode_request(encode_request(reply)), snapshot, 1.0)
    return replies


def test_state_equals_what_local_mode_builds_from_the_same_cluster() -> None:
    state = cluster("a", "b")
    client = XdsClientCore(node_id(), {"NODE_NAME": "node1"})
    assert not client.ready()
    replies = exchange(StreamCore("s1"), client, snapshot_of(state, MeshConfig()))
    assert all(r.error is None and r.response_nonce for r in replies)
    assert client.ready()
    local = translate(state)
    expected = state_from_snapshot(local.addresses, local.authorizations)
    got = client.state()
    assert got.workloads == expected.workloads
    assert got.services == expected.services
    assert got.policies == expected.policies


def test_changes_and_removals_update_the_state() -> None:
    server, client = StreamCore("s1"), XdsClientCore(node_id(), {})
    exchange(server, client, snapshot_of(cluster("a", "b"), MeshConfig()))
    replies = deliver(server, client, snapshot_of(cluster("b", "c"), MeshConfig()))
    assert [r.error for r in replies] == [None]
    assert set(client.state().workloads) == {UID.format("b"), UID.format("c")}


def test_invalid_push_is_nacked_and_the_previous_state_kept() -> None:
    server, client = StreamCore("s1"), XdsClientCore(node_id(), {})
    good = snapshot_of(cluster("a"), MeshConfig())
    exchange(server, client, good)
    before = client.state().workloads
    bad = wl.Address(workload=wl.Workload(uid=UID.format("x"), name="x", addresses=[b"\x01"]))
    also_new = wl.Address(
        workload=wl.Workload(uid=UID.format("y"), name="y", addresses=[b"\x0a\x00\x00\x09"])
    )
    messages: dict[str, dict[str, object]] = {
        ADDRESS_TYPE_URL: {UID.format("x"): bad, UID.format("y"): also_new},
        AUTHORIZATION_TYPE_URL: {},
    }
    (reply,) = deliver(server, client, ServerSnapshot.build(messages))
    assert reply.error is not None and UID.format("x") in reply.error
    assert "1-byte address" in reply.error
    assert client.state().workloads == before  # neither x nor y, and a still there
    assert client.types[ADDRESS_TYPE_URL].nacks == 1
    nack = server.types[ADDRESS_TYPE_URL].last_nack
    assert nack is not None and nack.error == reply.error


def test_reconnect_sends_initial_versions_and_gets_only_changes() -> None:
    client = XdsClientCore(node_id(), {})
    exchange(StreamCore("s1"), client, snapshot_of(cluster("a", "b"), MeshConfig()))
    (address_request, _) = client.initial_requests()
    assert set(address_request.initial_versions) == {UID.format("a"), UID.format("b")}
    assert address_request.node_id.startswith("ztunnel~")
    server = StreamCore("s2")
    exchange(server, client, snapshot_of(cluster("a", "c"), MeshConfig()))
    assert server.types[ADDRESS_TYPE_URL].resources_sent == 1  # only c
    assert set(client.state().workloads) == {UID.format("a"), UID.format("c")}


def test_backoff_grows_and_is_capped() -> None:
    import random

    backoff = Backoff(initial=0.2, maximum=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 2.0]


def test_endpoint_metadata_reads_the_token_each_time(tmp_path: Path) -> None:
    from ztunnel.xds.client import ControlPlaneEndpoint

    token = tmp_path / "t"
    token.write_text("one\n")
    endpoint = ControlPlaneEndpoint("127.0.0.1:15012", tmp_path / "root.pem", token)
    assert ("authorization", "Bearer one") in endpoint.metadata()
    token.write_text("two")
    assert ("authorization", "Bearer two") in endpoint.metadata()
    assert ("clusterid", "Kubernetes") in endpoint.metadata()
