"""L7 ``AuthorizationPolicy`` at a waypoint or gateway, as Envoy's RBAC HTTP filters.

Istio's semantics, built the way istiod builds them (one Envoy ``Policy`` per rule,
named ``ns[<ns>]-policy[<name>]-rule[<index>]``):

- one RBAC filter per action, in the order Envoy evaluates them: ``AUDIT`` (action
  LOG: only marks the request), then ``DENY``, then ``ALLOW``; no ALLOW policy means
  no ALLOW filter (everything not denied passes), an ALLOW policy without rules
  allows nothing; a denied request is answered ``403 RBAC: access denied`` and
  counted in ``http.<prefix>.rbac.denied``;
- rules are OR-ed, the parts of a rule (``from``, ``to``, ``when``) AND-ed, the
  entries of one ``from`` or ``to`` list OR-ed, the values of one field OR-ed, a
  ``not*`` field negates the OR of its values;
- strings take Istio's wildcards: ``*`` (present), ``prefix*``, ``*suffix``;
- a policy annotated ``istio.io/dry-run: "true"`` goes to ``shadow_rules``.

A waypoint sees the client's identity not on its own TLS connection (the inner
HTTP connection manager sits behind the HBONE terminator) but in filter state
shared from the outer connection (``hbone.PEER_PRINCIPAL_KEY``, the peer's
``spiffe://`` URI); principals match there. Source addresses and the destination
port are the inner connection's, which the terminator restores from the tunnel. A
gateway's principals would be its downstream TLS peer (:attr:`PeerIdentity.TLS`).

``CUSTOM`` policies (external authorizers) are not translated: ``ambient controlplane
validate`` says so. JWT attributes (``requestPrincipals``, ``request.auth.*``) are
evaluated as absent, since nothing validates tokens: a positive match never holds,
a negated one always does (what Istio does for a request without a token).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import filter_state_pb2, path_pb2, regex_pb2, string_pb2

from controlplane.envoy.clusters import packed
from controlplane.envoy.hbone import PEER_PRINCIPAL_KEY
from controlplane.model import (
    AuthorizationAction,
    AuthorizationPolicy,
    ClusterState,
    Condition,
    Operation,
    Rule,
    Service,
    Severity,
    Source,
)
from controlplane.sources.fields import Problem
from controlplane.workloadapi.mesh import MeshConfig

RBAC_FILTER = "envoy.filters.http.rbac"
"""The HTTP filter name (one instance per action, as istiod emits them)."""
RBAC_NETWORK_FILTER = "envoy.filters.network.rbac"
"""The network filter name, for TCP chains."""
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
"""A ``GatewayClass`` target in the root namespace attaches a policy to every waypoint."""
DRY_RUN_STAT_PREFIX = "istio_dry_run_"
"""Prefix of the shadow-rule stats of dry-run policies (istiod's)."""
JWT_CONDITION_PREFIX = "request.auth."
ACTION_ORDER = (AuthorizationAction.AUDIT, AuthorizationAction.DENY, AuthorizationAction.ALLOW)
"""The order of the RBAC filters in the HTTP connection manager."""

_ENVOY_ACTION = {
    AuthorizationAction.AUDIT: rbac_pb2.RBAC.LOG,
    AuthorizationAction.DENY: rbac_pb2.RBAC.DENY,
    AuthorizationAction.ALLOW: rbac_pb2.RBAC.ALLOW,
}
_HTTP_ONLY_CONDITIONS = ("request.", "experimental.")
"""``when`` keys a TCP connection does not have (headers, JWT, Envoy attributes)."""
_HEADER_CONDITION = re.compile(r"^request\.headers\[(.+)\]$")


class PeerIdentity(enum.Enum):
    """Where the client's identity is read from."""

    FILTER_STATE = "filter_state"
    """A waypoint: the HBONE terminator's peer, in filter state (:data:`PEER_PRINCIPAL_KEY`)."""
    TLS = "tls"
    """A gateway terminating the client's TLS itself: the peer certificate's URI SAN."""


# --- which policies apply -------------------------------------------------------------------


def _targets(policy: AuthorizationPolicy, kind: str, namespace: str, name: str) -> bool:
    return any(
        ref.kind == kind and ref.name == name and (ref.namespace or policy.namespace) == namespace
        for ref in policy.target_refs
    )


def waypoint_policies(
    state: ClusterState,
    gateway: tuple[str, str],
    service: Service | None,
    mesh: MeshConfig | None = None,
) -> list[AuthorizationPolicy]:
    """The policies a waypoint enforces for ``service`` (None: its own traffic only).

    As Istio's ambient mode attaches them: ``targetRefs`` naming the waypoint's
    ``Gateway`` (kind Gateway, in the policy's namespace), the ``Service`` (kind
    Service, same namespace), or the ``GatewayClass`` ``istio-waypoint`` from the root
    namespace. Selector and selector-less policies are ztunnel's, not the waypoint's.
    Sorted by (namespace, name).
    """
    mesh = mesh or MeshConfig()
    gw_namespace, gw_name = gateway
    found = []
    for policy in state.authorization_policies.values():
        if policy.action is AuthorizationAction.CUSTOM:
            continue
        if (
            _targets(policy, "Gateway", gw_namespace, gw_name)
            or (
                service is not None and _targets(policy, "Service", service.namespace, service.name)
            )
            or (
                policy.namespace == mesh.root_namespace
                and _targets(policy, "GatewayClass", policy.namespace, WAYPOINT_GATEWAY_CLASS)
            )
        ):
            found.append(policy)
    return sorted(found, key=lambda p: p.key)


def rbac_filters(
    state: ClusterState,
    gateway: tuple[str, str],
    service: Service | None,
    mesh: MeshConfig | None = None,
    *,
    port: int | None = None,
) -> list[Any]:
    """The RBAC ``HttpFilter``s of a waypoint's HTTP chain for ``service``.

    ``gateway`` is the waypoint's (namespace, name); ``port``, when the chain serves
    one service port, decides ``ports`` conditions when translated (otherwise they
    match Envoy's destination port). Empty when no policy applies. The filters go
    before the router, in the order returned.
    """
    policies = waypoint_policies(state, gateway, service, mesh)
    return build_rbac_filters(policies, port=port, peer=PeerIdentity.FILTER_STATE)


def build_rbac_filters(
    policies: Iterable[AuthorizationPolicy],
    *,
    port: int | None = None,
    peer: PeerIdentity = PeerIdentity.FILTER_STATE,
) -> list[Any]:
    """The RBAC filters enforcing ``policies`` (any attachment), AUDIT, DENY, ALLOW."""
    filters = []
    for _, config in _configs(policies, _Builder(port, peer), http_rbac_pb2.RBAC):
        filters.append(hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=packed(config)))
    return filters


