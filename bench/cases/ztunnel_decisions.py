"""ztunnel's per-connection decisions as the mesh grows: do they stay flat?

Every new connection asks ztunnel's state where it goes (outbound: the source, the
service VIP, one endpoint, the identities to expect, the CONNECT) and, on the other
node, whether it may (inbound: the destination, the caller's address, the policies
that apply, the service for telemetry). A scan of every policy or service per
connection is invisible in a ten-pod lab and costs milliseconds in a real cluster,
so this case times the very functions the proxy calls, in-process (no root, no
lab), on states of growing size, the smallest as the baseline: a ratio near 1 means
the decision does not depend on the size of the mesh.

Each state has N pods in namespaces of ten, N services (one endpoint pod each, a VIP
and a port), and N policies, one per pod in its namespace: a quarter namespace-scoped
ALLOWs, a quarter selector-bound ALLOWs naming pods, half DENYs on another port, plus
one mesh-wide DENY in the root namespace; so every namespace holds the same mix, and
the connection measured (pod 1 -> the service of the pod in the middle, allowed)
meets the same policies whatever N is: only the size of the state changes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar

from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, register
from bench.errors import MeasurementError

if TYPE_CHECKING:
    from ztunnel.proxy.outbound import OutboundPlan

SIZES = {"10-pods": 10, "1000-pods": 1000, "5000-pods": 5000}
"""Variants: pods (and services, and policies) in the state."""
BATCH = 200
"""Decisions per timed batch (the figure is the median batch's mean)."""
MAX_BATCHES = 2000
"""Bound on batches per measurement, whatever the duration."""


def _us(what: str) -> Metric:
    return Metric("decision", "us", higher_is_better=False, description=what)


def _ip(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.200.0.0")) + index + 1)


def _vip(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.0.0")) + index + 1)


class _Mesh:
    """A generated state of ``size`` pods, services and policies, and one connection."""

    def __init__(self, size: int) -> None:
        from ztunnel.identity.spiffe import SpiffeId
        from ztunnel.state.proxy_state import LoadBalancer, ProxyState
        from ztunnel.state.security import (
            Action,
            Authorization,
            Clause,
            Match,
            Rule,
            Scope,
            StringMatch,
            StringMatchKind,
        )
        from ztunnel.state.workload import (
            NetworkAddress,
            Port,
            Service,
            TunnelProtocol,
            Workload,
        )

        services = [
            Service(
                name=f"s{i}",
                namespace=f"ns{i // 10}",
                hostname=f"s{i}.ns{i // 10}.svc.cluster.local",
                addresses=(NetworkAddress(_vip(i)),),
                ports=(Port(80, 8080),),
            )
            for i in range(size)
        ]
        telnet = Match(destination_ports=(23,))
        policies: list[Authorization] = [
            Authorization(
                name="deny-telnet",
                namespace="istio-system",
                scope=Scope.GLOBAL,
                action=Action.DENY,
                rules=(Rule((Clause((telnet,)),)),),
            )
        ]
        for i in range(size):
            namespace = f"ns{i // 10}"
            kind = i % 4
            if kind == 0:
                scope, action, port = Scope.NAMESPACE, Action.ALLOW, 8080
            elif kind == 1:
                scope, action, port = Scope.WORKLOAD_SELECTOR, Action.ALLOW, 8080
            else:
                scope, action, port = Scope.NAMESPACE, Action.DENY, 9090
            principal = StringMatch(StringMatchKind.PREFIX, "cluster.local/ns/")
            match = Match(principals=(principal,), destination_ports=(port,))
            policies.append(
                Authorization(
                    name=f"p{i}",
                    namespace=namespace,
                    scope=scope,
                    action=action,
                    rules=(Rule((Clause((match,)),)),),
                )
            )
        workloads = []
        for i in range(size):
            namespace = f"ns{i // 10}"
            selected = tuple(
                p.key
                for p in policies[1 + i - i % 4 : 1 + i - i % 4 + 4]
                if p.scope is Scope.WORKLOAD_SELECTOR and p.namespace == namespace
            )
            workloads.append(
                Workload(
                    uid=f"Kubernetes//Pod/{namespace}/pod{i}",
                    name=f"pod{i}",
                    namespace=namespace,
                    addresses=(_ip(i),),
                    tunnel_protocol=TunnelProtocol.HBONE,
                    service_account=f"sa{i}",
                    node="node1" if i == 1 else "node2",
                    services={services[i].key: (Port(80, 8080),)},
                    authorization_policies=selected,
                )
            )
        self.state = ProxyState(workloads, services, policies)
        self.balancer = LoadBalancer(rng=random.Random(1))
        self.rng = random.Random(2)
        self.client = workloads[1]
        self.client_identity: SpiffeId = self.client.identity
        self.target = size // 2
        self.vip = _vip(self.target)

    def plan(self) -> OutboundPlan:
        """Node1's plan for pod 1 -> the middle service's VIP (what it tunnels)."""
        from ztunnel.proxy import outbound

        return outbound.plan_outbound(
            self.state,
            self.balancer,
            source_ip=self.client.addresses[0],
            source_port=40000,
            destination_ip=self.vip,
            destination_port=80,
            node="node1",
            rng=self.rng,
        )

    def outbound(self) -> None:
        """The outbound decision, as node1's ztunnel takes it per captured connection."""
        from ztunnel.proxy import outbound

        plan = self.plan()
        if not isinstance(plan, outbound.Tunnel):
            raise MeasurementError(f"the generated connection was not tunnelled: {plan}")

    def inbound(self) -> Callable[[], None]:
        """Node2's decision for that tunnel, from the CONNECT node1 would send."""
        from ztunnel.proxy import inbound, outbound
        from ztunnel.proxy.proxy import service_for

        plan = self.plan()
        assert isinstance(plan, outbound.Tunnel)
        request = plan.request

        def decide() -> None:
            decision = inbound.decide_hbone(
                self.state,
                request,
                peer_identity=self.client_identity,
                peer_ip=self.client.addresses[0],
                node="node2",
            )
            if isinstance(decision, inbound.Refuse) or service_for(self.state, request) is None:
                raise MeasurementError(f"the generated tunnel was refused: {decision}")

        return decide


def _time_per_call(call: Callable[[], None], duration_s: float) -> float:
    """Microseconds per ``call``: the median over batches of :data:`BATCH` calls."""
    means: list[float] = []
    deadline = time.perf_counter() + duration_s
    while len(means) < MAX_BATCHES and (len(means) < 3 or time.perf_counter() < deadline):
        started = time.perf_counter()
        for _ in range(BATCH):
            call()
        means.append((time.perf_counter() - started) / BATCH * 1e6)
    means.sort()
    return means[len(means) // 2]


@register
class ZtunnelDecisions(Case):
    """Per-connection decision time against the size of the mesh state."""

    name = "ztunnel-decisions"
    description = (
        "ztunnel's per-connection decisions (outbound plan; inbound authorization and "
        "service lookup) on states of 10, 1,000 and 5,000 pods, services and policies"
    )
    data_path = (
        "in-process: the functions ztunnel's listeners call for each new connection, "
        "on a generated ProxyState (no sockets)"
    )
    variants: ClassVar[tuple[Variant, ...]] = tuple(
        Variant(name, f"a state of {size:,} pods, services and policies", baseline=size == 10)
        for name, size in SIZES.items()
    )
    probes: ClassVar[tuple[Probe, ...]] = (
        Probe(
            "outbound",
            "plan_outbound for a captured connection to a service VIP (resolution, "
            "endpoint choice, identities, the CONNECT's headers)",
            (_us("microseconds per decision"),),
        ),
        Probe(
            "inbound",
            "decide_hbone for that CONNECT (destination, caller address, the policies "
            "that apply, authorization) plus the service lookup for telemetry",
            (_us("microseconds per decision"),),
        ),
    )

    def __init__(self) -> None:
        self._meshes: dict[str, _Mesh] = {}
        self._duration = 1.0

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """Build every state once (the biggest takes a few seconds)."""
        self._duration = min(settings.duration_s, 1.0) if settings.quick else settings.duration_s
        self._meshes = {name: _Mesh(size) for name, size in SIZES.items()}
        try:
            yield
        finally:
            self._meshes = {}

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """Time ``probe``'s decision on ``variant``'s state."""
        mesh = self._meshes[variant.name]
        call = mesh.outbound if probe.name == "outbound" else mesh.inbound()
        return {"decision": _time_per_call(call, self._duration)}
