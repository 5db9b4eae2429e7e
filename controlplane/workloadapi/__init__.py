"""The cluster's state in Istio's workload API: what the control plane sends ztunnel.

:func:`translate` is pure: a :class:`~controlplane.model.ClusterState` and the mesh
settings in, every ``istio.workload.Address`` and ``istio.security.Authorization``
resource out, keyed by its xDS resource name. :meth:`Snapshot.versions` and
:func:`diff` give what a delta push must carry between two snapshots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from api.messages import (
    ADDRESS_TYPE_URL,
    authorization_resource_name,
    service_resource_name,
    workload_resource_name,
)
from api.messages import workload as wl
from controlplane.model import (
    AuthorizationPolicy,
    ClusterState,
    PeerAuthentication,
    Pod,
    PolicyScope,
    Service,
    selector_matches,
)
from controlplane.workloadapi.authorization import authorization_message
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.workloadapi.peerauth import (
    converted_message,
    policies_for,
    static_strict_message,
    workload_policy_names,
)
from controlplane.workloadapi.services import ServiceIndex, is_served, service_message
from controlplane.workloadapi.waypoints import (
    Waypoint,
    WaypointIndex,
    allow_waypoint_message,
    allow_waypoint_name,
    gateway_address,
    ingress_principals,
    ingress_uses_waypoint,
    served_namespaces,
)
from controlplane.workloadapi.workloads import is_sent, workload_message

__all__ = [
    "Change",
    "MeshConfig",
    "Snapshot",
    "TranslationContext",
    "diff",
    "resource_version",
    "service_address",
    "translate",
]


@dataclass(frozen=True)
class Snapshot:
    """Every workload-API resource at one moment, by xDS resource name."""

    addresses: Mapping[str, Any] = field(default_factory=dict)
    """``istio.workload.Address`` by workload uid or ``<ns>/<hostname>``."""
    authorizations: Mapping[str, Any] = field(default_factory=dict)
    """``istio.security.Authorization`` by ``<ns>/<name>``."""

    def versions(self, type_url: str) -> dict[str, str]:
        """Resource name -> version (a digest of the message's deterministic encoding).

        Equal content gives equal versions across runs and processes, so a client's
        ``initial_resource_versions`` after a reconnect can be compared directly.
        """
        resources = self.addresses if type_url == ADDRESS_TYPE_URL else self.authorizations
        return {name: resource_version(msg) for name, msg in resources.items()}


@dataclass(frozen=True)
class Change:
    """What a delta push of one type carries: resources to send and names removed."""

    updated: tuple[str, ...]
    removed: tuple[str, ...]


def resource_version(message: Any) -> str:
    """A short, stable digest of a message's deterministic serialization."""
    data: bytes = message.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:16]


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> Change:
    """Names whose version is new or changed, and names that are gone (both sorted)."""
    updated = tuple(sorted(n for n, v in new.items() if old.get(n) != v))
    removed = tuple(sorted(n for n in old if n not in new))
    return Change(updated, removed)


def translate(state: ClusterState, mesh: MeshConfig | None = None) -> Snapshot:
    """Builds every resource istiod would send ztunnel for this cluster state."""
    mesh = mesh or MeshConfig()
    context = TranslationContext.of(state, mesh)
    addresses: dict[str, Any] = {}
    for service in context.services:
        name, address = service_address(service, mesh, context.waypoints)
        addresses[name] = address
    for pod in state.pods.values():
        if is_sent(pod):
            name, address = context.workload_address(pod)
            addresses[name] = address
    return Snapshot(addresses, context.authorizations)


def service_address(
    service: Service, mesh: MeshConfig, waypoints: WaypointIndex | None = None
) -> tuple[str, Any]:
    """A service's resource name and its ``Address`` message (with its waypoint, if any)."""
    hostname = mesh.service_hostname(service.namespace, service.name)
    waypoint = gateway_address(waypoints.for_service(service).waypoint, mesh) if waypoints else None
    ingress = waypoints is not None and ingress_uses_waypoint(waypoints.state, service)
    return service_resource_name(service.namespace, hostname), wl.Address(
        service=service_message(service, mesh, waypoint, ingress_use_waypoint=ingress)
    )


