"""AuthorizationPolicy to ``istio.security.Authorization``, as istiod does for ztunnel.

ztunnel enforces L4 only. istiod's rules, followed here:
- no selector: NAMESPACE scope (GLOBAL in the root namespace); a selector:
  WORKLOAD_SELECTOR (the workloads list the policy); ``targetRef(s)``: not sent;
- only ALLOW and DENY are sent (AUDIT and CUSTOM are a waypoint's business);
- an ALLOW rule that uses any L7 attribute is dropped, so it allows nothing;
- a DENY rule keeps its L4 fields only: an entry with nothing but L7 fields becomes
  an empty match, which ztunnel skips, so such a clause (and rule) matches nothing.

A rule becomes clauses (AND'd): its ``to`` list and its ``from`` list (each one clause
whose matches are OR'd), then one clause per ``when`` condition.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from api.messages import security as sec
from controlplane.model import (
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


def string_match(value: str) -> Any:
    """Istio's wildcards: ``*`` any non-empty value, ``*x`` suffix, ``x*`` prefix."""
    if value == "*":
        return sec.StringMatch(presence={})
    if value.startswith("*"):
        return sec.StringMatch(suffix=value[1:])
    if value.endswith("*"):
        return sec.StringMatch(prefix=value[:-1])
    return sec.StringMatch(exact=value)


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
    rules = [
        sec.Rule(clauses=_clauses(rule, policy.namespace))
        for rule in policy.rules
        if deny or not rule.l7_attributes()
    ]
    return sec.Authorization(
        name=policy.name,
        namespace=policy.namespace,
        scope=getattr(sec, _SCOPES[policy.scope(root_namespace)]),
        action=sec.DENY if deny else sec.ALLOW,
        rules=rules,
        dry_run=policy.dry_run,
    )


def _clauses(rule: Rule, namespace: str) -> list[Any]:
    clauses = []
    if rule.operations:
        clauses.append(sec.Clause(matches=[_operation_match(op) for op in rule.operations]))
    if rule.sources:
        clauses.append(sec.Clause(matches=[_source_match(s, namespace) for s in rule.sources]))
    clauses += [sec.Clause(matches=[_condition_match(c)]) for c in rule.conditions]
    return clauses


def _operation_match(op: Operation) -> Any:
    return sec.Match(destination_ports=list(op.ports), not_destination_ports=list(op.not_ports))


def _source_match(src: Source, namespace: str) -> Any:
    return sec.Match(
        principals=[string_match(v) for v in src.principals],
        not_principals=[string_match(v) for v in src.not_principals],
        namespaces=[string_match(v) for v in src.namespaces],
        not_namespaces=[string_match(v) for v in src.not_namespaces],
        source_ips=[address(v) for v in src.ip_blocks],
        not_source_ips=[address(v) for v in src.not_ip_blocks],
        service_accounts=[service_account_match(v, namespace) for v in src.service_accounts],
        not_service_accounts=[
            service_account_match(v, namespace) for v in src.not_service_accounts
        ],
    )


_CONDITION_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "source.ip": ("source_ips", address),
    "source.namespace": ("namespaces", string_match),
    "source.principal": ("principals", string_match),
    "destination.ip": ("destination_ips", address),
    "destination.port": ("destination_ports", int),
}


def _condition_match(condition: Condition) -> Any:
    """One ``when`` as a match; an L7 key gives an empty match (skipped by ztunnel)."""
    match = sec.Match()
    if condition.key in _CONDITION_FIELDS:
        field, convert = _CONDITION_FIELDS[condition.key]
        _extend(getattr(match, field), condition.values, convert)
        _extend(getattr(match, f"not_{field}"), condition.not_values, convert)
    return match


def _extend(target: Any, values: Sequence[str], convert: Callable[[str], Any]) -> None:
    target.extend(convert(v) for v in values)
