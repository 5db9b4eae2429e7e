"""``istio.workload`` / ``istio.security`` messages to ztunnel's domain types (pure).

This is the only place that reads generated protobuf messages (as duck-typed objects:
they come from ``api.messages``). Whatever arrives over delta xDS, or from the
control plane's own translation in local mode, becomes the frozen dataclasses of
:mod:`ztunnel.state`; a message ztunnel cannot use raises
:class:`~ztunnel.errors.XdsResourceError` naming the resource and field, which the
xDS client turns into a NACK.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ztunnel.errors import XdsResourceError
from ztunnel.state.proxy_state import ProxyState
from ztunnel.state.security import (
    Action,
    Authorization,
    Clause,
    IPNetwork,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel.state.workload import (
    AppProtocol,
    GatewayAddress,
    HealthPolicy,
    IPAddress,
    LoadBalancing,
    LoadBalancingMode,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)

_LEGACY_ISTIO_MTLS = 2


def _ip(raw: bytes, resource: str, field: str) -> IPAddress:
    if len(raw) not in (4, 16):
        raise XdsResourceError(
            f"{len(raw)}-byte address (want 4 or 16)", resource=resource, field=field
        )
    return ipaddress.ip_address(raw)


def _enum(kind: type[Any], value: int, resource: str, field: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise XdsResourceError(
            f"unknown {kind.__name__} {value}", resource=resource, field=field
        ) from None


def _network_address(msg: Any, resource: str, field: str) -> NetworkAddress:
    return NetworkAddress(address=_ip(msg.address, resource, field), network=msg.network)


def _gateway(msg: Any, present: bool, resource: str, field: str) -> GatewayAddress | None:
    if not present:
        return None
    which = msg.WhichOneof("destination")
    destination: NamespacedHostname | NetworkAddress
    if which == "hostname":
        destination = NamespacedHostname(msg.hostname.namespace, msg.hostname.hostname)
    elif which == "address":
        destination = _network_address(msg.address, resource, field)
    else:
        raise XdsResourceError("gateway without a destination", resource=resource, field=field)
    return GatewayAddress(destination, msg.hbone_mtls_port or 15008)


def _ports(messages: Iterable[Any], resource: str, field: str) -> tuple[Port, ...]:
    return tuple(
        Port(p.service_port, p.target_port, _enum(AppProtocol, p.app_protocol, resource, field))
        for p in messages
    )


def workload_from_proto(msg: Any) -> Workload:
    """One ``istio.workload.Workload``."""
    name = msg.uid or f"{msg.namespace}/{msg.name}"
    if msg.tunnel_protocol == _LEGACY_ISTIO_MTLS:
        raise XdsResourceError(
            "LEGACY_ISTIO_MTLS is not supported", resource=name, field="tunnel_protocol"
        )
    if not msg.uid:
        raise XdsResourceError("a workload needs a uid", resource=name, field="uid")
    return Workload(
        uid=msg.uid,
        name=msg.name,
        namespace=msg.namespace,
        addresses=tuple(_ip(a, name, "addresses") for a in msg.addresses),
        hostname=msg.hostname,
        network=msg.network,
        tunnel_protocol=_enum(TunnelProtocol, msg.tunnel_protocol, name, "tunnel_protocol"),
        trust_domain=msg.trust_domain,
        service_account=msg.service_account,
        waypoint=_gateway(msg.waypoint, msg.HasField("waypoint"), name, "waypoint"),
        network_gateway=_gateway(
            msg.network_gateway, msg.HasField("network_gateway"), name, "network_gateway"
        ),
        node=msg.node,
        canonical_name=msg.canonical_name,
        canonical_revision=msg.canonical_revision,
        workload_type=_enum(WorkloadType, msg.workload_type, name, "workload_type"),
        workload_name=msg.workload_name,
        native_tunnel=msg.native_tunnel,
        services={
            key: _ports(ports.ports, name, "services") for key, ports in msg.services.items()
        },
        authorization_policies=tuple(msg.authorization_policies),
        status=_enum(WorkloadStatus, msg.status, name, "status"),
        cluster_id=msg.cluster_id,
        locality=Locality(msg.locality.region, msg.locality.zone, msg.locality.subzone),
        capacity=msg.capacity.value if msg.HasField("capacity") else 1,
    )


def service_from_proto(msg: Any) -> Service:
    """One ``istio.workload.Service``."""
    name = f"{msg.namespace}/{msg.hostname}"
    load_balancing = None
    if msg.HasField("load_balancing"):
        lb = msg.load_balancing
        load_balancing = LoadBalancing(
            mode=_enum(LoadBalancingMode, lb.mode, name, "load_balancing.mode"),
            health_policy=_enum(
                HealthPolicy, lb.health_policy, name, "load_balancing.health_policy"
            ),
        )
    return Service(
        name=msg.name,
        namespace=msg.namespace,
        hostname=msg.hostname,
        addresses=tuple(_network_address(a, name, "addresses") for a in msg.addresses),
        ports=_ports(msg.ports, name, "ports"),
        subject_alt_names=tuple(msg.subject_alt_names),
        waypoint=_gateway(msg.waypoint, msg.HasField("waypoint"), name, "waypoint"),
        load_balancing=load_balancing,
    )


def _string_matches(messages: Iterable[Any]) -> tuple[StringMatch, ...]:
    out = []
    for m in messages:
        which = m.WhichOneof("match_type")
        if which == "exact":
            out.append(StringMatch(StringMatchKind.EXACT, m.exact))
        elif which == "prefix":
            out.append(StringMatch(StringMatchKind.PREFIX, m.prefix))
        elif which == "suffix":
            out.append(StringMatch(StringMatchKind.SUFFIX, m.suffix))
        elif which == "presence":
            out.append(StringMatch(StringMatchKind.PRESENCE))
        # An unset matcher matches nothing and is dropped, as Istio does.
    return tuple(out)


def _networks(messages: Iterable[Any], resource: str, field: str) -> tuple[IPNetwork, ...]:
    out = []
    for m in messages:
        ip = _ip(m.address, resource, field)
        try:
            out.append(ipaddress.ip_network((ip, m.length), strict=False))
        except ValueError as err:
            raise XdsResourceError(str(err), resource=resource, field=field) from err
    return tuple(out)


def _match(msg: Any, resource: str) -> Match:
    def sas(messages: Iterable[Any]) -> tuple[ServiceAccountMatch, ...]:
        return tuple(ServiceAccountMatch(m.namespace, m.serviceAccount) for m in messages)

    return Match(
        namespaces=_string_matches(msg.namespaces),
        not_namespaces=_string_matches(msg.not_namespaces),
        principals=_string_matches(msg.principals),
        not_principals=_string_matches(msg.not_principals),
        source_ips=_networks(msg.source_ips, resource, "source_ips"),
        not_source_ips=_networks(msg.not_source_ips, resource, "not_source_ips"),
        destination_ips=_networks(msg.destination_ips, resource, "destination_ips"),
        not_destination_ips=_networks(msg.not_destination_ips, resource, "not_destination_ips"),
        destination_ports=tuple(msg.destination_ports),
        not_destination_ports=tuple(msg.not_destination_ports),
        service_accounts=sas(msg.service_accounts),
        not_service_accounts=sas(msg.not_service_accounts),
    )


def authorization_from_proto(msg: Any) -> Authorization:
    """One ``istio.security.Authorization``."""
    name = f"{msg.namespace}/{msg.name}"
    return Authorization(
        name=msg.name,
        namespace=msg.namespace,
        scope=_enum(Scope, msg.scope, name, "scope"),
        action=_enum(Action, msg.action, name, "action"),
        rules=tuple(
            Rule(tuple(Clause(tuple(_match(m, name) for m in c.matches)) for c in r.clauses))
            for r in msg.rules
        ),
        dry_run=msg.dry_run,
    )


def state_from_resources(addresses: Iterable[Any], authorizations: Iterable[Any]) -> ProxyState:
    """A :class:`ProxyState` from ``Address`` and ``Authorization`` messages."""
    workloads, services = [], []
    for address in addresses:
        which = address.WhichOneof("type")
        if which == "workload":
            workloads.append(workload_from_proto(address.workload))
        elif which == "service":
            services.append(service_from_proto(address.service))
    policies = [authorization_from_proto(a) for a in authorizations]
    return ProxyState(workloads, services, policies)


def state_from_snapshot(
    addresses: Mapping[str, Any], authorizations: Mapping[str, Any]
) -> ProxyState:
    """A :class:`ProxyState` from resources keyed by xDS name (a control-plane snapshot)."""
    return state_from_resources(addresses.values(), authorizations.values())
