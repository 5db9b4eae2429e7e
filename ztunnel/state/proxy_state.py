"""ztunnel's view of the mesh: lookups, destination resolution, applicable policies.

:class:`ProxyState` is an immutable snapshot built from workloads, services and
policies (from the local state file or xDS); a new snapshot replaces it on every
update. Load-balancing choices keep their own small mutable state in
:class:`LoadBalancer`, so that the snapshot stays shareable.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ztunnel.state.security import Authorization, Scope
from ztunnel.state.workload import (
    HealthPolicy,
    IPAddress,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)


class Strategy(enum.Enum):
    """How an endpoint is picked among a service's healthy endpoints."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"


@dataclass(frozen=True)
class Upstream:
    """Where a connection goes: a workload, the address and port to reach it on."""

    workload: Workload
    """The chosen endpoint."""
    address: IPAddress
    """The endpoint's IP (the ``:authority`` host of an HBONE CONNECT)."""
    port: int
    """The target port on the endpoint."""
    service: Service | None = None
    """The service the original destination was, if it was a VIP."""

    @property
    def uses_hbone(self) -> bool:
        """Whether the endpoint is reached through HBONE rather than plain TCP."""
        return self.workload.tunnel_protocol is TunnelProtocol.HBONE


@dataclass(frozen=True)
class Passthrough:
    """The destination is outside the mesh: forward as plain TCP, unchanged."""

    address: IPAddress
    port: int


@dataclass(frozen=True)
class NoHealthyEndpoint:
    """The destination is a known service, but no endpoint can take the connection."""

    service: Service
    port: int
    reason: str


Resolution = Upstream | Passthrough | NoHealthyEndpoint


class LoadBalancer:
    """Picks among candidates; round-robin counters per service, or an injected RNG."""

    def __init__(
        self, strategy: Strategy = Strategy.ROUND_ROBIN, rng: random.Random | None = None
    ) -> None:
        self.strategy = strategy
        # Seeded by the caller in tests; a fresh unseeded Random in production.
        self._rng = rng or random.Random()  # noqa: S311 - load balancing, not cryptography
        self._next: dict[str, int] = {}

    def pick(self, key: str, candidates: tuple[Workload, ...]) -> Workload:
        """Choose one of ``candidates`` (non-empty, in a stable order) for ``key``."""
        if self.strategy is Strategy.RANDOM:
            return self._rng.choice(candidates)
        index = self._next.get(key, 0)
        self._next[key] = index + 1
        return candidates[index % len(candidates)]


def _ip(text: IPAddress | str) -> IPAddress:
    return text if not isinstance(text, str) else ipaddress.ip_address(text)


