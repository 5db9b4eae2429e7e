"""Hypothesis: whatever the sequence of snapshots, ACKs, NACKs and reconnects, the
server core's idea of what the client holds matches what the client core holds, and
one good push after the storm leaves the client exactly on the snapshot.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from api.messages import ADDRESS_TYPE_URL
from api.messages import workload as wl
from api.xds import (
    DeltaRequest,
    DeltaResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from controlplane.xds.core import ServerSnapshot, StreamCore
from ztunnel.xds.client import XdsClientCore

A = ADDRESS_TYPE_URL
NAMES = [f"Kubernetes//Pod/demo/p{i}" for i in range(6)]


def build(contents: dict[str, int], bad: frozenset[str]) -> ServerSnapshot:
    """Workloads with address 10.0.0.<n>; names in ``bad`` get a 3-byte address."""
    messages = {
        name: wl.Address(
            workload=wl.Workload(
                uid=name,
                name=name.rsplit("/", 1)[-1],
                namespace="demo",
                addresses=[bytes([10, 0, 0]) if name in bad else bytes([10, 0, 0, n])],
            )
        )
        for name, n in contents.items()
    }
    return ServerSnapshot.build({A: messages})


snapshots = st.tuples(
    st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3), max_size=6),
    st.frozensets(st.sampled_from(NAMES), max_size=2),
)
steps = st.lists(st.one_of(snapshots, st.just("reconnect")), min_size=1, max_size=12)


class Pair:
    """A server stream and a client, exchanging real encoded messages."""

    def __init__(self, snapshot: ServerSnapshot, client: XdsClientCore | None = None) -> None:
        self.client = client or XdsClientCore("ztunnel~x", {}, types=(A,))
        self.server = StreamCore("s")
        for request in self.client.initial_requests():
            self.send(self.server.receive(_rt(request), snapshot, 0.0), snapshot)

    def send(self, responses: list[DeltaResponse], snapshot: ServerSnapshot) -> None:
        for response in responses:
            reply, _ = self.client.handle(decode_response(encode_response(response)))
            self.server.receive(_rt(reply), snapshot, 0.0)


def _rt(request: DeltaRequest) -> DeltaRequest:
    return decode_request(encode_request(request))


def held(client: XdsClientCore) -> dict[str, str]:
    return {n: v for n, (v, _) in client.types[A].resources.items()}


@settings(max_examples=100, deadline=None)
@given(
    first=snapshots, script=steps, final=st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3))
)
def test_server_view_matches_client_and_converges(
    first: tuple[dict[str, int], frozenset[str]],
    script: list[tuple[dict[str, int], frozenset[str]] | str],
    final: dict[str, int],
) -> None:
    snapshot = build(*first)
    pair = Pair(snapshot)
    for step in script:
        if isinstance(step, str):
            pair = Pair(snapshot, pair.client)
        else:
            snapshot = build(*step)
            pair.send(pair.server.update(snapshot), snapshot)
        assert pair.server.types[A].known == held(pair.client)
    good = build(final, frozenset())
    pair.send(pair.server.update(good), good)
    expected = {n: r.version for n, r in good.of(A).items()}
    assert held(pair.client) == expected == pair.server.types[A].known
    assert set(pair.client.state().workloads) == set(final)