def rbac_network_filters(
    state: ClusterState,
    gateway: tuple[str, str],
    service: Service | None,
    mesh: MeshConfig | None = None,
    *,
    port: int | None = None,
) -> list[Any]:
    """The network RBAC filters of a waypoint's TCP chain for ``service`` (go before
    the TCP proxy): the same policies as :func:`rbac_filters`, with Istio's rule for
    connections that carry no HTTP: an ALLOW rule using HTTP-only attributes (hosts,
    methods, paths, request headers, JWT) matches nothing; a DENY or AUDIT rule is
    enforced without them (it denies more)."""
    policies = waypoint_policies(state, gateway, service, mesh)
    return build_rbac_network_filters(policies, port=port, peer=PeerIdentity.FILTER_STATE)


def build_rbac_network_filters(
    policies: Iterable[AuthorizationPolicy],
    *,
    port: int | None = None,
    peer: PeerIdentity = PeerIdentity.FILTER_STATE,
) -> list[Any]:
    """Network-level RBAC filters (``listener.Filter``) for ``policies``, see
    :func:`rbac_network_filters`."""
    filters = []
    for action, config in _configs(policies, _Builder(port, peer, tcp=True), network_rbac_pb2.RBAC):
        config.stat_prefix = f"tcp.{action.value.lower()}."
        filters.append(
            listener_components_pb2.Filter(name=RBAC_NETWORK_FILTER, typed_config=packed(config))
        )
    return filters


def _configs(
    policies: Iterable[AuthorizationPolicy], build: _Builder, message: Any
) -> list[tuple[AuthorizationAction, Any]]:
    by_action: dict[AuthorizationAction, list[AuthorizationPolicy]] = {}
    for policy in policies:
        by_action.setdefault(policy.action, []).append(policy)
    return [
        (action, _rbac_config(action, by_action[action], build, message()))
        for action in ACTION_ORDER
        if action in by_action
    ]


