"""Raw Kubernetes/Istio objects (parsed YAML or JSON) to validated domain objects.

:func:`decode` checks one object the way the API server and Istio's validation would
(required fields, types, enumerations, Istio's policy rules) and returns either the
domain object or the problems that rejected it. Objects we accept but ignore in part,
and kinds we do not serve, come back as warnings saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import (
    ISTIO_GATEWAY_KIND,
    ClusterObject,
    Severity,
    SourceIssue,
)
from controlplane.sources.core import (
    decode_namespace,
    decode_pod,
    decode_service,
    decode_service_account,
)
from controlplane.sources.fields import (
    Fields,
    Problem,
    is_dns1123_label,
    is_dns1123_subdomain,
    type_name,
)
from controlplane.sources.gateways import (
    decode_gateway,
    decode_http_route,
    decode_istio_gateway,
)
from controlplane.sources.networking import decode_destination_rule, decode_virtual_service
from controlplane.sources.secrets import decode_secret
from controlplane.sources.security import decode_authorization_policy, decode_peer_authentication

SECURITY_VERSIONS = ("v1", "v1beta1")
NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
GATEWAY_API_VERSIONS = ("v1", "v1beta1")
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


@dataclass
class Decoded:
    """The outcome of decoding one raw object."""

    kind: str = ""
    namespace: str = ""
    name: str = ""
    group: str = ""
    """The API group of ``apiVersion`` ('' for the core group)."""
    obj: ClusterObject | None = None
    """The domain object; None when rejected or when the kind is ignored."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def key_kind(self) -> str:
        """The kind as object keys spell it (Istio's ``Gateway`` set apart)."""
        return kind_key(self.group, self.kind)

    @property
    def rejected(self) -> bool:
        """Whether any problem is an error (the object must not be used)."""
        return any(p.severity is Severity.ERROR for p in self.problems)

    def issues(self, file: str, line: int, *, kept_previous: bool = False) -> list[SourceIssue]:
        """The problems as issues located at ``file:line``.

        ``kept_previous`` notes on each error that an earlier good version stays in force.
        """
        suffix = " (the previous version stays in force)" if kept_previous else ""
        return [
            SourceIssue(
                file=file,
                line=line,
                kind=self.kind,
                namespace=self.namespace,
                name=self.name,
                field=p.field,
                message=p.message + (suffix if p.severity is Severity.ERROR else ""),
                severity=p.severity,
            )
            for p in self.problems
        ]


def kind_key(group: str, kind: str) -> str:
    """The kind as object keys spell it: Istio's ``Gateway`` is not the Gateway API's."""
    if group == "networking.istio.io" and kind == "Gateway":
        return ISTIO_GATEWAY_KIND
    return kind


Decoder = Callable[[Fields, str, str], ClusterObject | None]


def decode(raw: Any) -> Decoded:
    """Validates one raw object and turns it into a domain object."""
    out = Decoded()
    not_an_object = _not_an_object(raw)
    if not_an_object:
        out.problems.append(Problem("", f"not a Kubernetes object: {not_an_object}"))
        return out
    top = Fields(raw, "", out.problems)
    api_version = top.string("apiVersion", required=True)
    out.kind = top.string("kind", required=True)
    meta = top.mapping("metadata", required=True)
    if meta is not None:
        out.name = meta.string("name", required=True)
        if out.name and not is_dns1123_subdomain(out.name):
            meta.error("name", f"{out.name!r} is not a valid name (lower-case DNS-1123 subdomain)")
    if not api_version or not out.kind:
        return out
    group = api_version.rpartition("/")[0]
    out.group = group
    spec = _KINDS.get((group, out.kind))
    if spec is None:
        reason = _IGNORED.get((group, out.kind), f"unknown kind {api_version} {out.kind}; ignored")
        out.problems.append(Problem("kind", reason, Severity.WARNING))
        if meta is not None and isinstance(meta.data.get("namespace"), str):
            out.namespace = meta.data["namespace"]
        return out
    _decode_known(out, top, meta, api_version, spec)
    return out


