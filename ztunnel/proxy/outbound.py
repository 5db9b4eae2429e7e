"""Outbound decisions (15001): where a captured connection goes, as a pure function.

The shell accepts a captured connection, reads its original destination, and asks
:func:`plan_outbound`; the answer says whether to refuse it, pass it through as
plain TCP, or carry it in an HBONE tunnel (with the pool key, the CONNECT request
and the identities the peer may present).
"""

from __future__ import annotations

import random
import types
from collections.abc import Mapping
from dataclasses import dataclass

from ztunnel import waypoint
from ztunnel.errors import InvalidSpiffeIdError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.metrics import FLAG_CONNECT
from ztunnel.proxy.hbone import Authority, TunnelRequest
from ztunnel.proxy.pool import PoolKey
from ztunnel.state.proxy_state import (
    LoadBalancer,
    NoHealthyEndpoint,
    Passthrough,
    ProxyState,
    Upstream,
)
from ztunnel.state.workload import (
    HBONE_PORT,
    IPAddress,
    Service,
    Workload,
    WorkloadType,
)


@dataclass(frozen=True)
class Refuse:
    """Reset the captured connection; count it with ``flag``."""

    reason: str
    flag: str = FLAG_CONNECT


@dataclass(frozen=True)
class PlainTcp:
    """Connect to ``address:port`` as is (outside the mesh, or a non-HBONE workload)."""

    address: IPAddress
    port: int
    workload: Workload | None = None
    service: Service | None = None


@dataclass(frozen=True)
class Tunnel:
    """Carry the connection in an HBONE tunnel."""

    pool_key: PoolKey
    """Which pooled connection may carry it (source cert, peer identity, peer address)."""
    request: TunnelRequest
    """The CONNECT to send."""
    expected_identities: frozenset[SpiffeId]
    """Identities the peer may present (workload, service SANs, or the waypoint's)."""
    destination: Workload
    """The workload the tunnel ends at (the endpoint, or the waypoint)."""
    service: Service | None = None
    """The service the client addressed, if any."""
    via_waypoint: bool = False
    """Whether the tunnel goes to a waypoint rather than the endpoint."""


OutboundPlan = Refuse | PlainTcp | Tunnel


def new_traceparent(rng: random.Random) -> str:
    """A fresh W3C ``traceparent`` (random trace and span ids, not sampled)."""
    trace = rng.getrandbits(128) or 1
    span = rng.getrandbits(64) or 1
    return f"00-{trace:032x}-{span:016x}-00"


_KIND_NAMES = {
    WorkloadType.DEPLOYMENT: "deployment",
    WorkloadType.CRONJOB: "cronjob",
    WorkloadType.POD: "pod",
    WorkloadType.JOB: "job",
}
_BAGGAGE_MEMO: dict[int, tuple[Workload, Mapping[str, str]]] = {}
"""Per workload object (held, so its id is not reused): its baggage, asked for on every
connection it makes. A state update brings new objects; the memo starts over when full."""
_BAGGAGE_MEMO_SIZE = 4096


def source_baggage(workload: Workload) -> Mapping[str, str]:
    """Istio's baggage describing the source workload (empty values are skipped later)."""
    hit = _BAGGAGE_MEMO.get(id(workload))
    if hit is not None and hit[0] is workload:
        return hit[1]
    kind = _KIND_NAMES[workload.workload_type]
    baggage = types.MappingProxyType(
        {
            "k8s.cluster.name": workload.cluster_id,
            "k8s.namespace.name": workload.namespace,
            f"k8s.{kind}.name": workload.workload_name or workload.name,
            "service.name": workload.canonical_name,
            "service.version": workload.canonical_revision,
            "cloud.region": workload.locality.region,
            "cloud.availability_zone": workload.locality.zone,
        }
    )
    if len(_BAGGAGE_MEMO) >= _BAGGAGE_MEMO_SIZE:
        _BAGGAGE_MEMO.clear()
    _BAGGAGE_MEMO[id(workload)] = (workload, baggage)
    return baggage


