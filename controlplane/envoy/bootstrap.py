"""Translated resources in one static Envoy bootstrap, for ``envoy --mode validate``.

Envoy itself is the judge of whether a translation is well formed: every route
configuration becomes a listener on 127.0.0.1 (an HTTP connection manager with the
CORS, fault and router filters), every TCP proxy a listener of its own, every cluster a
STATIC one with one placeholder endpoint, since EDS is not part of a static
bootstrap. Nothing is served from it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from controlplane.envoy.hbone import SDS_CERTIFICATE, SDS_ROOT
from controlplane.envoy.proxy import EnvoyResources
from controlplane.envoy.routes import CORS_FILTER, FAULT_FILTER
from controlplane.envoy.tcp import TCP_PROXY_FILTER
from controlplane.envoy.waypoint import WaypointResources

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
PLACEHOLDER_ENDPOINT = ("127.0.0.1", 9)
"""Address of the one endpoint each validated cluster gets (discard; never dialed)."""


def as_json(message: Any) -> dict[str, Any]:
    """A protobuf message as Envoy's JSON (field names as in the proto files)."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _static(cluster: dict[str, Any]) -> dict[str, Any]:
    cluster = dict(cluster)
    cluster.pop("eds_cluster_config", None)
    cluster["type"] = "STATIC"
    ip, port = PLACEHOLDER_ENDPOINT
    address = {"socket_address": {"address": ip, "port_value": port}}
    cluster["load_assignment"] = {
        "cluster_name": cluster["name"],
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }
    return cluster


def static_bootstrap(resources: WaypointResources, *, first_port: int = 20000) -> dict[str, Any]:
    """A bootstrap holding ``resources``: listeners from ``first_port`` up, one per
    route configuration, then one per TCP proxy."""
    listeners = []
    for index, (name, route) in enumerate(sorted(resources.routes.items())):
        manager = {
            "@type": HCM,
            "stat_prefix": f"r{index}",
            "route_config": as_json(route),
            "http_filters": [
                {"name": CORS_FILTER, "typed_config": {"@type": CORS}},
                {"name": FAULT_FILTER, "typed_config": {"@type": FAULT}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
            ],
        }
        address = {"socket_address": {"address": "127.0.0.1", "port_value": first_port + index}}
        listeners.append(
            {
                "name": name,
                "address": address,
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": manager,
                            }
                        ]
                    }
                ],
            }
        )
    for index, (name, proxy) in enumerate(sorted(resources.tcp_proxies.items())):
        config = {"@type": TCP_PROXY, **as_json(proxy)}
        port = first_port + len(resources.routes) + index
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        listeners.append(
            {
                "name": name,
                "address": address,
                "filter_chains": [
                    {"filters": [{"name": TCP_PROXY_FILTER, "typed_config": config}]}
                ],
            }
        )
    clusters = [_static(as_json(c)) for _, c in sorted(resources.clusters.items())]
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


INTERNAL_LISTENER_EXTENSION = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3."
        "InternalListener"
    },
}
"""The bootstrap extension internal listeners need (``envoy_internal_address``)."""


def static_secrets(chain_pem: str, key_pem: str, roots_pem: str) -> list[dict[str, Any]]:
    """The SDS secrets ``default`` and ``ROOTCA`` as static bootstrap secrets."""
    return [
        {
            "name": SDS_CERTIFICATE,
            "tls_certificate": {
                "certificate_chain": {"inline_string": chain_pem},
                "private_key": {"inline_string": key_pem},
            },
        },
        {"name": SDS_ROOT, "validation_context": {"trusted_ca": {"inline_string": roots_pem}}},
    ]


def _inline(node: Any, routes: dict[str, Any]) -> Any:
    """``node`` with RDS references replaced by the route configurations and SDS
    references pointing at static secrets."""
    if isinstance(node, list):
        return [_inline(item, routes) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "rds":
            out["route_config"] = routes[value["route_config_name"]]
        elif key == "sds_config":
            continue
        else:
            out[key] = _inline(value, routes)
    return out


def proxy_bootstrap(
    resources: EnvoyResources,
    secrets: list[dict[str, Any]],
    *,
    admin_port: int = 0,
    extra_clusters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What :func:`~controlplane.envoy.proxy.proxy_resources` returned, as one static
    bootstrap: routes inlined, EDS clusters made STATIC with their assignments, SDS
    secrets from ``secrets`` (:func:`static_secrets`). For validation and for tests
    that run a real Envoy without a control plane."""
    routes = {name: as_json(route) for name, route in resources.routes.items()}
    listeners = [_inline(as_json(listener), routes) for listener in resources.listeners.values()]
    clusters = []
    for name, cluster in resources.clusters.items():
        config = _inline(as_json(cluster), routes)
        if "eds_cluster_config" in config:
            config.pop("eds_cluster_config")
            config["type"] = "STATIC"
            assignment = resources.endpoints.get(name)
            config["load_assignment"] = (
                as_json(assignment) if assignment is not None else {"cluster_name": name}
            )
        clusters.append(config)
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "bootstrap_extensions": [INTERNAL_LISTENER_EXTENSION],
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters + list(extra_clusters or ()),
            "secrets": secrets,
        },
    }
