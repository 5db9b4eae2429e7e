"""Checks across objects, as ``istioctl analyze`` does: each object valid, the whole odd.

Pure: a :class:`~controlplane.model.ClusterState` and where each object was written
in; warnings out. Used by ``ambient controlplane validate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controlplane.envoy.errors import L7ConfigError
from controlplane.envoy.httproute import parse_http_route
from controlplane.envoy.parse import parse_destination_rule, parse_virtual_service
from controlplane.envoy.rbac import policy_problems
from controlplane.model import (
    ClusterObject,
    ClusterState,
    Pod,
    PolicyScope,
    Severity,
    SourceIssue,
    selector_matches,
)
from controlplane.sources.state import ObjectKey, object_key
from controlplane.workloadapi.waypoints import binding_problems

Origins = Mapping[ObjectKey, tuple[str, int]]
"""Object -> (file, line) it was read from."""


def analyze(state: ClusterState, origins: Origins, root_namespace: str) -> list[SourceIssue]:
    """Warnings about how the objects fit together."""
    warn = _Reporter(origins)
    pods_by_ns: dict[str, list[Pod]] = {}
    for pod in state.pods.values():
        pods_by_ns.setdefault(pod.namespace, []).append(pod)
    _named_target_ports(state, pods_by_ns, warn)
    _selectors_matching_nothing(state, pods_by_ns, warn)
    _competing_peer_authentications(state, root_namespace, warn)
    _pods_without_namespace(state, pods_by_ns, warn)
    _waypoint_policies(state, warn)
    _l7_translation(state, warn)
    _route_attachments(state, warn)
    _gateway_certificates(state, warn)
    for obj, field, message in binding_problems(state):
        warn(obj, field, message)
    return warn.issues


class _Reporter:
    def __init__(self, origins: Origins) -> None:
        self.origins = origins
        self.issues: list[SourceIssue] = []

    def __call__(
        self, obj: ClusterObject, field: str, message: str, severity: Severity = Severity.WARNING
    ) -> None:
        key = object_key(obj)
        file, line = self.origins.get(key, ("", 0))
        kind, namespace, name = key
        self.issues.append(SourceIssue(file, line, kind, namespace, name, field, message, severity))


Warn = Callable[..., None]
"""``warn(obj, field, message, severity=WARNING)``."""


def _selected(selector: Mapping[str, str], pods: Iterable[Pod]) -> list[Pod]:
    return [p for p in pods if selector_matches(selector, p.labels)]


def _named_target_ports(state: ClusterState, pods_by_ns: dict[str, list[Pod]], warn: Warn) -> None:
    for svc in state.services.values():
        if not svc.selector:
            continue
        selected = _selected(svc.selector, pods_by_ns.get(svc.namespace, ()))
        for i, port in enumerate(svc.ports):
            target = port.target_port
            if not selected or not isinstance(target, str):
                continue
            missing = sorted(p.name for p in selected if p.named_port(target) is None)
            if missing:
                warn(
                    svc,
                    f"spec.ports[{i}].targetPort",
                    f"no container port named {target!r} in pod(s) {', '.join(missing)}; "
                    "those pods get no traffic on this port",
                )


def _selectors_matching_nothing(
    state: ClusterState, pods_by_ns: dict[str, list[Pod]], warn: Warn
) -> None:
    policies: list[ClusterObject] = [
        *state.authorization_policies.values(),
        *state.peer_authentications.values(),
    ]
    for policy in policies:
        selector = getattr(policy, "selector", None)
        namespace = getattr(policy, "namespace", "")
        if selector and not _selected(selector, pods_by_ns.get(namespace, ())):
            labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            warn(policy, "spec.selector", f"selects no pod in namespace {namespace} ({labels})")


def _competing_peer_authentications(state: ClusterState, root: str, warn: Warn) -> None:
    by_level: dict[tuple[str, PolicyScope], list[ClusterObject]] = {}
    for pa in sorted(state.peer_authentications.values(), key=lambda p: p.key):
        scope = pa.scope(root)
        if scope is not PolicyScope.WORKLOAD:
            by_level.setdefault((pa.namespace, scope), []).append(pa)
    for (namespace, scope), policies in by_level.items():
        for extra in policies[1:]:
            warn(
                extra,
                "",
                f"another {scope.value}-wide PeerAuthentication exists in {namespace}; only "
                f"one applies (here {getattr(policies[0], 'name', '')}, first by name; "
                "Istio takes the oldest)",
            )


def _pods_without_namespace(
    state: ClusterState, pods_by_ns: dict[str, list[Pod]], warn: Warn
) -> None:
    for namespace, pods in sorted(pods_by_ns.items()):
        if namespace in state.namespaces:
            continue
        first = sorted(pods, key=lambda p: p.name)[0]
        warn(
            first,
            "metadata.namespace",
            f"no Namespace object {namespace!r} here; its pods ({len(pods)}) are enrolled "
            "only by their own istio.io/dataplane-mode label",
        )


def _waypoint_policies(state: ClusterState, warn: Warn) -> None:
    """What waypoints and gateways do not do with a policy (CUSTOM: an error), and
    targets that name nothing."""
    for policy in sorted(state.authorization_policies.values(), key=lambda p: p.key):
        for problem in policy_problems(policy):
            warn(policy, problem.field, problem.message, problem.severity)
        for i, ref in enumerate(policy.target_refs):
            namespace = ref.namespace or policy.namespace
            known = {
                "Gateway": state.gateways,
                "Service": state.services,
            }.get(ref.kind)
            if known is None:
                if ref.kind != "GatewayClass":
                    warn(
                        policy,
                        f"spec.targetRefs[{i}].kind",
                        f"{ref.kind!r} targets are not supported (Gateway, Service, "
                        "GatewayClass); the policy does not apply through it",
                    )
                continue
            if (namespace, ref.name) not in known:
                warn(
                    policy,
                    f"spec.targetRefs[{i}]",
                    f"no {ref.kind} {namespace}/{ref.name} here; the policy applies to "
                    "nothing until it exists",
                )


def _l7_translation(state: ClusterState, warn: Warn) -> None:
    """What waypoints and gateways make of VirtualServices, DestinationRules and
    HTTPRoutes: fields they ignore (warnings), objects they skip (errors)."""
    parsers: list[tuple[Mapping[tuple[str, str], Any], Callable[[Any], Any]]] = [
        (state.virtual_services, parse_virtual_service),
        (state.destination_rules, parse_destination_rule),
        (state.http_routes, parse_http_route),
    ]
    for objects, parse in parsers:
        for _, obj in sorted(objects.items()):
            try:
                _, warnings = parse(obj)
            except L7ConfigError as err:
                for problem in err.problems:
                    warn(obj, problem.field, problem.message, Severity.ERROR)
                continue
            for problem in warnings:
                warn(obj, problem.field, problem.message)


def _route_attachments(state: ClusterState, warn: Warn) -> None:
    """``gateways:`` and ``parentRefs`` that name nothing here."""
    for _, vs in sorted(state.virtual_services.items()):
        for i, entry in enumerate(vs.gateways):
            if entry == "mesh":
                continue
            namespace, _, name = entry.rpartition("/")
            if ((namespace or vs.namespace), name) not in state.istio_gateways:
                warn(
                    vs,
                    f"spec.gateways[{i}]",
                    f"no Istio Gateway {namespace or vs.namespace}/{name} here; these routes "
                    "reach no gateway until it exists",
                )
    for _, route in sorted(state.http_routes.items()):
        for i, parent in enumerate(route.parent_refs):
            namespace = parent.namespace or route.namespace
            known = {"Gateway": state.gateways, "Service": state.services}.get(parent.kind)
            if known is None:
                warn(
                    route,
                    f"spec.parentRefs[{i}].kind",
                    f"{parent.kind!r} parents are not supported (Gateway, Service)",
                )
            elif (namespace, parent.name) not in known:
                warn(
                    route,
                    f"spec.parentRefs[{i}]",
                    f"no {parent.kind} {namespace}/{parent.name} here; the route attaches to "
                    "nothing until it exists",
                )


_MISSING_CREDENTIAL = (
    "no TLS Secret {where} here: the gateway's HTTPS {what} gets no certificate until it "
    "exists (a gateway reads credentials from its own namespace only; create it with "
    "'kubectl create -n <namespace> secret tls {name} --cert=... --key=...')"
)
_NO_CA = (
    "tls.mode {mode} needs client roots: ca.crt in Secret {where}, or a Secret "
    "{name}-cacert beside it; none here, so the server gets no validation context"
)


def _gateway_certificates(state: ClusterState, warn: Warn) -> None:
    """HTTPS servers and listeners whose certificate Secret is missing where the gateway
    runs (or lacks the client roots MUTUAL needs)."""
    by_name: dict[str, set[str]] = {}
    for namespace, name in state.secrets:
        by_name.setdefault(name, set()).add(namespace)
    for _, gateway in sorted(state.istio_gateways.items()):
        pods = _selected(gateway.selector, state.pods.values()) if gateway.selector else []
        namespaces = sorted({p.namespace for p in pods})
        for i, server in enumerate(gateway.servers):
            tls = dict(server.tls or {})
            name = str(tls.get("credentialName") or "")
            if server.protocol != "HTTPS" or not name:
                continue
            field = f"spec.servers[{i}].tls.credentialName"
            mode = str(tls.get("mode", "SIMPLE"))
            for namespace in namespaces or [""]:
                _check_credential(
                    state, by_name, warn, gateway, field, name=name, namespace=namespace, mode=mode
                )
    for _, api_gateway in sorted(state.gateways.items()):
        for i, listener in enumerate(api_gateway.listeners):
            refs = list(dict(listener.tls or {}).get("certificateRefs") or ())
            if listener.protocol != "HTTPS" or not refs:
                continue
            ref = dict(refs[0])
            field = f"spec.listeners[{i}].tls.certificateRefs[0]"
            if ref.get("namespace", api_gateway.namespace) != api_gateway.namespace:
                warn(
                    api_gateway,
                    field,
                    "a Secret in another namespace is not served (ReferenceGrants are not "
                    "read); put the Secret in the Gateway's namespace",
                )
                continue
            name = str(ref.get("name", ""))
            _check_credential(
                state,
                by_name,
                warn,
                api_gateway,
                field,
                name=name,
                namespace=api_gateway.namespace,
                mode="SIMPLE",
            )


def _check_credential(
    state: ClusterState,
    by_name: Mapping[str, set[str]],
    warn: Warn,
    obj: ClusterObject,
    field: str,
    *,
    name: str,
    namespace: str,
    mode: str,
) -> None:
    """One credential, where the gateway runs (``namespace``; '' when no gateway pod is
    known: then a Secret of that name anywhere will do)."""
    what = "listener" if field.startswith("spec.listeners") else "server"
    if namespace:
        where = f"{namespace}/{name}"
        secret = state.secrets.get((namespace, name))
        found = secret is not None and secret.has_certificate
    else:
        where = name
        found = any(state.secrets[(ns, name)].has_certificate for ns in by_name.get(name, ()))
    if not found:
        warn(obj, field, _MISSING_CREDENTIAL.format(where=where, what=what, name=name))
        return
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        candidates = [namespace] if namespace else sorted(by_name.get(name, ()))
        has_ca = any(
            (ns, f"{name}-cacert") in state.secrets or state.secrets[(ns, name)].ca_certificates
            for ns in candidates
            if (ns, name) in state.secrets
        )
        if not has_ca:
            warn(obj, field, _NO_CA.format(mode=mode, where=where, name=name))