def _san_identities(service: Service | None) -> set[SpiffeId]:
    out: set[SpiffeId] = set()
    for san in service.subject_alt_names if service else ():
        try:
            out.add(SpiffeId.parse(san))
        except InvalidSpiffeIdError:
            continue  # a non-SPIFFE SAN cannot match a workload certificate
    return out


def _waypoint_workload(
    state: ProxyState, source: Workload, upstream: Upstream, balancer: LoadBalancer
) -> Workload | Refuse | None:
    gateway = waypoint.waypoint_of(upstream)
    if gateway is None or waypoint.is_waypoint_itself(state, source, gateway):
        return None
    chosen = waypoint.pick_waypoint(state, gateway, balancer)
    return Refuse(chosen) if isinstance(chosen, str) else chosen


def _request(
    authority: Authority,
    source: Workload,
    client: Authority,
    service: Service | None,
    rng: random.Random,
) -> TunnelRequest:
    return TunnelRequest(
        authority=authority,
        forwarded_for=str(client),
        forwarded_host=service.hostname if service else None,
        baggage=source_baggage(source),
        traceparent=new_traceparent(rng),
    )


def _tunnel(
    state: ProxyState,
    balancer: LoadBalancer,
    *,
    source: Workload,
    client: Authority,
    original: Authority,
    resolved: Upstream,
    rng: random.Random,
    hbone_port: int,
) -> OutboundPlan:
    via = _waypoint_workload(state, source, resolved, balancer)
    if isinstance(via, Refuse):
        return via
    if via is not None:
        # Through a Service's waypoint the authority keeps the original VIP and port,
        # so that the waypoint can route it; a workload's waypoint gets the pod's.
        authority = (
            original
            if waypoint.is_service_waypoint(resolved)
            else Authority(str(resolved.address), resolved.port)
        )
        return Tunnel(
            pool_key=PoolKey(source.identity, via.identity, via.addresses[0], hbone_port),
            request=_request(authority, source, client, resolved.service, rng),
            expected_identities=frozenset({via.identity}),
            destination=via,
            service=resolved.service,
            via_waypoint=True,
        )
    if not resolved.uses_hbone:
        return PlainTcp(resolved.address, resolved.port, resolved.workload, resolved.service)
    target = resolved.workload
    return Tunnel(
        pool_key=PoolKey(source.identity, target.identity, resolved.address, hbone_port),
        request=_request(
            Authority(str(resolved.address), resolved.port), source, client, resolved.service, rng
        ),
        expected_identities=frozenset({target.identity} | _san_identities(resolved.service)),
        destination=target,
        service=resolved.service,
    )


def plan_outbound(
    state: ProxyState,
    balancer: LoadBalancer,
    *,
    source_ip: IPAddress,
    source_port: int,
    destination_ip: IPAddress,
    destination_port: int,
    node: str,
    rng: random.Random,
    network: str = "",
    hbone_port: int = HBONE_PORT,
) -> OutboundPlan:
    """Decide where a connection captured from ``source_ip`` to the original destination goes.

    Unknown sources are refused (only this node's workloads are proxied); destinations
    outside the mesh pass through as plain TCP; a service VIP resolves to an endpoint;
    HBONE workloads are reached through a tunnel to ``<podIP>:15008`` (or their
    waypoint's), other workloads directly.
    """
    source = state.workload_by_ip(source_ip, network)
    if source is None or (node and source.node != node):
        return Refuse(
            f"source {source_ip} is not a workload on node {node or '?'}: refusing to proxy it"
        )
    resolved = state.resolve(destination_ip, destination_port, balancer, network)
    if isinstance(resolved, Passthrough):
        return PlainTcp(resolved.address, resolved.port)
    if isinstance(resolved, NoHealthyEndpoint):
        return Refuse(resolved.reason)
    client = Authority(str(source_ip), source_port)
    original = Authority(str(destination_ip), destination_port)
    return _tunnel(
        state,
        balancer,
        source=source,
        client=client,
        original=original,
        resolved=resolved,
        rng=rng,
        hbone_port=hbone_port,
    )
