"""Decoding Istio's networking kinds, kept as validated shells for the waypoint work."""

from __future__ import annotations

from controlplane.model import DestinationRule, VirtualService, deep_freeze
from controlplane.sources.fields import Fields


def decode_virtual_service(top: Fields, ns: str, name: str) -> VirtualService:
    """A VirtualService, kept as a validated shell for waypoints."""
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    hosts = spec.str_list("hosts")
    if not hosts:
        spec.error("hosts", "at least one host is required")
    for i, host in enumerate(hosts):
        if not host:
            spec.error(f"hosts[{i}]", "must not be empty")
    gateways = spec.str_list("gateways")
    for key in ("http", "tcp", "tls"):
        for route in spec.mappings(key):
            route.sequence("route")
            route.sequence("match")
    spec.str_list("exportTo")
    return VirtualService(
        namespace=ns, name=name, hosts=hosts, gateways=gateways, spec=deep_freeze(spec.data)
    )


def decode_destination_rule(top: Fields, ns: str, name: str) -> DestinationRule:
    """A DestinationRule, kept as a validated shell for waypoints."""
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    host = spec.string("host", required=True)
    subsets: list[str] = []
    for subset in spec.mappings("subsets"):
        subset_name = subset.string("name", required=True)
        if subset_name in subsets:
            subset.error("name", f"duplicate subset {subset_name!r}")
        subsets.append(subset_name)
        subset.str_map("labels")
        subset.mapping("trafficPolicy")
    spec.mapping("trafficPolicy")
    spec.str_list("exportTo")
    return DestinationRule(
        namespace=ns, name=name, host=host, subsets=tuple(subsets), spec=deep_freeze(spec.data)
    )
