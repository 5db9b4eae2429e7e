"""L4 authorization policies as ztunnel sees them (Istio's ``istio.security`` API).

An :class:`Authorization` holds rules -> clauses -> matches, exactly the nesting
of ``istio.security.Authorization``; :mod:`ztunnel.policy` evaluates them.
PeerAuthentication reaches ztunnel in the same form (DENY policies without a
principal), built here by :func:`static_strict_policy` and
:func:`peer_authentication_policy`, as istiod builds them.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, fields

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

STATIC_STRICT_POLICY = "istio_converted_static_strict"


class Scope(enum.Enum):
    """Which workloads a policy applies to."""

    GLOBAL = 0
    """Every workload (the policy lives in the root namespace)."""
    NAMESPACE = 1
    """Workloads in the policy's namespace."""
    WORKLOAD_SELECTOR = 2
    """Only workloads listing the policy in ``authorization_policies``."""


class Action(enum.Enum):
    """What a matching policy does."""

    ALLOW = 0
    DENY = 1


class StringMatchKind(enum.Enum):
    """How a :class:`StringMatch` compares."""

    EXACT = "Exact"
    PREFIX = "Prefix"
    SUFFIX = "Suffix"
    PRESENCE = "Presence"


@dataclass(frozen=True)
class StringMatch:
    """A string matcher: exact, prefix, suffix or presence (any non-empty value)."""

    kind: StringMatchKind
    value: str = ""

    @classmethod
    def from_pattern(cls, pattern: str) -> StringMatch:
        """Translate an Istio wildcard: ``*`` presence, ``*x`` suffix, ``x*`` prefix."""
        if pattern == "*":
            return cls(StringMatchKind.PRESENCE)
        if pattern.startswith("*"):
            return cls(StringMatchKind.SUFFIX, pattern[1:])
        if pattern.endswith("*"):
            return cls(StringMatchKind.PREFIX, pattern[:-1])
        return cls(StringMatchKind.EXACT, pattern)

    def matches(self, text: str) -> bool:
        """Whether ``text`` satisfies this matcher."""
        if self.kind is StringMatchKind.EXACT:
            return text == self.value
        if self.kind is StringMatchKind.PREFIX:
            return text.startswith(self.value)
        if self.kind is StringMatchKind.SUFFIX:
            return text.endswith(self.value)
        return text != ""


@dataclass(frozen=True)
class ServiceAccountMatch:
    """A source service account, ``namespace/service_account``."""

    namespace: str
    service_account: str


@dataclass(frozen=True)
class Match:
    """One match: different fields AND'ed, values within a field OR'ed.

    Each ``not_*`` list must not match. An empty list imposes nothing; a Match with
    every list empty matches nothing (Istio skips it).
    """

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    """Matched against the peer identity without ``spiffe://``."""
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IPNetwork, ...] = ()
    not_source_ips: tuple[IPNetwork, ...] = ()
    destination_ips: tuple[IPNetwork, ...] = ()
    not_destination_ips: tuple[IPNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()

    def is_empty(self) -> bool:
        """True when no field is set (such a match is skipped, matching nothing)."""
        return self._empty

    @functools.cached_property
    def _empty(self) -> bool:
        # Asked for every match of every policy on every connection: worked out once.
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Clause:
    """Matches OR'ed; a clause with no matches matches everything."""

    matches: tuple[Match, ...] = ()


@dataclass(frozen=True)
class Rule:
    """Clauses AND'ed (typically from / to / when)."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True)
class Authorization:
    """An L4 authorization policy (``istio.security.Authorization``)."""

    name: str
    """The policy's name."""
    namespace: str
    """The policy's namespace (the root namespace for GLOBAL policies)."""
    scope: Scope
    """Which workloads it applies to."""
    action: Action
    """ALLOW or DENY."""
    rules: tuple[Rule, ...] = ()
    """Rules OR'ed; a policy with no rules never matches."""
    dry_run: bool = False
    """Only log what the policy would decide; never enforce it."""

    @property
    def key(self) -> str:
        """The xDS resource name, ``"<namespace>/<name>"``."""
        return f"{self.namespace}/{self.name}"


class MtlsMode(enum.Enum):
    """PeerAuthentication ``mtls.mode`` (values as in istio/api)."""

    UNSET = 0
    DISABLE = 1
    PERMISSIVE = 2
    STRICT = 3


_PLAINTEXT = Match(not_principals=(StringMatch(StringMatchKind.PRESENCE),))
"""Matches a connection without a peer identity: plaintext."""


def static_strict_policy(root_namespace: str = "istio-system") -> Authorization:
    """The DENY-plaintext policy istiod binds to every workload whose mode is STRICT.

    STRICT mTLS reaches ztunnel as this selector-scoped DENY: a connection without a
    principal (plaintext) matches and is refused.
    """
    return Authorization(
        name=STATIC_STRICT_POLICY,
        namespace=root_namespace,
        scope=Scope.WORKLOAD_SELECTOR,
        action=Action.DENY,
        rules=(Rule(clauses=(Clause(matches=(_PLAINTEXT,)),)),),
    )


def peer_authentication_policy(
    namespace: str,
    name: str,
    mode: MtlsMode,
    port_modes: dict[int, MtlsMode],
) -> Authorization | None:
    """The DENY policy for a PeerAuthentication with port-level exceptions.

    ``mode`` is the effective workload-wide mode (UNSET already resolved by the
    caller to the inherited one). With STRICT, plaintext is refused except on ports
    set to PERMISSIVE/DISABLE; otherwise plaintext is refused only on ports set to
    STRICT. ``None`` when the result would refuse nothing beyond the static policy
    (no port exceptions) or nothing at all.
    """
    if not port_modes:
        return None
    strict_ports = tuple(sorted(p for p, m in port_modes.items() if m is MtlsMode.STRICT))
    relaxed_ports = tuple(
        sorted(p for p, m in port_modes.items() if m in (MtlsMode.PERMISSIVE, MtlsMode.DISABLE))
    )
    if mode is MtlsMode.STRICT:
        match = Match(not_principals=_PLAINTEXT.not_principals, not_destination_ports=relaxed_ports)
    elif strict_ports:
        match = Match(not_principals=_PLAINTEXT.not_principals, destination_ports=strict_ports)
    else:
        return None
    return Authorization(
        name=f"converted_peer_authentication_{name}",
        namespace=namespace,
        scope=Scope.WORKLOAD_SELECTOR,
        action=Action.DENY,
        rules=(Rule(clauses=(Clause(matches=(match,)),)),),
    )