def _rbac_config(
    action: AuthorizationAction,
    policies: Sequence[AuthorizationPolicy],
    build: _Builder,
    config: Any,
) -> Any:
    envoy_action = _ENVOY_ACTION[action]
    enforced = [p for p in policies if not p.dry_run]
    shadow = [p for p in policies if p.dry_run]
    if enforced:
        # Presence matters: ALLOW rules with no policy deny everything.
        config.rules.action = envoy_action
        for policy in enforced:
            for name, envoy_policy in build.policy(policy):
                config.rules.policies[name].CopyFrom(envoy_policy)
    if shadow:
        config.shadow_rules.action = envoy_action
        config.shadow_rules_stat_prefix = f"{DRY_RUN_STAT_PREFIX}{action.value.lower()}_"
        for policy in shadow:
            for name, envoy_policy in build.policy(policy):
                config.shadow_rules.policies[name].CopyFrom(envoy_policy)
    return config


def _without_http(rule: Rule) -> tuple[Rule, bool]:
    """``rule`` without its HTTP-only attributes, and whether it had any."""
    operations = tuple(
        replace(op, hosts=(), not_hosts=(), methods=(), not_methods=(), paths=(), not_paths=())
        for op in rule.operations
    )
    sources = tuple(
        replace(s, request_principals=(), not_request_principals=()) for s in rule.sources
    )
    conditions = tuple(c for c in rule.conditions if not c.key.startswith(_HTTP_ONLY_CONDITIONS))
    reduced = Rule(sources, operations, conditions)
    return reduced, reduced != rule


# --- string matching --------------------------------------------------------------------------


def string_matcher(value: str, prefix: str = "", *, ignore_case: bool = False) -> Any:
    """Istio's wildcard string (``*``, ``a*``, ``*a``, exact) after a fixed ``prefix``."""
    if value == "*":
        return string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=f"{re.escape(prefix)}.+")
        )
    if value.startswith("*"):
        if not prefix:
            return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
        pattern = f"{re.escape(prefix)}.*{re.escape(value[1:])}"
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _segment(value: str) -> str:
    """A wildcard value as a regex for one ``/``-free path segment."""
    if value == "*":
        return "[^/]+"
    if value.startswith("*"):
        return f"[^/]*{re.escape(value[1:])}"
    if value.endswith("*"):
        return f"{re.escape(value[:-1])}[^/]*"
    return re.escape(value)


def _regex(pattern: str) -> Any:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def _host_matcher(value: str) -> Any:
    """``hosts``: the ``:authority`` with or without a port, any case (Istio's rule)."""
    if value == "*":
        return _regex(".+")
    body = _segment(value).replace("[^/]", ".") if "*" in value else re.escape(value)
    return _regex(f"(?i){body}(:[0-9]+)?")


def _cidr(value: str) -> Any:
    network = ipaddress.ip_network(value, strict=False)
    out = address_pb2.CidrRange(address_prefix=str(network.network_address))
    out.prefix_len.value = network.prefixlen
    return out


# --- rules ------------------------------------------------------------------------------------


