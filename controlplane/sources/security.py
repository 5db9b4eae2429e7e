"""Decoding Istio's security kinds: PeerAuthentication and AuthorizationPolicy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from controlplane.model import (
    DEFAULT_ROOT_NAMESPACE,
    AuthorizationAction,
    AuthorizationPolicy,
    Condition,
    FrozenMap,
    MtlsMode,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
    TargetRef,
)
from controlplane.sources.fields import (
    Fields,
    Problem,
    check_port,
    is_ip_or_cidr,
    labels_of,
)

DRY_RUN_ANNOTATION = "istio.io/dry-run"

T = TypeVar("T")


def _selector(spec: Fields) -> FrozenMap[str, str] | None:
    selector = spec.mapping("selector")
    if selector is None:
        return None
    selector.reject_unknown({"matchLabels"})
    labels = selector.str_map("matchLabels")
    if not labels:
        spec.warn(
            "selector",
            "an empty selector selects the whole namespace, as if it were left out",
        )
        return None
    return labels


def decode_peer_authentication(top: Fields, ns: str, name: str) -> PeerAuthentication:
    """A PeerAuthentication: selector, mode, port-level modes."""
    spec = top.mapping("spec") or Fields({}, "spec", top.problems)
    spec.reject_unknown({"selector", "mtls", "portLevelMtls"})
    selector = _selector(spec)
    mode = _mtls_mode(spec.mapping("mtls"))
    port_modes: dict[int, MtlsMode] = {}
    levels = spec.mapping("portLevelMtls")
    if levels is not None:
        if selector is None:
            spec.error(
                "portLevelMtls",
                "port-level mTLS needs a workload selector (Istio ignores it on "
                "namespace- and mesh-wide policies)",
            )
        for key in levels.data:
            path = levels.at(str(key))
            port = check_port(key, path, top.problems)
            entry = levels.mapping(str(key)) if isinstance(key, str) else None
            if entry is None and isinstance(key, int):
                value = levels.data[key]
                entry = Fields(value, path, top.problems) if isinstance(value, Mapping) else None
            if entry is None:
                top.problems.append(Problem(path, "must be a mapping with a mode"))
                continue
            if port is not None:
                port_modes[port] = _mtls_mode(entry)
    if selector is not None and ns == DEFAULT_ROOT_NAMESPACE:
        spec.warn(
            "selector",
            f"a selector policy in the root namespace ({ns}) is ignored, as in Istio; "
            "put it in the workloads' namespace",
        )
    return PeerAuthentication(
        namespace=ns, name=name, selector=selector, mode=mode, port_level_mtls=FrozenMap(port_modes)
    )


def _mtls_mode(mtls: Fields | None) -> MtlsMode:
    if mtls is None:
        return MtlsMode.UNSET
    mtls.reject_unknown({"mode"})
    text = mtls.string("mode", default="UNSET")
    try:
        return MtlsMode[text]
    except KeyError:
        mtls.error("mode", f"{text!r} is not one of {', '.join(m.name for m in MtlsMode)}")
        return MtlsMode.UNSET


_SOURCE_FIELDS = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "requestPrincipals": "request_principals",
    "notRequestPrincipals": "not_request_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
    "remoteIpBlocks": "remote_ip_blocks",
    "notRemoteIpBlocks": "not_remote_ip_blocks",
    "trustDomains": "trust_domains",
    "notTrustDomains": "not_trust_domains",
}
_OPERATION_FIELDS = {
    "hosts": "hosts",
    "notHosts": "not_hosts",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
}
_WHEN_KEYS = {
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
}
_WHEN_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")
_ACTIONS = {a.value: a for a in AuthorizationAction}


def decode_authorization_policy(top: Fields, ns: str, name: str) -> AuthorizationPolicy:
    """An AuthorizationPolicy, checked as Istio validates it."""
    _, annotations = labels_of(top.mapping("metadata"))
    spec = top.mapping("spec") or Fields({}, "spec", top.problems)
    spec.reject_unknown({"selector", "targetRef", "targetRefs", "action", "provider", "rules"})
    selector = _selector(spec)
    action_text = spec.string("action", default="ALLOW")
    action = _ACTIONS.get(action_text, AuthorizationAction.ALLOW)
    if action_text not in _ACTIONS:
        spec.error("action", f"{action_text!r} is not one of {', '.join(_ACTIONS)}")
    provider = ""
    provider_fields = spec.mapping("provider")
    if provider_fields is not None:
        provider = provider_fields.string("name", required=True)
    if action is AuthorizationAction.CUSTOM and not provider:
        spec.error("provider", "a CUSTOM policy needs provider.name")
    if action is not AuthorizationAction.CUSTOM and provider_fields is not None:
        spec.error("provider", "provider is only allowed with action CUSTOM")
    target_refs = _target_refs(spec)
    if target_refs and selector is not None:
        spec.error("targetRefs", "selector and targetRef(s) cannot be used together")
    if action in (AuthorizationAction.AUDIT, AuthorizationAction.CUSTOM):
        spec.warn(
            "action", f"{action.value} policies are not enforced by ztunnel (a waypoint's job)"
        )
    if target_refs:
        spec.warn("targetRefs", "policies bound by targetRef apply at waypoints, not in ztunnel")
    rules = tuple(_rule(r) for r in spec.mappings("rules"))
    if action in (AuthorizationAction.ALLOW, AuthorizationAction.DENY) and not target_refs:
        for i, rule in enumerate(rules):
            _warn_l7(spec, i, rule, action)
    dry_run = annotations.get(DRY_RUN_ANNOTATION, "false").lower() == "true"
    return AuthorizationPolicy(
        namespace=ns,
        name=name,
        action=action,
        selector=selector,
        target_refs=target_refs,
        rules=rules,
        provider=provider,
        dry_run=dry_run,
    )


def _warn_l7(spec: Fields, index: int, rule: Rule, action: AuthorizationAction) -> None:
    """Says what ztunnel makes of a rule that needs L7 attributes."""
    l7 = rule.l7_attributes()
    if not l7:
        return
    uses = f"uses L7 attributes ({', '.join(l7)}) that ztunnel cannot see"
    if action is AuthorizationAction.ALLOW:
        spec.warn(f"rules[{index}]", f"{uses}: ztunnel drops this rule (it allows nothing)")
    elif rule.matches_anything_at_l4():
        spec.warn(f"rules[{index}]", f"{uses}: ztunnel enforces its L4 part only (denies more)")
    else:
        spec.warn(
            f"rules[{index}]",
            f"{uses}: without them the rule matches nothing, so it has no effect in "
            "ztunnel; enforce it with a waypoint",
        )


def _target_refs(spec: Fields) -> tuple[TargetRef, ...]:
    entries = spec.mappings("targetRefs")
    single = spec.mapping("targetRef")
    if single is not None:
        if entries:
            spec.error("targetRef", "use either targetRef or targetRefs, not both")
        entries = [single, *entries]
    refs = []
    for ref in entries:
        ref.reject_unknown({"group", "kind", "name", "namespace"})
        refs.append(
            TargetRef(
                kind=ref.string("kind", required=True),
                name=ref.string("name", required=True),
                group=ref.string("group"),
                namespace=ref.string("namespace"),
            )
        )
    return tuple(refs)


def _rule(rule: Fields) -> Rule:
    rule.reject_unknown({"from", "to", "when"})
    sources = _entries(rule, "from", "source", _source)
    operations = _entries(rule, "to", "operation", _operation)
    conditions = [_condition(c) for c in rule.mappings("when", nonempty=True)]
    return Rule(sources, operations, tuple(conditions))


def _entries(rule: Fields, key: str, inner: str, parse: Callable[[Fields], T]) -> tuple[T, ...]:
    """``from[].source`` or ``to[].operation``: a list of single-key wrappers."""
    out = []
    for entry in rule.mappings(key, nonempty=True):
        entry.reject_unknown({inner})
        value = entry.mapping(inner, required=True)
        if value is not None:
            out.append(parse(value))
    return tuple(out)


def _source(source: Fields) -> Source:
    source.reject_unknown(set(_SOURCE_FIELDS))
    values: dict[str, tuple[str, ...]] = {}
    for key, attr in _SOURCE_FIELDS.items():
        values[attr] = source.str_list(key)
        for i, value in enumerate(values[attr]):
            path = f"{key}[{i}]"
            if "ip_blocks" in attr:
                if not is_ip_or_cidr(value):
                    source.error(path, f"{value!r} is not an IP address or CIDR block")
            elif "service_accounts" in attr:
                _check_service_account(source, path, value)
            else:
                _check_wildcard(source, path, value)
                if "principals" in attr and value.startswith("spiffe://"):
                    source.warn(
                        path,
                        f"{value!r} never matches: principals are written without "
                        "'spiffe://' (<trust-domain>/ns/<namespace>/sa/<account>)",
                    )
    if not any(values.values()):
        source.error(None, "must not be empty (name at least one field)")
    if (values["principals"] or values["not_principals"]) and (
        values["service_accounts"] or values["not_service_accounts"]
    ):
        source.error("serviceAccounts", "cannot be used together with principals")
    return Source(**values)


def _check_wildcard(fields: Fields, path: str, value: str) -> None:
    if not value:
        fields.error(path, "must not be empty")
    elif "*" in value[1:-1] or (value.count("*") > 1 and value != "*"):
        fields.error(path, f"{value!r}: '*' is allowed only alone, as a prefix or as a suffix")


def _check_service_account(fields: Fields, path: str, value: str) -> None:
    parts = value.split("/")
    if "*" in value or len(parts) > 2 or not all(parts):
        fields.error(path, f"{value!r} must be 'serviceaccount' or 'namespace/serviceaccount'")


def _operation(operation: Fields) -> Operation:
    operation.reject_unknown({*_OPERATION_FIELDS, "ports", "notPorts"})
    values: dict[str, Any] = {}
    for key, attr in _OPERATION_FIELDS.items():
        values[attr] = operation.str_list(key)
        for i, value in enumerate(values[attr]):
            if not value:
                operation.error(f"{key}[{i}]", "must not be empty")
    for key, attr in (("ports", "ports"), ("notPorts", "not_ports")):
        ports = [
            check_port(v, f"{operation.at(key)}[{i}]", operation.problems)
            for i, v in enumerate(operation.sequence(key))
        ]
        values[attr] = tuple(p for p in ports if p is not None)
    if not any(values.values()) and not operation.problems:
        operation.error(None, "must not be empty (name at least one field)")
    return Operation(**values)


def _condition(when: Fields) -> Condition:
    when.reject_unknown({"key", "values", "notValues"})
    key = when.string("key", required=True)
    values = when.str_list("values")
    not_values = when.str_list("notValues")
    if key and key not in _WHEN_KEYS and not key.startswith(_WHEN_PREFIXES):
        when.error("key", f"{key!r} is not a supported condition key")
    if key and not values and not not_values:
        when.error(None, f"condition {key!r} needs values or notValues")
    if key == "destination.port":
        for i, v in enumerate((*values, *not_values)):
            check_port(v, when.at(f"values[{i}]"), when.problems)
    if key in ("source.ip", "remote.ip", "destination.ip"):
        for v in (*values, *not_values):
            if not is_ip_or_cidr(v):
                when.error("values", f"{v!r} is not an IP address or CIDR block")
    return Condition(key=key, values=values, not_values=not_values)
