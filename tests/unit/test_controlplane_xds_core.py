"""The sans-IO delta-xDS server core: transcripts of requests, snapshots and responses."""

from __future__ import annotations

from api.messages import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from api.messages import workload as wl
from api.xds import DeltaRequest, DeltaResponse
from controlplane.workloadapi import resource_version
from controlplane.xds.core import Debouncer, ServerSnapshot, StreamCore, names_of

A = ADDRESS_TYPE_URL


def workload(name: str, ip: int = 1) -> object:
    return wl.Address(
        workload=wl.Workload(
            uid=f"Kubernetes//Pod/demo/{name}",
            name=name,
            namespace="demo",
            addresses=[bytes([10, 244, 1, ip])],
        )
    )


def snap(**pods: int) -> ServerSnapshot:
    return ServerSnapshot.build(
        {A: {f"Kubernetes//Pod/demo/{n}": workload(n, ip) for n, ip in pods.items()}}
    )


def uid(name: str) -> str:
    return f"Kubernetes//Pod/demo/{name}"


def subscribe(core: StreamCore, snapshot: ServerSnapshot, **initial: str) -> DeltaResponse:
    out = core.receive(
        DeltaRequest(A, node_id="ztunnel~node1", initial_versions=initial), snapshot, 0.0
    )
    assert len(out) == 1
    return out[0]


def test_versions_are_digests_of_the_message() -> None:
    s = snap(a=1)
    assert s.of(A)[uid("a")].version == resource_version(workload("a", 1))
    assert snap(a=1).versions == s.versions
    assert snap(a=2).versions != s.versions


def test_initial_wildcard_push_sends_everything() -> None:
    core = StreamCore("s1")
    first = subscribe(core, snap(a=1, b=2))
    assert names_of([first]) == [uid("a"), uid("b")]
    assert first.removed == ()
    assert first.nonce and first.system_version == snap(a=1, b=2).versions[A]
    assert core.node_id == "ztunnel~node1"


def test_first_request_is_answered_even_when_empty() -> None:
    core = StreamCore("s1")
    first = subscribe(core, ServerSnapshot())
    assert first.resources == () and first.removed == ()
    # and a type the server does not know is answered empty too
    out = core.receive(DeltaRequest("type.googleapis.com/x.Y"), ServerSnapshot(), 0.0)
    assert len(out) == 1 and out[0].resources == ()


def test_ack_records_version_and_sends_nothing() -> None:
    core = StreamCore("s1")
    s = snap(a=1)
    first = subscribe(core, s)
    assert core.receive(DeltaRequest(A, response_nonce=first.nonce), s, 1.0) == []
    state = core.types[A]
    assert state.acked_version == s.versions[A] and state.acks == 1 and not state.pending


def test_change_sends_only_the_changed_resource_and_removals() -> None:
    core = StreamCore("s1")
    first = subscribe(core, snap(a=1, b=2, c=3))
    core.receive(DeltaRequest(A, response_nonce=first.nonce), snap(a=1, b=2, c=3), 1.0)
    (push,) = core.update(snap(a=1, b=9, d=4))
    assert names_of([push]) == [uid("b"), uid("d")]
    assert push.removed == (uid("c"),)
    assert core.update(snap(a=1, b=9, d=4)) == []  # nothing changed, nothing sent


def test_nack_keeps_error_and_resends_on_next_change_only() -> None:
    core = StreamCore("s1")
    s1 = snap(a=1)
    first = subscribe(core, s1)
    core.receive(DeltaRequest(A, response_nonce=first.nonce), s1, 1.0)
    (bad,) = core.update(snap(a=1, b=2))
    out = core.receive(DeltaRequest(A, response_nonce=bad.nonce, error="b: bad address"), s1, 2.0)
    assert out == []  # no resend loop
    state = core.types[A]
    assert state.last_nack is not None and state.last_nack.error == "b: bad address"
    assert state.acked_version == s1.versions[A]  # still on the previous version
    assert uid("b") not in state.known
    # the next change carries the rejected resource again, with the new one
    (again,) = core.update(snap(a=1, b=2, c=3))
    assert names_of([again]) == [uid("b"), uid("c")]
    status = core.status()["types"]
    assert isinstance(status, dict) and status[A]["lastNack"]["error"] == "b: bad address"


