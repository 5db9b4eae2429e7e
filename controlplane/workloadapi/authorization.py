"""AuthorizationPolicy to ``istio.security.Authorization``, as istiod does for ztunnel.

ztunnel enforces L4 only. istiod's rules, followed here:
- no selector: NAMESPACE scope (GLOBAL in the root namespace); a selector:
  WORKLOAD_SELECTOR (the workloads list the policy); ``targetRef(s)``: not sent;
- only ALLOW and DENY are sent (AUDIT and CUSTOM are a waypoint's business);
- an ALLOW rule that needs L7 attributes is dropped, so it allows nothing;
- a DENY rule keeps its L4 parts only: the L7 parts are taken as matching, so the
  rule denies more, never less.

A rule becomes clauses (AND'd): its ``to`` list, its ``from`` list (each a clause
whose matches are OR'd), then one clause per ``when`` condition.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from api.messages import security as sec
from controlplane.model import (
    L4_CONDITION_KEYS,
    AuthorizationAction,
    AuthorizationPolicy,
    Condition,
    Operation,
    PolicyScope,
    Rule,
    Source,
)

_SCOPES = {
    PolicyScope.MESH: "GLOBAL",
    PolicyScope.NAMESPACE: "NAMESPACE",
    PolicyScope.WORKLOAD: "WORKLOAD_SELECTOR",
}


class _L7Only(Exception):
    """An ALLOW rule needs attributes ztunnel cannot see: the rule is dropped."""


def string_match(value: str) -> Any:
    """Istio's wildcards: ``*`` any non-empty value, ``*x`` suffix, ``x*`` prefix."""
    if value == "*":
        return sec.StringMatch(presence={})
    if value.startswith("*"):
        return sec.StringMatch(suffix=value[1:])
    if value.endswith("*"):
        return sec.StringMatch(prefix=value[:-1])
    return sec.StringMatch(exact=value)


def principal_match(value: str) -> Any:
    """A principal as ztunnel compares it: without the ``spiffe://`` scheme."""
    return string_match(value.removeprefix("spiffe://"))


def address(value: str) -> Any:
    """An IP or CIDR block as raw bytes and a prefix length."""
    net = ipaddress.ip_interface(value)
    return sec.Address(address=net.ip.packed, length=net.network.prefixlen)


def service_account_match(value: str, policy_namespace: str) -> Any:
    """``sa`` (in the policy's namespace) or ``ns/sa``."""
    namespace, _, name = value.rpartition("/")
    return sec.ServiceAccountMatch(namespace=namespace or policy_namespace, serviceAccount=name)


def is_sent(policy: AuthorizationPolicy) -> bool:
    """Whether ztunnel gets this policy at all."""
    return not policy.target_refs and policy.action in (
        AuthorizationAction.ALLOW,
        AuthorizationAction.DENY,
    )


def authorization_message(policy: AuthorizationPolicy, root_namespace: str) -> Any | None:
    """The ``istio.security.Authorization`` for a policy, or None when it is not sent."""
    if not is_sent(policy):
        return None
    deny = policy.action is AuthorizationAction.DENY
    rules = []
    for rule in policy.rules:
        try:
            rules.append(sec.Rule(clauses=_clauses(rule, policy.namespace, deny)))
        except _L7Only:
            continue
    return sec.Authorization(
        name=policy.name,
        namespace=policy.namespace,
        scope=getattr(sec, _SCOPES[policy.scope(root_namespace)]),
        action=sec.DENY if deny else sec.ALLOW,
        rules=rules,
        dry_run=policy.dry_run,
    )


def _clauses(rule: Rule, namespace: str, deny: bool) -> list[Any]:
    clauses = []
    to = [_operation_match(op, deny) for op in rule.operations]
    # For DENY an entry reduced to nothing matches anything, so the whole list does.
    if to and all(m is not None for m in to):
        clauses.append(sec.Clause(matches=to))
    sources = [_source_match(src, namespace, deny) for src in rule.sources]
    if sources and all(m is not None for m in sources):
        clauses.append(sec.Clause(matches=sources))
    for condition in rule.conditions:
        match = _condition_match(condition, deny)
        if match is not None:
            clauses.append(sec.Clause(matches=[match]))
    return clauses


def _operation_match(op: Operation, deny: bool) -> Any | None:
    l7 = (op.hosts, op.not_hosts, op.methods, op.not_methods, op.paths, op.not_paths)
    if any(l7) and not deny:
        raise _L7Only
    if not op.ports and not op.not_ports:
        return None
    return sec.Match(destination_ports=list(op.ports), not_destination_ports=list(op.not_ports))


def _source_match(src: Source, namespace: str, deny: bool) -> Any | None:
    l7 = (
        src.request_principals,
        src.not_request_principals,
        src.remote_ip_blocks,
        src.not_remote_ip_blocks,
    )
    if any(l7) and not deny:
        raise _L7Only
    match = sec.Match(
        principals=[principal_match(v) for v in src.principals],
        not_principals=[principal_match(v) for v in src.not_principals],
        namespaces=[string_match(v) for v in src.namespaces],
        not_namespaces=[string_match(v) for v in src.not_namespaces],
        source_ips=[address(v) for v in src.ip_blocks],
        not_source_ips=[address(v) for v in src.not_ip_blocks],
        service_accounts=[service_account_match(v, namespace) for v in src.service_accounts],
        not_service_accounts=[
            service_account_match(v, namespace) for v in src.not_service_accounts
        ],
    )
    return match if match.ByteSize() else None


_CONDITION_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "source.ip": ("source_ips", address),
    "source.namespace": ("namespaces", string_match),
    "source.principal": ("principals", principal_match),
    "destination.ip": ("destination_ips", address),
    "destination.port": ("destination_ports", int),
}


def _condition_match(condition: Condition, deny: bool) -> Any | None:
    if condition.key not in L4_CONDITION_KEYS:
        if not deny:
            raise _L7Only
        return None
    field, convert = _CONDITION_FIELDS[condition.key]
    match = sec.Match()
    _extend(getattr(match, field), condition.values, convert)
    _extend(getattr(match, f"not_{field}"), condition.not_values, convert)
    return match


def _extend(target: Any, values: Sequence[str], convert: Callable[[str], Any]) -> None:
    target.extend(convert(v) for v in values)