class _Builder:
    """Builds permissions and principals of one filter."""

    def __init__(self, port: int | None, peer: PeerIdentity, *, tcp: bool = False) -> None:
        self.port = port
        self.peer = peer
        self.tcp = tcp

    def policy(self, policy: AuthorizationPolicy) -> list[tuple[str, Any]]:
        """One Envoy policy per rule (none for a rule-less policy); for TCP, rules
        reduced to what a connection shows (see :func:`rbac_network_filters`)."""
        prefix = f"ns[{policy.namespace}]-policy[{policy.name}]"
        out = []
        for i, written in enumerate(policy.rules):
            rule = written
            if self.tcp:
                rule, had_http = _without_http(written)
                if had_http and policy.action is AuthorizationAction.ALLOW:
                    continue
            out.append((f"{prefix}-rule[{i}]", self.rule(rule, policy.namespace)))
        return out

    def rule(self, rule: Rule, namespace: str) -> Any:
        """A rule: any ``to`` entry (and the ``when`` request parts) and any ``from``
        entry (and the ``when`` source parts)."""
        perm_conditions = [
            p for c in rule.conditions if (p := self.condition_permission(c)) is not None
        ]
        id_conditions = [
            p for c in rule.conditions if (p := self.condition_principal(c, namespace)) is not None
        ]
        operations = rule.operations or (Operation(),)
        sources = rule.sources or (Source(),)
        return rbac_pb2.Policy(
            permissions=[_all_rules([*self.operation(op), *perm_conditions]) for op in operations],
            principals=[
                _all_ids([*self.source(src, namespace), *id_conditions]) for src in sources
            ],
        )

    # permissions (what is asked for)

    def operation(self, op: Operation) -> list[Any]:
        """The permission parts of one ``to.operation``."""
        out: list[Any] = []
        out += _field_rules(op.hosts, op.not_hosts, self._authority)
        out += _field_rules(op.methods, op.not_methods, _method)
        out += _field_rules(op.paths, op.not_paths, _path)
        out += self._ports(op.ports, op.not_ports)
        return out

    def _authority(self, value: str) -> Any:
        return rbac_pb2.Permission(
            header=rc.HeaderMatcher(name=":authority", string_match=_host_matcher(value))
        )

    def _ports(self, ports: Sequence[int], not_ports: Sequence[int]) -> list[Any]:
        if self.port is None:
            return _field_rules(ports, not_ports, _port)
        # The chain serves one port: decide here rather than ask Envoy, whose local
        # port behind the HBONE terminator is an internal listener's.
        out = []
        if ports and self.port not in ports:
            out.append(_NO_PERMISSION)
        if self.port in not_ports:
            out.append(_NO_PERMISSION)
        return out

    def condition_permission(self, cond: Condition) -> Any | None:
        """The permission part of a ``when`` condition (None: it is a principal's)."""
        if cond.key == "destination.port":
            ports = [int(v) for v in cond.values if v.isdigit()]
            not_ports = [int(v) for v in cond.not_values if v.isdigit()]
            return _all_rules(self._ports(ports, not_ports))
        if cond.key == "destination.ip":
            return _all_rules(_field_rules(cond.values, cond.not_values, _destination_ip))
        if cond.key == "connection.sni":
            return _all_rules(_field_rules(cond.values, cond.not_values, _sni))
        return None

    # principals (who is asking)

    def source(self, src: Source, namespace: str) -> list[Any]:
        """The principal parts of one ``from.source``."""
        out: list[Any] = []
        out += _field_ids(src.principals, src.not_principals, self._principal)
        out += _field_ids(src.namespaces, src.not_namespaces, self._namespace)
        out += _field_ids(
            src.service_accounts,
            src.not_service_accounts,
            lambda v: self._service_account(v, namespace),
        )
        out += _field_ids(src.trust_domains, src.not_trust_domains, self._trust_domain)
        out += _field_ids(src.ip_blocks, src.not_ip_blocks, _direct_ip)
        out += _field_ids(src.remote_ip_blocks, src.not_remote_ip_blocks, _remote_ip)
        out += _absent(src.request_principals, src.not_request_principals)
        return out

    def condition_principal(self, cond: Condition, namespace: str) -> Any | None:
        """The principal part of a ``when`` condition (None: it is a permission's)."""
        values, nots = cond.values, cond.not_values
        if (header := _HEADER_CONDITION.match(cond.key)) is not None:
            name = header.group(1).lower()
            return _all_ids(_field_ids(values, nots, lambda v: _header_id(name, v)))
        by_key: dict[str, Callable[[str], Any]] = {
            "source.principal": self._principal,
            "source.namespace": self._namespace,
            "source.serviceAccount": lambda v: self._service_account(v, namespace),
            "source.ip": _direct_ip,
            "remote.ip": _remote_ip,
        }
        if cond.key in by_key:
            return _all_ids(_field_ids(values, nots, by_key[cond.key]))
        if cond.key in ("destination.port", "destination.ip", "connection.sni"):
            return None
        # JWT claims and anything else this waypoint cannot see: absent, as Istio
        # evaluates them without a validated token.
        return _all_ids(_absent(values, nots))

    def _identity(self, matcher: Any) -> Any:
        if self.peer is PeerIdentity.TLS:
            return rbac_pb2.Principal(
                authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher)
            )
        return rbac_pb2.Principal(
            filter_state=filter_state_pb2.FilterStateMatcher(
                key=PEER_PRINCIPAL_KEY, string_match=matcher
            )
        )

    def _principal(self, value: str) -> Any:
        return self._identity(string_matcher(value, "spiffe://"))

    def _namespace(self, value: str) -> Any:
        return self._identity(_regex(f"spiffe://[^/]+/ns/{_segment(value)}/sa/[^/]+"))

    def _service_account(self, value: str, namespace: str) -> Any:
        ns, _, sa = value.rpartition("/")
        pattern = f"spiffe://[^/]+/ns/{re.escape(ns or namespace)}/sa/{re.escape(sa)}"
        return self._identity(_regex(pattern))

    def _trust_domain(self, value: str) -> Any:
        return self._identity(_regex(f"spiffe://{_segment(value)}/.*"))