def test_nack_of_a_removal_restores_what_the_client_holds() -> None:
    core = StreamCore("s1")
    first = subscribe(core, snap(a=1, b=2))
    core.receive(DeltaRequest(A, response_nonce=first.nonce), snap(a=1, b=2), 1.0)
    (removal,) = core.update(snap(a=1))
    assert removal.removed == (uid("b"),)
    core.receive(DeltaRequest(A, response_nonce=removal.nonce, error="no"), snap(a=1), 2.0)
    assert uid("b") in core.types[A].known
    (again,) = core.update(snap(a=1, c=3))
    assert again.removed == (uid("b"),)


def test_ack_of_a_later_nonce_settles_older_pipelined_pushes() -> None:
    core = StreamCore("s1")
    first = subscribe(core, snap(a=1))
    (p2,) = core.update(snap(a=2))
    (p3,) = core.update(snap(a=3))
    core.receive(DeltaRequest(A, response_nonce=p3.nonce), snap(a=3), 1.0)
    state = core.types[A]
    assert not state.pending and state.acked_version == snap(a=3).versions[A]
    # a late ACK of a settled nonce changes nothing
    core.receive(DeltaRequest(A, response_nonce=first.nonce), snap(a=3), 2.0)
    assert state.acked_version == snap(a=3).versions[A]
    assert p2.nonce != p3.nonce


def test_reconnect_with_initial_versions_sends_only_changes() -> None:
    s = snap(a=1, b=2, c=3)
    old = StreamCore("s1")
    first = subscribe(old, s)
    held = {r.name: r.version for r in first.resources}
    held["Kubernetes//Pod/demo/gone"] = "0123"
    new = StreamCore("s2")
    after = snap(a=1, b=7, c=3)
    push = subscribe(new, after, **held)
    assert names_of([push]) == [uid("b")]
    assert push.removed == ("Kubernetes//Pod/demo/gone",)
    # nothing changed at all: an empty answer, still sent
    quiet = subscribe(StreamCore("s3"), after, **{r.name: r.version for r in after.of(A).values()})
    assert quiet.resources == () and quiet.removed == ()


def test_types_are_independent() -> None:
    core = StreamCore("s1")
    s = ServerSnapshot.build({A: {uid("a"): workload("a")}, AUTHORIZATION_TYPE_URL: {}})
    subscribe(core, s)
    auth = core.receive(DeltaRequest(AUTHORIZATION_TYPE_URL), s, 0.0)
    assert len(auth) == 1 and auth[0].type_url == AUTHORIZATION_TYPE_URL
    assert auth[0].resources == ()
    assert set(core.types) == {A, AUTHORIZATION_TYPE_URL}


def test_explicit_subscriptions_and_unsubscribe() -> None:
    core = StreamCore("s1")
    s = snap(a=1, b=2)
    (first,) = core.receive(DeltaRequest(A, subscribe=(uid("a"), uid("zz"))), s, 0.0)
    assert names_of([first]) == [uid("a")]
    (more,) = core.receive(DeltaRequest(A, subscribe=(uid("b"),)), s, 0.0)
    assert names_of([more]) == [uid("b")]
    assert core.receive(DeltaRequest(A, unsubscribe=(uid("a"),)), s, 0.0) == []
    (push,) = core.update(snap(a=5, b=6))
    assert names_of([push]) == [uid("b")]


def test_debouncer_coalesces_and_caps_delay() -> None:
    d = Debouncer(quiet=0.02, max_delay=0.08)
    assert d.deadline() is None and not d.fire(0.0)
    d.changed(0.0)
    assert not d.fire(0.01)
    d.changed(0.015)
    assert d.deadline() == 0.035
    assert d.fire(0.035)
    assert d.deadline() is None
    # a steady stream of changes is still pushed within max_delay
    for i in range(10):
        d.changed(1.0 + i * 0.01)
    assert d.deadline() == 1.08
    assert d.fire(1.08)
