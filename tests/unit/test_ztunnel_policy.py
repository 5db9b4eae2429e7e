"""L4 authorization evaluation, table-tested against Istio's documented semantics."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztunnel.identity.spiffe import SpiffeId
from ztunnel.policy import ConnectionContext, authorize, match_matches, policy_matches
from ztunnel.state.security import (
    Action,
    Authorization,
    Clause,
    Match,
    MtlsMode,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    peer_authentication_policy,
    static_strict_policy,
)

FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
OTHER = "spiffe://cluster.local/ns/other/sa/client"


def ctx(
    identity: str | None = FRONTEND,
    src: str = "10.244.1.7",
    dst: str = "10.244.2.5",
    port: int = 8080,
):
    return ConnectionContext.of(identity, src, dst, port)


def s(*patterns: str) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.from_pattern(p) for p in patterns)


def nets(*cidrs: str):
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def policy(action: Action, *rules: Rule, name: str = "p", dry_run: bool = False) -> Authorization:
    return Authorization(name, "demo", Scope.NAMESPACE, action, tuple(rules), dry_run)


def one(match: Match) -> Rule:
    return Rule((Clause((match,)),))


@pytest.mark.parametrize(
    ("match", "context", "expected"),
    [
        # principals: exact, prefix, suffix, presence; compared without spiffe://
        (Match(principals=s("cluster.local/ns/demo/sa/frontend")), ctx(), True),
        (Match(principals=s("spiffe://cluster.local/ns/demo/sa/frontend")), ctx(), False),
        (Match(principals=s("cluster.local/ns/demo/*")), ctx(), True),
        (Match(principals=s("*/sa/frontend")), ctx(), True),
        (Match(principals=s("*/sa/backend")), ctx(), False),
        (Match(principals=s("*")), ctx(), True),
        (Match(principals=s("*")), ctx(None), False),
        (Match(principals=s("")), ctx(None), False),
        (Match(principals=s("*/sa/x", "*/sa/frontend")), ctx(), True),
        (Match(not_principals=s("*")), ctx(None), True),
        (Match(not_principals=s("*")), ctx(), False),
        (Match(not_principals=s("*/sa/frontend")), ctx(OTHER), True),
        # namespaces come from the identity only
        (Match(namespaces=s("demo")), ctx(), True),
        (Match(namespaces=s("demo")), ctx(OTHER), False),
        (Match(namespaces=s("de*")), ctx(), True),
        (Match(namespaces=s("*")), ctx(None), False),
        (Match(not_namespaces=s("demo")), ctx(OTHER), True),
        (Match(not_namespaces=s("demo")), ctx(None), True),
        # service accounts
        (Match(service_accounts=(ServiceAccountMatch("demo", "frontend"),)), ctx(), True),
        (Match(service_accounts=(ServiceAccountMatch("other", "frontend"),)), ctx(), False),
        (Match(service_accounts=(ServiceAccountMatch("demo", "frontend"),)), ctx(None), False),
        (Match(not_service_accounts=(ServiceAccountMatch("demo", "frontend"),)), ctx(None), True),
        # ip blocks
        (Match(source_ips=nets("10.244.1.0/24")), ctx(), True),
        (Match(source_ips=nets("10.244.2.0/24")), ctx(), False),
        (Match(source_ips=nets("10.244.2.0/24", "10.244.1.7/32")), ctx(), True),
        (Match(not_source_ips=nets("10.244.1.0/24")), ctx(), False),
        (Match(destination_ips=nets("10.244.2.5/32")), ctx(), True),
        (Match(not_destination_ips=nets("10.244.0.0/16")), ctx(), False),
        (Match(source_ips=nets("fd00::/8")), ctx(src="fd00::1"), True),
        # ports
        (Match(destination_ports=(8080,)), ctx(), True),
        (Match(destination_ports=(80, 443)), ctx(), False),
        (Match(not_destination_ports=(8080,)), ctx(), False),
        (Match(not_destination_ports=(9090,)), ctx(), True),
        # fields AND'ed; positive and negative of one field both apply
        (Match(namespaces=s("demo"), destination_ports=(8080,)), ctx(), True),
        (Match(namespaces=s("demo"), destination_ports=(9090,)), ctx(), False),
        (Match(principals=s("cluster.local/*"), not_principals=s("*/sa/frontend")), ctx(), False),
        # an empty match is skipped: it matches nothing
        (Match(), ctx(), False),
        (Match(), ctx(None), False),
    ],
)
def test_match(match: Match, context: ConnectionContext, expected: bool) -> None:
    assert match_matches(match, context) is expected


NS_DEMO = Match(namespaces=s("demo"))
PORT_9090 = Match(destination_ports=(9090,))
PORT_8080 = Match(destination_ports=(8080,))


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ((), False),  # a policy with no rules never matches
        ((Rule(()),), True),  # a rule with no clauses matches
        ((Rule((Clause(()),)),), True),  # a clause with no matches matches
        ((Rule((Clause((Match(),)),)),), False),  # a clause of only empty matches does not
        ((Rule((Clause((PORT_9090, NS_DEMO)),)),), True),  # matches in a clause are OR'ed
        ((Rule((Clause((NS_DEMO,)), Clause((PORT_9090,)))),), False),  # clauses AND'ed
        ((Rule((Clause((NS_DEMO,)), Clause((PORT_8080,)))),), True),
        ((one(PORT_9090), one(NS_DEMO)), True),  # rules OR'ed
        ((one(PORT_9090), one(Match(namespaces=s("x")))), False),
    ],
)
def test_policy_nesting(rules: tuple[Rule, ...], expected: bool) -> None:
    assert policy_matches(policy(Action.ALLOW, *rules), ctx()) is expected


def test_no_policy_allows() -> None:
    decision = authorize([], ctx())
    assert decision.allowed and decision.policy is None


def test_deny_wins_over_allow() -> None:
    allow = policy(Action.ALLOW, one(NS_DEMO), name="allow")
    deny = policy(Action.DENY, one(PORT_8080), name="deny")
    decision = authorize([allow, deny], ctx())
    assert not decision.allowed and decision.policy == "demo/deny"
    assert "DENY" in decision.reason


def test_non_matching_deny_alone_allows() -> None:
    assert authorize([policy(Action.DENY, one(PORT_9090))], ctx()).allowed


def test_allow_present_but_none_matching_denies() -> None:
    allow = policy(Action.ALLOW, one(Match(namespaces=s("other"))), name="a")
    decision = authorize([allow], ctx())
    assert not decision.allowed and "demo/a" in decision.reason
    assert authorize([allow], ctx(OTHER)).allowed


def test_allow_without_rules_denies_everything() -> None:
    # Istio: an ALLOW policy with no rules matches nothing, so it denies all.
    assert not authorize([policy(Action.ALLOW)], ctx()).allowed


def test_dry_run_policies_are_reported_not_enforced() -> None:
    deny = policy(Action.DENY, one(NS_DEMO), name="would-deny", dry_run=True)
    allow_other = policy(Action.ALLOW, one(Match(namespaces=s("x"))), name="only-x", dry_run=True)
    decision = authorize([deny, allow_other], ctx())
    assert decision.allowed
    assert decision.dry_run_matches == ("demo/would-deny",)


def test_strict_peer_authentication_refuses_plaintext_only() -> None:
    strict = static_strict_policy("istio-system")
    assert strict.key == "istio-system/istio_converted_static_strict"
    assert strict.scope is Scope.WORKLOAD_SELECTOR and strict.action is Action.DENY
    assert not authorize([strict], ctx(None)).allowed
    assert authorize([strict], ctx()).allowed


def test_port_level_peer_authentication() -> None:
    # STRICT with port 8080 PERMISSIVE: plaintext refused except on 8080.
    strict = peer_authentication_policy("demo", "pa", MtlsMode.STRICT, {8080: MtlsMode.PERMISSIVE})
    assert strict is not None and strict.name == "converted_peer_authentication_pa"
    assert authorize([strict], ctx(None, port=8080)).allowed
    assert not authorize([strict], ctx(None, port=9090)).allowed
    assert authorize([strict], ctx(port=9090)).allowed
    # PERMISSIVE with port 9090 STRICT: plaintext refused only on 9090.
    permissive = peer_authentication_policy(
        "demo", "pa", MtlsMode.PERMISSIVE, {9090: MtlsMode.STRICT}
    )
    assert permissive is not None
    assert authorize([permissive], ctx(None, port=8080)).allowed
    assert not authorize([permissive], ctx(None, port=9090)).allowed
    assert peer_authentication_policy("demo", "pa", MtlsMode.STRICT, {}) is None
    assert (
        peer_authentication_policy("demo", "pa", MtlsMode.PERMISSIVE, {80: MtlsMode.DISABLE})
        is None
    )


def test_context_source_namespace_comes_from_identity() -> None:
    assert ctx().source_namespace == "demo"
    assert ctx(None).source_namespace == ""
    assert ctx().source_identity == SpiffeId("cluster.local", "demo", "frontend")


# Properties over generated policies and connections.

identities = st.one_of(
    st.none(),
    st.builds(
        SpiffeId,
        st.sampled_from(["cluster.local", "example.org"]),
        st.sampled_from(["demo", "other", "istio-system"]),
        st.sampled_from(["default", "frontend", "backend"]),
    ),
)
contexts = st.builds(
    ConnectionContext,
    identities,
    st.sampled_from([ipaddress.ip_address(a) for a in ("10.244.1.7", "10.244.2.9", "192.0.2.1")]),
    st.sampled_from([ipaddress.ip_address(a) for a in ("10.244.2.5", "10.244.1.5")]),
    st.sampled_from([80, 8080, 9090]),
)
string_matches = st.lists(
    st.sampled_from(["*", "demo", "other", "cluster.local/*", "*/sa/frontend", "x*"]), max_size=2
).map(lambda ps: s(*ps))
matches = st.builds(
    Match,
    namespaces=string_matches,
    not_namespaces=string_matches,
    principals=string_matches,
    not_principals=string_matches,
    source_ips=st.lists(st.sampled_from(nets("10.244.1.0/24", "0.0.0.0/0")), max_size=1).map(tuple),
    destination_ports=st.lists(st.sampled_from([80, 8080]), max_size=2).map(tuple),
    not_destination_ports=st.lists(st.sampled_from([9090]), max_size=1).map(tuple),
)
rules = st.lists(
    st.builds(
        Rule,
        st.lists(st.builds(Clause, st.lists(matches, max_size=2).map(tuple)), max_size=2).map(
            tuple
        ),
    ),
    max_size=2,
).map(tuple)
policies = st.builds(
    Authorization,
    name=st.sampled_from(["a", "b", "c"]),
    namespace=st.just("demo"),
    scope=st.just(Scope.NAMESPACE),
    action=st.sampled_from(list(Action)),
    rules=rules,
)


@given(st.lists(policies, max_size=4), contexts)
def test_property_decision_follows_deny_then_allow(
    pols: list[Authorization], c: ConnectionContext
) -> None:
    denied = any(p.action is Action.DENY and policy_matches(p, c) for p in pols)
    allows = [p for p in pols if p.action is Action.ALLOW]
    expected = not denied and (not allows or any(policy_matches(p, c) for p in allows))
    assert authorize(pols, c).allowed is expected


@given(st.lists(policies, max_size=4), contexts)
def test_property_adding_a_matching_deny_always_refuses(
    pols: list[Authorization], c: ConnectionContext
) -> None:
    catch_all = policy(Action.DENY, Rule(()), name="zz-catch-all")
    decision = authorize([*pols, catch_all], c)
    assert not decision.allowed


@given(st.lists(policies, max_size=4), contexts)
def test_property_policies_without_rules_never_change_the_outcome(
    pols: list[Authorization], c: ConnectionContext
) -> None:
    inert_deny = policy(Action.DENY, name="inert")
    assert authorize([*pols, inert_deny], c).allowed is authorize(pols, c).allowed


@given(string_matches.filter(bool), contexts)
def test_property_a_field_and_its_negation_never_both_match(values, c: ConnectionContext) -> None:
    assert not match_matches(Match(principals=values, not_principals=values), c)
    assert not match_matches(Match(namespaces=values, not_namespaces=values), c)