class ProxyState:
    """An immutable snapshot of workloads, services and policies, indexed for lookups."""

    def __init__(
        self,
        workloads: Iterable[Workload] = (),
        services: Iterable[Service] = (),
        policies: Iterable[Authorization] = (),
    ) -> None:
        self.workloads: Mapping[str, Workload] = {w.uid: w for w in workloads}
        self.services: Mapping[str, Service] = {s.key: s for s in services}
        self.policies: Mapping[str, Authorization] = {p.key: p for p in policies}
        self._by_ip: dict[tuple[str, IPAddress], Workload] = {}
        for workload in sorted(self.workloads.values(), key=lambda w: w.uid):
            for address in workload.addresses:
                self._by_ip.setdefault((workload.network, address), workload)
        self._by_vip: dict[tuple[str, IPAddress], Service] = {}
        for service in self.services.values():
            for vip in service.addresses:
                self._by_vip[(vip.network, vip.address)] = service
        endpoints: dict[str, list[Workload]] = {}
        for workload in sorted(self.workloads.values(), key=lambda w: w.uid):
            for key in workload.services:
                endpoints.setdefault(key, []).append(workload)
        self._endpoints = {k: tuple(v) for k, v in endpoints.items()}
        # First service per hostname, in the order services were given (as a scan finds it).
        self._by_hostname: dict[str, Service] = {}
        for service in self.services.values():
            self._by_hostname.setdefault(service.hostname, service)
        self._global_policies: list[Authorization] = []
        self._namespace_policies: dict[str, list[Authorization]] = {}
        for policy in self.policies.values():
            if policy.scope is Scope.GLOBAL:
                self._global_policies.append(policy)
            elif policy.scope is Scope.NAMESPACE:
                self._namespace_policies.setdefault(policy.namespace, []).append(policy)
        # Per workload object: the snapshot never changes, and every connection asks.
        self._policies_memo: dict[int, tuple[Workload, tuple[Authorization, ...]]] = {}

    def workload_by_ip(self, address: IPAddress | str, network: str = "") -> Workload | None:
        """The workload that owns ``address`` on ``network``, if any."""
        return self._by_ip.get((network, _ip(address)))

    def service_by_vip(self, address: IPAddress | str, network: str = "") -> Service | None:
        """The service with VIP ``address``, if any."""
        return self._by_vip.get((network, _ip(address)))

    def endpoints(self, service: Service) -> tuple[Workload, ...]:
        """Every workload backing ``service``, healthy or not, ordered by uid."""
        return self._endpoints.get(service.key, ())

    def target_port(self, service: Service, workload: Workload, service_port: int) -> int:
        """The port on ``workload`` for ``service_port`` of ``service``.

        The workload's own ``services`` map wins, then the service's target port,
        then the service port itself (a service declaring no mapping).
        """
        from_workload = workload.target_port(service.key, service_port)
        if from_workload:
            return from_workload
        declared = service.port(service_port)
        if declared is not None and declared.target_port:
            return declared.target_port
        return service_port

    def resolve(
        self,
        address: IPAddress | str,
        port: int,
        balancer: LoadBalancer,
        network: str = "",
    ) -> Resolution:
        """Where a connection to ``address:port`` goes.

        A service VIP resolves to one of its healthy endpoints (per the service's
        health policy), with the port mapped to that endpoint's target port; a
        workload IP is taken as is; anything else is passthrough.
        """
        ip = _ip(address)
        service = self.service_by_vip(ip, network)
        if service is not None:
            return self._resolve_service(service, port, balancer)
        workload = self.workload_by_ip(ip, network)
        if workload is not None:
            return Upstream(workload=workload, address=ip, port=port)
        return Passthrough(address=ip, port=port)

    def _resolve_service(self, service: Service, port: int, balancer: LoadBalancer) -> Resolution:
        if service.ports and service.port(port) is None:
            return NoHealthyEndpoint(service, port, f"service {service.key} has no port {port}")
        allow_all = (
            service.load_balancing is not None
            and service.load_balancing.health_policy is HealthPolicy.ALLOW_ALL
        )
        candidates = tuple(
            w
            for w in self.endpoints(service)
            if w.addresses and (allow_all or w.status is WorkloadStatus.HEALTHY)
        )
        if not candidates:
            return NoHealthyEndpoint(
                service, port, f"service {service.key} has no healthy endpoint"
            )
        chosen = balancer.pick(f"{service.key}:{port}", candidates)
        return Upstream(
            workload=chosen,
            address=chosen.addresses[0],
            port=self.target_port(service, chosen, port),
            service=service,
        )

    def policies_for(self, workload: Workload) -> tuple[Authorization, ...]:
        """The policies that apply to ``workload``, ordered by key.

        GLOBAL ones always, NAMESPACE ones of its namespace, WORKLOAD_SELECTOR ones
        only when the workload names them (a name not in the state is ignored).
        """
        hit = self._policies_memo.get(id(workload))
        if hit is not None and hit[0] is workload:
            return hit[1]
        chosen = [*self._global_policies, *self._namespace_policies.get(workload.namespace, ())]
        for key in set(workload.authorization_policies):
            policy = self.policies.get(key)
            if policy is not None and policy.scope is Scope.WORKLOAD_SELECTOR:
                chosen.append(policy)
        answer = tuple(sorted(chosen, key=lambda p: p.key))
        if len(self._policies_memo) > 2 * len(self.workloads) + 64:
            self._policies_memo.clear()  # asked about workloads not in this snapshot
        # The workload is kept with the answer: its id is only reused once it is gone.
        self._policies_memo[id(workload)] = (workload, answer)
        return answer

    def service_by_hostname(self, hostname: str) -> Service | None:
        """The service named ``hostname`` (the first given, should several share it)."""
        return self._by_hostname.get(hostname)