_NO_PERMISSION = rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))
_NO_PRINCIPAL = rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))


def _all_rules(parts: Sequence[Any]) -> Any:
    if not parts:
        return rbac_pb2.Permission(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=list(parts)))


def _all_ids(parts: Sequence[Any]) -> Any:
    if not parts:
        return rbac_pb2.Principal(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=list(parts)))


def _field_rules(
    values: Sequence[Any], nots: Sequence[Any], one: Callable[[Any], Any]
) -> list[Any]:
    """A field's values OR-ed, and its ``not*`` values' OR negated."""
    out = []
    if values:
        out.append(rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=map(one, values))))
    if nots:
        negated = rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=map(one, nots)))
        out.append(rbac_pb2.Permission(not_rule=negated))
    return out


def _field_ids(values: Sequence[str], nots: Sequence[str], one: Callable[[str], Any]) -> list[Any]:
    """A field's values OR-ed, and its ``not*`` values' OR negated."""
    out = []
    if values:
        out.append(rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=map(one, values))))
    if nots:
        negated = rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=map(one, nots)))
        out.append(rbac_pb2.Principal(not_id=negated))
    return out


def _absent(values: Sequence[str], nots: Sequence[str]) -> list[Any]:
    """An attribute that is never there: its values never match, its ``not*`` always."""
    return [_NO_PRINCIPAL] if values else []


def _method(value: str) -> Any:
    return rbac_pb2.Permission(
        header=rc.HeaderMatcher(name=":method", string_match=string_matcher(value))
    )


def _path(value: str) -> Any:
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_matcher(value)))


def _port(value: int) -> Any:
    return rbac_pb2.Permission(destination_port=value)


def _destination_ip(value: str) -> Any:
    return rbac_pb2.Permission(destination_ip=_cidr(value))


def _sni(value: str) -> Any:
    return rbac_pb2.Permission(requested_server_name=string_matcher(value))


def _direct_ip(value: str) -> Any:
    return rbac_pb2.Principal(direct_remote_ip=_cidr(value))


def _remote_ip(value: str) -> Any:
    return rbac_pb2.Principal(remote_ip=_cidr(value))


def _header_id(name: str, value: str) -> Any:
    return rbac_pb2.Principal(
        header=rc.HeaderMatcher(name=name, string_match=string_matcher(value))
    )


# --- what validate says ----------------------------------------------------------------------


def policy_problems(policy: AuthorizationPolicy) -> list[Problem]:
    """What waypoints and gateways do not do with ``policy``: CUSTOM is an error,
    attributes evaluated as absent (JWT, Envoy-specific ones) are warnings."""
    if policy.action is AuthorizationAction.CUSTOM:
        return [
            Problem(
                "spec.action",
                f"CUSTOM (external authorizer {policy.provider!r}) is not supported: "
                "neither waypoints nor gateways enforce this policy; write it as ALLOW or "
                "DENY rules",
            )
        ]
    out: list[Problem] = []
    for i, rule in enumerate(policy.rules):
        absent = [
            c.key
            for c in rule.conditions
            if c.key.startswith((JWT_CONDITION_PREFIX, "experimental."))
        ]
        if any(s.request_principals or s.not_request_principals for s in rule.sources):
            absent.insert(0, "requestPrincipals")
        if absent:
            out.append(
                Problem(
                    f"spec.rules[{i}]",
                    f"{', '.join(absent)}: not supported at waypoints (no request "
                    "authentication); evaluated as absent: values never match, notValues "
                    "always do",
                    Severity.WARNING,
                )
            )
    return out
