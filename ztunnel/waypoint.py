"""Waypoints as ztunnel sees them: which one a destination has, who it is, and bypasses.

Pure functions over a :class:`~ztunnel.state.proxy_state.ProxyState`, as Istio's
ztunnel decides:

- outbound, traffic addressed to a Service goes to the Service's waypoint; traffic
  addressed to a pod (or to a Service without one) to the pod's own waypoint. The
  tunnel goes to the waypoint's workload on its HBONE port with the original
  destination as ``:authority`` and expects the waypoint's identity. A waypoint is
  never sent to itself.
- inbound, a workload served by a waypoint (its own, or one of its Services') accepts
  only connections whose verified peer is that waypoint: anything else bypassed it.
"""

from __future__ import annotations

import contextlib

from ztunnel.errors import InvalidSpiffeIdError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.proxy_state import LoadBalancer, ProxyState, Upstream
from ztunnel.state.security import Action, StringMatchKind
from ztunnel.state.workload import GatewayAddress, NamespacedHostname, Service, Workload

ALLOW_WAYPOINT_PREFIX = "istio_allow_waypoint_"
"""Name prefix of the implicit policies naming who may reach a waypoint-served workload."""
BYPASS_REASON = "bypassed waypoint"
"""The start of the reason logged and counted for a connection refused as a bypass."""


def waypoint_of(upstream: Upstream) -> GatewayAddress | None:
    """The waypoint of a resolved destination: its Service's, else its workload's."""
    if upstream.service is not None and upstream.service.waypoint is not None:
        return upstream.service.waypoint
    return upstream.workload.waypoint


def is_service_waypoint(upstream: Upstream) -> bool:
    """Whether the destination's waypoint is its Service's (not its workload's own)."""
    return upstream.service is not None and upstream.service.waypoint is not None


def _gateway_service(state: ProxyState, gateway: GatewayAddress) -> Service | None:
    dest = gateway.destination
    if isinstance(dest, NamespacedHostname):
        return state.services.get(f"{dest.namespace}/{dest.hostname}")
    return state.service_by_vip(dest.address, dest.network)


def waypoint_workloads(state: ProxyState, gateway: GatewayAddress) -> tuple[Workload, ...]:
    """The workloads that run a waypoint (its Service's endpoints, or the one at its IP)."""
    service = _gateway_service(state, gateway)
    if service is not None:
        return tuple(w for w in state.endpoints(service) if w.addresses)
    dest = gateway.destination
    if isinstance(dest, NamespacedHostname):
        return ()
    workload = state.workload_by_ip(dest.address, dest.network)
    return (workload,) if workload is not None else ()


def describe(gateway: GatewayAddress) -> str:
    """A waypoint's address for messages (``ns/hostname`` or ``network/ip``)."""
    dest = gateway.destination
    if isinstance(dest, NamespacedHostname):
        return f"{dest.namespace}/{dest.hostname}"
    return str(dest.address) if not dest.network else str(dest)


def pick_waypoint(
    state: ProxyState, gateway: GatewayAddress, balancer: LoadBalancer
) -> Workload | str:
    """The waypoint workload to tunnel to, or why there is none (the caller refuses)."""
    service = _gateway_service(state, gateway)
    if service is not None:
        if service.ports and service.port(gateway.hbone_mtls_port) is None:
            return f"waypoint service {service.key} has no port {gateway.hbone_mtls_port}"
        endpoints = waypoint_workloads(state, gateway)
        if not endpoints:
            return f"waypoint {service.key} has no endpoint (is its pod running?)"
        return balancer.pick(f"waypoint:{service.key}", endpoints)
    found = waypoint_workloads(state, gateway)
    if found:
        return found[0]
    return f"waypoint address {describe(gateway)} is not a known workload or service"


def is_waypoint_itself(state: ProxyState, source: Workload, gateway: GatewayAddress) -> bool:
    """Whether ``source`` is one of the waypoint's own workloads (never redirected)."""
    return any(w.uid == source.uid for w in waypoint_workloads(state, gateway))


def serving_waypoints(state: ProxyState, destination: Workload) -> list[GatewayAddress]:
    """The waypoints serving a workload: its own and those of the Services it backs."""
    gateways = [destination.waypoint] if destination.waypoint is not None else []
    for key in sorted(destination.services):
        service = state.services.get(key)
        if service is not None and service.waypoint is not None:
            gateways.append(service.waypoint)
    return gateways


def waypoint_identities(state: ProxyState, destination: Workload) -> set[SpiffeId]:
    """Identities of the waypoints serving ``destination`` (empty when it has none)."""
    return {
        w.identity
        for gateway in serving_waypoints(state, destination)
        for w in waypoint_workloads(state, gateway)
    }


def _exact_principals(state: ProxyState, destination: Workload) -> set[SpiffeId]:
    """Identities the control plane lets reach a waypoint-served workload directly.

    They are the exact principals of the implicit ``istio_allow_waypoint_*`` ALLOW
    policies the workload lists (the waypoint's, and the mesh's ingress gateways').
    """
    out: set[SpiffeId] = set()
    for key in destination.authorization_policies:
        policy = state.policies.get(key)
        if policy is None or not policy.name.startswith(ALLOW_WAYPOINT_PREFIX):
            continue
        if policy.action is not Action.ALLOW:
            continue
        for rule in policy.rules:
            for clause in rule.clauses:
                for match in clause.matches:
                    for principal in match.principals:
                        if principal.kind is StringMatchKind.EXACT:
                            with contextlib.suppress(InvalidSpiffeIdError):
                                out.add(SpiffeId.parse(f"spiffe://{principal.value}"))
    return out


def bypass_refusal(
    state: ProxyState, destination: Workload, peer_identity: SpiffeId | None
) -> str | None:
    """Why a connection to ``destination`` bypassed its waypoint (None: it did not).

    A destination without a waypoint accepts anyone (policy decides). One with a
    waypoint accepts only that waypoint's identity, and the peers the control plane
    names in the implicit ``istio_allow_waypoint_*`` policies the workload lists (the
    mesh's ingress gateways); when the waypoint cannot be resolved (no workload known
    yet) it accepts only those: it fails closed.
    """
    gateways = serving_waypoints(state, destination)
    if not gateways:
        return None
    allowed = waypoint_identities(state, destination) | _exact_principals(state, destination)
    if peer_identity is not None and peer_identity in allowed:
        return None
    via = ", ".join(sorted({describe(g) for g in gateways}))
    expected = ", ".join(sorted(str(i) for i in allowed)) or "an unresolved waypoint"
    who = str(peer_identity) if peer_identity is not None else "a peer without identity"
    return (
        f"{BYPASS_REASON}: {destination.namespace}/{destination.name} is served by the "
        f"waypoint at {via} ({expected}); {who} did not come through it"
    )


__all__ = [
    "BYPASS_REASON",
    "bypass_refusal",
    "describe",
    "is_service_waypoint",
    "is_waypoint_itself",
    "pick_waypoint",
    "serving_waypoints",
    "waypoint_identities",
    "waypoint_of",
    "waypoint_workloads",
]
