"""The HBONE connection pool as pure state: keys, stream limits, idle expiry, failures."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztunnel.errors import PoolError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.proxy.pool import Checkout, ConnectionPool, ConnectionState, PoolKey

A = SpiffeId("cluster.local", "demo", "frontend")
B = SpiffeId("cluster.local", "demo", "backend")
KEY = PoolKey(A, B, ipaddress.ip_address("10.244.2.5"))


def test_tunnels_share_a_connection_up_to_the_stream_limit() -> None:
    pool = ConnectionPool(max_streams=3)
    first = pool.checkout(KEY)
    assert first.dial
    # Tunnels may queue on a connection that is still being dialed.
    assert pool.checkout(KEY) == Checkout(first.connection_id, dial=False)
    pool.connected(first.connection_id, now=0.0)
    assert pool.checkout(KEY) == Checkout(first.connection_id, dial=False)
    fourth = pool.checkout(KEY)
    assert fourth.dial and fourth.connection_id != first.connection_id
    assert [c.streams for c in pool.connections(KEY)] == [3, 1]


def test_default_limit_is_100_streams() -> None:
    pool = ConnectionPool()
    ids = {pool.checkout(KEY).connection_id for _ in range(100)}
    assert len(ids) == 1
    assert pool.checkout(KEY).dial


def test_different_keys_never_share() -> None:
    pool = ConnectionPool()
    keys = [
        KEY,
        PoolKey(B, B, KEY.address),
        PoolKey(A, A, KEY.address),
        PoolKey(A, B, ipaddress.ip_address("10.244.2.6")),
    ]
    ids = [pool.checkout(k).connection_id for k in keys]
    assert len(set(ids)) == 4


def test_peer_stream_limit_lowers_capacity() -> None:
    pool = ConnectionPool(max_streams=100)
    first = pool.checkout(KEY)
    pool.connected(first.connection_id, now=0.0, peer_max_streams=2)
    assert not pool.checkout(KEY).dial
    assert pool.checkout(KEY).dial


def test_idle_connections_close_after_the_timeout() -> None:
    pool = ConnectionPool(idle_timeout=30.0)
    checkout = pool.checkout(KEY)
    pool.connected(checkout.connection_id, now=0.0)
    assert pool.next_deadline() is None  # busy: nothing to expire
    pool.release(checkout.connection_id, now=10.0)
    assert pool.next_deadline() == 40.0
    assert pool.expire(39.9) == []
    # Reused before the deadline: the idle clock restarts when it is released again.
    again = pool.checkout(KEY)
    assert again.connection_id == checkout.connection_id
    pool.release(again.connection_id, now=50.0)
    assert pool.expire(79.0) == []
    (expired,) = pool.expire(80.0)
    assert expired.id == checkout.connection_id and len(pool) == 0
    assert pool.checkout(KEY).dial


def test_failure_removes_the_connection_and_reports_lost_tunnels() -> None:
    pool = ConnectionPool()
    checkout = pool.checkout(KEY)
    pool.checkout(KEY)
    assert pool.failed(checkout.connection_id) == 2
    assert len(pool) == 0
    assert pool.failed(checkout.connection_id) == 0
    pool.release(checkout.connection_id, now=1.0)  # late release of a dead connection: ignored
    assert pool.checkout(KEY).dial
    with pytest.raises(PoolError, match="no pooled connection"):
        pool.get(999)


def test_draining_connection_takes_no_new_tunnels_and_closes_when_empty() -> None:
    pool = ConnectionPool()
    checkout = pool.checkout(KEY)
    pool.connected(checkout.connection_id, now=0.0)
    pool.drain(checkout.connection_id)
    assert pool.get(checkout.connection_id).state is ConnectionState.DRAINING
    assert pool.checkout(KEY).dial
    assert pool.expire(1.0) == []
    pool.release(checkout.connection_id, now=2.0)
    assert [c.id for c in pool.expire(2.0)] == [checkout.connection_id]


def test_connecting_connection_never_expires() -> None:
    pool = ConnectionPool(idle_timeout=1.0)
    checkout = pool.checkout(KEY)
    pool.release(checkout.connection_id, now=0.0)
    assert pool.expire(100.0) == []


@given(
    st.lists(st.sampled_from(["checkout", "release", "fail", "expire"]), max_size=60),
    st.integers(1, 5),
)
def test_property_stream_counts_stay_within_limits(ops: list[str], limit: int) -> None:
    pool = ConnectionPool(max_streams=limit, idle_timeout=5.0)
    live: list[int] = []
    now = 0.0
    for op in ops:
        now += 1.0
        if op == "checkout":
            checkout = pool.checkout(KEY)
            if checkout.dial:
                pool.connected(checkout.connection_id, now)
            live.append(checkout.connection_id)
        elif op == "release" and live:
            pool.release(live.pop(0), now)
        elif op == "fail" and live:
            lost = live[0]
            pool.failed(lost)
            live = [c for c in live if c != lost]
        elif op == "expire":
            closed = {c.id for c in pool.expire(now)}
            assert not closed & set(live)
        for conn in pool.connections():
            assert 0 <= conn.streams <= conn.max_streams == limit
            assert conn.streams == live.count(conn.id)