def _decode_known(
    out: Decoded,
    top: Fields,
    meta: Fields | None,
    api_version: str,
    spec: tuple[tuple[str, ...], Decoder, bool],
) -> None:
    """The part of :func:`decode` for kinds we read: version, namespace, the decoder."""
    versions, decoder, namespaced = spec
    group, _, version = api_version.rpartition("/")
    if version not in versions:
        top.error(
            "apiVersion",
            f"{api_version} is not a version of {out.kind} we read "
            f"(use {' or '.join(f'{group}/{v}'.lstrip('/') for v in versions)})",
        )
    if meta is None:
        return
    if namespaced:
        out.namespace = meta.string("namespace") or "default"
        if not is_dns1123_label(out.namespace):
            meta.error("namespace", f"{out.namespace!r} is not a valid namespace name")
    elif meta.has("namespace"):
        meta.warn("namespace", f"{out.kind} is not namespaced; metadata.namespace is ignored")
    obj = decoder(top, out.namespace, out.name)
    if out.rejected:
        # What would be ignored in an object that is rejected anyway is only noise.
        out.problems = [p for p in out.problems if p.severity is Severity.ERROR]
    else:
        out.obj = obj


def _not_an_object(raw: Any) -> str:
    """Why ``raw`` cannot be a Kubernetes object at all ('' when it might be one)."""
    if not isinstance(raw, Mapping):
        return f"expected a mapping with apiVersion, kind and metadata, got {type_name(raw)}"
    if "apiVersion" not in raw and "kind" not in raw:
        return "no apiVersion and kind (a fragment of one, or some other YAML?)"
    return ""


_KINDS: dict[tuple[str, str], tuple[tuple[str, ...], Decoder, bool]] = {
    ("", "Namespace"): (("v1",), decode_namespace, False),
    ("", "Pod"): (("v1",), decode_pod, True),
    ("", "Service"): (("v1",), decode_service, True),
    ("", "ServiceAccount"): (("v1",), decode_service_account, True),
    ("", "Secret"): (("v1",), decode_secret, True),
    ("security.istio.io", "PeerAuthentication"): (
        SECURITY_VERSIONS,
        decode_peer_authentication,
        True,
    ),
    ("security.istio.io", "AuthorizationPolicy"): (
        SECURITY_VERSIONS,
        decode_authorization_policy,
        True,
    ),
    ("networking.istio.io", "VirtualService"): (NETWORKING_VERSIONS, decode_virtual_service, True),
    ("networking.istio.io", "DestinationRule"): (
        NETWORKING_VERSIONS,
        decode_destination_rule,
        True,
    ),
    ("networking.istio.io", "Gateway"): (NETWORKING_VERSIONS, decode_istio_gateway, True),
    (GATEWAY_API_GROUP, "Gateway"): (GATEWAY_API_VERSIONS, decode_gateway, True),
    (GATEWAY_API_GROUP, "HTTPRoute"): (GATEWAY_API_VERSIONS, decode_http_route, True),
}
"""(API group, kind) -> (versions read, decoder, namespaced)."""

_CONTROLLERS = "workload controllers are not expanded into pods here; write Pod objects"
_IGNORED: dict[tuple[str, str], str] = {
    ("gateway.networking.k8s.io", "GRPCRoute"): "GRPCRoutes need a waypoint; not served yet",
    ("networking.istio.io", "ServiceEntry"): "ServiceEntries are not served yet; ignored",
    ("networking.istio.io", "WorkloadEntry"): "WorkloadEntries are not served yet; ignored",
    ("networking.istio.io", "Sidecar"): "Sidecar resources do not apply in ambient mode",
    ("networking.istio.io", "EnvoyFilter"): "EnvoyFilters do not apply to ztunnel",
    ("security.istio.io", "RequestAuthentication"): (
        "JWT authentication needs a waypoint; not served yet"
    ),
    ("telemetry.istio.io", "Telemetry"): "Telemetry resources are not read; ignored",
    ("apps", "Deployment"): _CONTROLLERS,
    ("apps", "StatefulSet"): _CONTROLLERS,
    ("apps", "DaemonSet"): _CONTROLLERS,
    ("apps", "ReplicaSet"): _CONTROLLERS,
    ("batch", "Job"): _CONTROLLERS,
    ("batch", "CronJob"): _CONTROLLERS,
    ("", "Endpoints"): "endpoints are computed from Service selectors and Pods; ignored",
    ("discovery.k8s.io", "EndpointSlice"): (
        "endpoints are computed from Service selectors and Pods; ignored"
    ),
    ("", "ConfigMap"): "ConfigMaps are not read by the mesh; ignored",
    ("networking.k8s.io", "NetworkPolicy"): "NetworkPolicies are the CNI's job, not the mesh's",
}
"""Kinds we know and deliberately ignore, with the reason given to the user."""
