"""Assembling decoded objects into one :class:`~controlplane.model.ClusterState`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controlplane.model import (
    ISTIO_GATEWAY_KIND,
    AuthorizationPolicy,
    ClusterObject,
    ClusterState,
    DestinationRule,
    Gateway,
    HTTPRoute,
    IstioGateway,
    Namespace,
    PeerAuthentication,
    Pod,
    Secret,
    Service,
    ServiceAccount,
    Severity,
    SourceIssue,
    VirtualService,
)

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name): identity of an object across versions and files."""

_FIELD_OF: dict[type, str] = {
    Pod: "pods",
    Service: "services",
    ServiceAccount: "service_accounts",
    PeerAuthentication: "peer_authentications",
    AuthorizationPolicy: "authorization_policies",
    VirtualService: "virtual_services",
    DestinationRule: "destination_rules",
    Gateway: "gateways",
    IstioGateway: "istio_gateways",
    HTTPRoute: "http_routes",
    Secret: "secrets",
}


def object_key(obj: ClusterObject) -> ObjectKey:
    """The identity of a domain object (its class name is the Kubernetes kind)."""
    if isinstance(obj, Namespace):
        return ("Namespace", "", obj.name)
    if isinstance(obj, IstioGateway):
        return (ISTIO_GATEWAY_KIND, obj.namespace, obj.name)
    return (type(obj).__name__, obj.namespace, obj.name)


def assemble(objects: Iterable[ClusterObject], issues: Iterable[SourceIssue]) -> ClusterState:
    """One state from objects (each key once) and the issues met on the way."""
    tables: dict[str, dict[Any, Any]] = {name: {} for name in _FIELD_OF.values()}
    namespaces: dict[str, Namespace] = {}
    for obj in objects:
        if isinstance(obj, Namespace):
            namespaces[obj.name] = obj
        else:
            tables[_FIELD_OF[type(obj)]][(obj.namespace, obj.name)] = obj
    all_issues = list(issues)
    return ClusterState(
        namespaces=namespaces,
        errors=tuple(i for i in all_issues if i.severity is Severity.ERROR),
        warnings=tuple(i for i in all_issues if i.severity is Severity.WARNING),
        **tables,
    )