@dataclass(frozen=True)
class TranslationContext:
    """What every workload's translation needs besides its pod: built once per state.

    Its cost grows with policies and services, not with pods, so an incremental
    translation (:mod:`controlplane.workloadapi.incremental`) can rebuild it on every
    change and re-translate only the pods the change touches.
    """

    state: ClusterState
    mesh: MeshConfig
    authorizations: Mapping[str, Any]
    """Every ``istio.security.Authorization`` by resource name."""
    services: tuple[Service, ...]
    """The services that are sent (not ExternalName)."""
    index: ServiceIndex
    peer: tuple[PeerAuthentication, ...]
    converted: Mapping[tuple[str, str], Any]
    """Converted port-level PeerAuthentication messages by the policy's key."""
    selector_policies: tuple[AuthorizationPolicy, ...]
    """Sent policies with a workload selector, by key."""
    waypoints: WaypointIndex
    """The waypoints and binding resolution (``Service.waypoint``, ``Workload.waypoint``)."""

    @classmethod
    def of(cls, state: ClusterState, mesh: MeshConfig) -> TranslationContext:
        """The context of ``state``: authorizations, service index, peer policies."""
        root = mesh.root_namespace
        authorizations: dict[str, Any] = {}
        for policy in state.authorization_policies.values():
            message = authorization_message(policy, root)
            if message is not None:
                authorizations[authorization_resource_name(policy.namespace, policy.name)] = message
        peer = tuple(state.peer_authentications.values())
        converted: dict[tuple[str, str], Any] = {}
        if peer:
            authorizations[authorization_resource_name(root, "istio_converted_static_strict")] = (
                static_strict_message(root)
            )
        for pa in peer:
            if pa.scope(root) is not PolicyScope.WORKLOAD or pa.namespace == root:
                continue
            inherited = policies_for(pa.namespace, None, peer, root).inherited_mode()
            message = converted_message(pa, inherited)
            if message is not None:
                converted[pa.key] = message
                authorizations[authorization_resource_name(pa.namespace, message.name)] = message
        services = tuple(s for s in state.services.values() if is_served(s))
        waypoints = WaypointIndex(state)
        ingress = ingress_principals(state, mesh)
        for namespace, waypoint in served_namespaces(state, waypoints):
            message = allow_waypoint_message(waypoint, namespace, mesh, ingress)
            authorizations[authorization_resource_name(namespace, message.name)] = message
        selector_policies = sorted(
            (
                p
                for p in state.authorization_policies.values()
                if p.selector is not None
                and authorization_resource_name(p.namespace, p.name) in authorizations
            ),
            key=lambda p: p.key,
        )
        return cls(
            state,
            mesh,
            authorizations,
            services,
            ServiceIndex(services),
            peer,
            converted,
            tuple(selector_policies),
            waypoints,
        )

    def _service_waypoint(self, service: Service) -> Waypoint | None:
        return self.waypoints.for_service(service).waypoint

    def workload_address(self, pod: Pod) -> tuple[str, Any]:
        """A sent pod's resource name and its ``Address`` message."""
        root = self.mesh.root_namespace
        # a selector policy in the root namespace selects workloads of every namespace
        names = [
            authorization_resource_name(p.namespace, p.name)
            for p in self.selector_policies
            if p.namespace in (pod.namespace, root)
            and selector_matches(p.selector or {}, pod.labels)
        ]
        levels = policies_for(pod.namespace, pod.labels, self.peer, root)
        names += workload_policy_names(levels, self.converted, root)
        selecting = self.index.selecting(pod)
        own = self.waypoints.for_pod(pod).waypoint
        served_by = {w.key: w for w in (own, *map(self._service_waypoint, selecting)) if w}
        names += [
            authorization_resource_name(pod.namespace, allow_waypoint_name(w))
            for _, w in sorted(served_by.items())
        ]
        waypoint = gateway_address(own, self.mesh)
        message = workload_message(
            pod,
            self.state.namespace_of(pod),
            selecting,
            names,
            self.mesh,
            waypoint=waypoint,
            waypoint_pod=self.waypoints.is_waypoint_pod(pod),
        )
        return workload_resource_name(message.uid), wl.Address(workload=message)
