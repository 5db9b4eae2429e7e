"""L4 authorization: Istio's evaluation of ``istio.security.Authorization`` policies.

Semantics (Istio ztunnel ``rbac.rs``, DESIGN.md section 5):

* a policy with no rules never matches; rules are OR'ed, the clauses of a rule
  AND'ed, the matches of a clause OR'ed (a clause with no matches matches anything);
* in one match, the field types are AND'ed; each positive list must have one value
  matching, each ``not_*`` list must have none; an empty list imposes nothing; a
  match with every list empty is skipped (matches nothing);
* principals are compared without ``spiffe://``; a connection without a peer
  identity (plaintext) has no principal, no namespace and no service account;
* any enforced DENY that matches rejects; with no enforced ALLOW the connection is
  allowed; otherwise some ALLOW must match. Dry-run policies are only reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ztunnel.identity.spiffe import SpiffeId
from ztunnel.state.security import Action, Authorization, Match, ServiceAccountMatch
from ztunnel.state.workload import IPAddress

T = TypeVar("T")


@dataclass(frozen=True)
class ConnectionContext:
    """What an L4 policy may look at about one inbound connection."""

    source_identity: SpiffeId | None
    """The peer's verified SPIFFE identity; ``None`` for plaintext."""
    source_ip: IPAddress
    """The original client IP."""
    destination_ip: IPAddress
    """The destination workload IP."""
    destination_port: int
    """The destination (target) port."""

    @classmethod
    def of(
        cls,
        source_identity: SpiffeId | str | None,
        source_ip: str | IPAddress,
        destination_ip: str | IPAddress,
        destination_port: int,
    ) -> ConnectionContext:
        """Build a context from text forms (handy at edges and in tests)."""
        identity = (
            SpiffeId.parse(source_identity) if isinstance(source_identity, str) else source_identity
        )
        return cls(
            identity,
            ipaddress.ip_address(source_ip),
            ipaddress.ip_address(destination_ip),
            destination_port,
        )

    @property
    def source_namespace(self) -> str:
        """The source namespace, from the identity only (empty for plaintext)."""
        return self.source_identity.namespace if self.source_identity else ""

    @property
    def source_principal(self) -> str:
        """The principal policies match (identity without ``spiffe://``), or empty."""
        return self.source_identity.principal if self.source_identity else ""


@dataclass(frozen=True)
class Decision:
    """The outcome of authorizing one connection."""

    allowed: bool
    """Whether the connection may proceed."""
    reason: str
    """Why, in words fit for a log line."""
    policy: str | None = None
    """The key of the deciding policy (the matching DENY or ALLOW), if one decided."""
    dry_run_matches: tuple[str, ...] = ()
    """Dry-run policies that matched (logged, not enforced)."""


def _field_matches(
    positive: tuple[T, ...], negative: tuple[T, ...], test: Callable[[T], bool]
) -> bool:
    if positive and not any(test(v) for v in positive):
        return False
    return not any(test(v) for v in negative)


def _service_account_matches(sa: ServiceAccountMatch, identity: SpiffeId | None) -> bool:
    return (
        identity is not None
        and identity.namespace == sa.namespace
        and identity.service_account == sa.service_account
    )


def match_matches(match: Match, ctx: ConnectionContext) -> bool:
    """Whether one :class:`Match` accepts ``ctx`` (an empty match accepts nothing)."""
    if match.is_empty():
        return False
    identity = ctx.source_identity
    # Only the fields a match sets are tested (most set one or two): this runs for every
    # match of every policy that applies, on every new connection.
    return (
        (not (match.destination_ips or match.not_destination_ips)
         or _field_matches(match.destination_ips, match.not_destination_ips,
                           lambda net: ctx.destination_ip in net))
        and (not (match.source_ips or match.not_source_ips)
             or _field_matches(match.source_ips, match.not_source_ips,
                               lambda net: ctx.source_ip in net))
        and (not (match.destination_ports or match.not_destination_ports)
             or _field_matches(match.destination_ports, match.not_destination_ports,
                               lambda port: port == ctx.destination_port))
        and (not (match.service_accounts or match.not_service_accounts)
             or _field_matches(match.service_accounts, match.not_service_accounts,
                               lambda sa: _service_account_matches(sa, identity)))
        # Without an identity there is no principal at all: even an empty-string
        # pattern must not match it, as in Istio.
        and (not (match.principals or match.not_principals)
             or _field_matches(match.principals, match.not_principals,
                               lambda sm: identity is not None
                               and sm.matches(ctx.source_principal)))
        and (not (match.namespaces or match.not_namespaces)
             or _field_matches(match.namespaces, match.not_namespaces,
                               lambda sm: sm.matches(ctx.source_namespace)))
    )  # fmt: skip


def policy_matches(policy: Authorization, ctx: ConnectionContext) -> bool:
    """Whether ``policy``'s rules match ``ctx`` (regardless of its action)."""
    return any(
        all(
            not clause.matches or any(match_matches(m, ctx) for m in clause.matches)
            for clause in rule.clauses
        )
        for rule in policy.rules
    )


def authorize(policies: Iterable[Authorization], ctx: ConnectionContext) -> Decision:
    """Decide whether ``ctx`` may connect, given the policies that apply to its destination."""
    enforced: list[Authorization] = []
    dry_run: list[str] = []
    for policy in policies:
        if policy.dry_run:
            if policy_matches(policy, ctx):
                dry_run.append(policy.key)
        else:
            enforced.append(policy)
    dry = tuple(dry_run)
    for policy in enforced:
        if policy.action is Action.DENY and policy_matches(policy, ctx):
            return Decision(False, f"denied by DENY policy {policy.key}", policy.key, dry)
    allows = [p for p in enforced if p.action is Action.ALLOW]
    if not allows:
        return Decision(True, "no ALLOW policy applies", None, dry)
    for policy in allows:
        if policy_matches(policy, ctx):
            return Decision(True, f"allowed by ALLOW policy {policy.key}", policy.key, dry)
    return Decision(
        False,
        f"no ALLOW policy matched (of {', '.join(p.key for p in allows)})",
        None,
        dry,
    )
