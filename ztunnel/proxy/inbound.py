"""Inbound decisions (15008 HBONE, 15006 plaintext) as pure functions.

The shell terminates mTLS (or accepts a captured plaintext connection), and asks
:func:`decide_hbone` / :func:`decide_plaintext` what to do: admit (connect to the
pod, from which source address) or refuse (with the HTTP status for HBONE, and the
``response_flags`` value for metrics). Policy sees the peer identity only from the
verified certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztunnel.identity.spiffe import SpiffeId
from ztunnel.metrics import FLAG_CONNECT, FLAG_DENY
from ztunnel.policy import ConnectionContext, Decision, authorize
from ztunnel.proxy.hbone import Authority, TunnelRequest
from ztunnel.state.proxy_state import ProxyState
from ztunnel.state.workload import IPAddress, Workload
from ztunnel.waypoint import bypass_refusal, waypoint_identities

# ztunnel's own listeners: a tunnel asking for one of them would loop through us.
PROXY_PORTS = frozenset({15001, 15006, 15008})


@dataclass(frozen=True)
class Admit:
    """Connect to the destination pod and relay."""

    destination: Workload
    """The local workload being reached."""
    upstream_ip: IPAddress
    upstream_port: int
    source_ip: IPAddress
    """The client address to connect from (``IP_TRANSPARENT``), so the pod sees its caller."""
    source_workload: Workload | None
    """The client workload, when known (telemetry)."""
    decision: Decision
    """The authorization outcome (its reason and the deciding policy, for the access log)."""


@dataclass(frozen=True)
class Refuse:
    """Refuse the connection: answer ``status`` (HBONE) or reset it (plaintext: ``None``)."""

    status: int | None
    flag: str
    reason: str


InboundDecision = Admit | Refuse


def _local_destination(
    state: ProxyState, ip: IPAddress | None, node: str, network: str
) -> Workload | str:
    if ip is None:
        return "the destination is a host name, not a workload address"
    workload = state.workload_by_ip(ip, network)
    if workload is None:
        return f"{ip} is not a known workload"
    if node and workload.node != node:
        where = f"{workload.namespace}/{workload.name}"
        return f"{ip} is workload {where} on node {workload.node!r}, not on this node"
    return workload


def client_address(
    state: ProxyState,
    request: TunnelRequest,
    peer_identity: SpiffeId,
    peer_ip: IPAddress,
    destination: Workload,
) -> IPAddress:
    """The address to present to the pod as its caller.

    ``forwarded: for=`` is believed only when the peer proved it may speak for that
    address: the peer's certificate is the identity of the workload at that address
    (its node's ztunnel), or the peer is the destination's waypoint. Otherwise the
    connection's own source address is used.
    """
    if request.forwarded_for:
        try:
            claimed = Authority.parse(request.forwarded_for).ip
        except ValueError:
            claimed = None
        if claimed is not None:
            owner = state.workload_by_ip(claimed, destination.network)
            if owner is not None and owner.identity == peer_identity:
                return claimed
            if peer_identity in waypoint_identities(state, destination):
                return claimed
    return peer_ip


def decide_hbone(
    state: ProxyState,
    request: TunnelRequest,
    *,
    peer_identity: SpiffeId,
    peer_ip: IPAddress,
    node: str,
    network: str = "",
) -> InboundDecision:
    """Admit or refuse an HBONE CONNECT from a peer whose certificate proved ``peer_identity``."""
    port = request.authority.port
    if port in PROXY_PORTS:
        return Refuse(503, FLAG_CONNECT, f"refusing a tunnel to ztunnel's own port {port}")
    destination = _local_destination(state, request.authority.ip, node, network)
    if isinstance(destination, str):
        return Refuse(400, FLAG_CONNECT, f"bad authority {request.authority}: {destination}")
    dst_ip = request.authority.ip
    assert dst_ip is not None  # _local_destination refused host names
    bypass = bypass_refusal(state, destination, peer_identity)
    if bypass is not None:
        return Refuse(401, FLAG_DENY, bypass)
    source_ip = client_address(state, request, peer_identity, peer_ip, destination)
    ctx = ConnectionContext(peer_identity, source_ip, dst_ip, port)
    decision = authorize(state.policies_for(destination), ctx)
    if not decision.allowed:
        return Refuse(401, FLAG_DENY, decision.reason)
    return Admit(
        destination=destination,
        upstream_ip=dst_ip,
        upstream_port=port,
        source_ip=source_ip,
        source_workload=state.workload_by_ip(source_ip, network),
        decision=decision,
    )


def decide_plaintext(
    state: ProxyState,
    *,
    source_ip: IPAddress,
    destination_ip: IPAddress,
    destination_port: int,
    node: str,
    network: str = "",
) -> InboundDecision:
    """Admit or refuse a captured plaintext connection to a local workload.

    Without a certificate there is no identity: PeerAuthentication STRICT (a DENY of
    connections without a principal) refuses it, PERMISSIVE lets policy decide.
    """
    destination = _local_destination(state, destination_ip, node, network)
    if isinstance(destination, str):
        return Refuse(None, FLAG_CONNECT, destination)
    if destination_port in PROXY_PORTS:
        return Refuse(
            None, FLAG_CONNECT, f"refusing plaintext to ztunnel's port {destination_port}"
        )
    bypass = bypass_refusal(state, destination, None)
    if bypass is not None:
        return Refuse(None, FLAG_DENY, bypass)
    ctx = ConnectionContext(None, source_ip, destination_ip, destination_port)
    decision = authorize(state.policies_for(destination), ctx)
    if not decision.allowed:
        return Refuse(None, FLAG_DENY, decision.reason)
    return Admit(
        destination=destination,
        upstream_ip=destination_ip,
        upstream_port=destination_port,
        source_ip=source_ip,
        source_workload=state.workload_by_ip(source_ip, network),
        decision=decision,
    )


__all__ = ["PROXY_PORTS", "Admit", "InboundDecision", "Refuse", "client_address"]
