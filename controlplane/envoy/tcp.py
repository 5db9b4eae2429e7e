"""A VirtualService's ``tcp`` rules as Envoy's TCP proxy configuration.

For one service port the first rule whose matches take that port wins (istiod's
order); without one, connections go to the whole service. The ``TcpProxy`` message
is the network filter a waypoint's chain for a non-HTTP port will carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane.envoy.routes import Destinations, weighted
from controlplane.envoy.spec import TcpRoute

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"


def tcp_rule_for(rules: Sequence[TcpRoute], port: int) -> TcpRoute | None:
    """The first rule taking connections to ``port``."""
    return next((r for r in rules if not r.ports or port in r.ports), None)


def build_tcp_proxy(stat_prefix: str, rule: TcpRoute, destinations: Destinations) -> Any:
    """The ``TcpProxy`` sending connections along ``rule``'s weighted destinations."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    taking = weighted(rule.route)
    names = [destinations.cluster(d.destination) for d in taking]
    if len(taking) == 1:
        proxy.cluster = names[0]
        return proxy
    for name, entry in zip(names, taking, strict=True):
        proxy.weighted_clusters.clusters.append(
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=entry.weight)
        )
    return proxy
