"""PeerAuthentication as ztunnel receives it: DENY authorizations, as istiod sends them.

- ``<root>/istio_converted_static_strict`` (WORKLOAD_SELECTOR, DENY, a single match
  ``not_principals: [presence]``: refuse plaintext) exists whenever any
  PeerAuthentication does; every workload whose effective mode is STRICT lists it.
- A workload-selected policy with port-level modes that differ from its effective
  mode becomes ``<ns>/converted_peer_authentication_<name>`` (DENY plaintext on the
  STRICT ports only), which the selected workloads list instead.

The effective mode of a workload: its own selector policy's mode, else its
namespace's, else the mesh-wide one, else PERMISSIVE (UNSET inherits). Where several
policies compete at one level, the first by name wins (istiod takes the oldest).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from api.messages import security as sec
from controlplane.model import MtlsMode, PeerAuthentication, PolicyScope, selector_matches

STATIC_STRICT_NAME = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"


@dataclass(frozen=True)
class PeerPolicies:
    """The PeerAuthentications that bear on one workload, one per level."""

    mesh: PeerAuthentication | None
    namespace: PeerAuthentication | None
    workload: PeerAuthentication | None

    def inherited_mode(self) -> MtlsMode:
        """The mode from namespace or mesh level (what UNSET on the workload means)."""
        for policy in (self.namespace, self.mesh):
            if policy is not None and policy.mode is not MtlsMode.UNSET:
                return policy.mode
        return MtlsMode.PERMISSIVE

    def effective_mode(self) -> MtlsMode:
        """The workload-level mode after inheritance (never UNSET)."""
        if self.workload is not None and self.workload.mode is not MtlsMode.UNSET:
            return self.workload.mode
        return self.inherited_mode()


def policies_for(
    namespace: str,
    labels: Mapping[str, str] | None,
    peer_authentications: Iterable[PeerAuthentication],
    root_namespace: str,
) -> PeerPolicies:
    """The mesh, namespace and workload policies for a workload's namespace and labels.

    ``labels=None`` asks for the mesh and namespace levels only.
    """
    levels: dict[PolicyScope, PeerAuthentication] = {}
    for pa in sorted(peer_authentications, key=lambda p: (p.namespace, p.name)):
        scope = pa.scope(root_namespace)
        if scope is PolicyScope.MESH:
            levels.setdefault(scope, pa)
        elif pa.namespace != namespace or pa.namespace == root_namespace:
            continue
        elif scope is PolicyScope.NAMESPACE or _selects(pa, labels):
            levels.setdefault(scope, pa)
    return PeerPolicies(
        levels.get(PolicyScope.MESH),
        levels.get(PolicyScope.NAMESPACE),
        levels.get(PolicyScope.WORKLOAD),
    )


def _selects(pa: PeerAuthentication, labels: Mapping[str, str] | None) -> bool:
    return labels is not None and selector_matches(pa.selector or {}, labels)


def _is_strict(mode: MtlsMode) -> bool:
    return mode is MtlsMode.STRICT


def converted_message(pa: PeerAuthentication, inherited: MtlsMode) -> Any | None:
    """The DENY authorization for a selector policy with port-level modes, or None.

    Laid out as istiod does: one rule per STRICT port under a non-STRICT workload
    (deny plaintext to that port), and one rule whose clauses deny plaintext except to
    the PERMISSIVE/DISABLE ports under a STRICT one. None means the static strict
    policy (or nothing) expresses the policy. ``inherited`` is the namespace/mesh mode.
    """
    if pa.selector is None or not pa.port_level_mtls:
        return None
    inherited_strict = _is_strict(inherited)
    top_strict = _is_strict(pa.mode) or (pa.mode is MtlsMode.UNSET and inherited_strict)
    rules: list[Any] = []
    clauses: list[Any] = []
    if _is_strict(pa.mode):
        clauses.append(_clause(not_principals=_no_principal()))
    found_loose = False
    for port, mode in sorted(pa.port_level_mtls.items()):
        if _is_strict(mode) and not top_strict:
            clause = _clause(not_principals=_no_principal(), destination_ports=[port])
            rules.append(sec.Rule(clauses=[clause]))
        elif mode in (MtlsMode.PERMISSIVE, MtlsMode.DISABLE) and top_strict:
            found_loose = True
            clauses.append(_clause(not_destination_ports=[port]))
    if _is_strict(pa.mode) and not found_loose:
        return None
    if found_loose and not _is_strict(pa.mode):
        # Strictness inherited from the namespace or mesh is merged in, so that the
        # workload can list this policy instead of the static strict one.
        clauses.append(_clause(not_principals=_no_principal()))
    if clauses:
        rules.append(sec.Rule(clauses=clauses))
    if not rules:
        return None
    return sec.Authorization(
        name=CONVERTED_PREFIX + pa.name,
        namespace=pa.namespace,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.DENY,
        rules=rules,
    )


def _no_principal() -> list[Any]:
    return [sec.StringMatch(presence={})]


def _clause(**match: Any) -> Any:
    return sec.Clause(matches=[sec.Match(**match)])


def static_strict_message(root_namespace: str) -> Any:
    """The shared policy that refuses plaintext to STRICT workloads."""
    return sec.Authorization(
        name=STATIC_STRICT_NAME,
        namespace=root_namespace,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.DENY,
        rules=[sec.Rule(clauses=[_clause(not_principals=_no_principal())])],
    )


def workload_policy_names(
    levels: PeerPolicies, converted: Mapping[tuple[str, str], Any], root_namespace: str
) -> list[str]:
    """The peer-authentication policies a workload lists (``<ns>/<name>``)."""
    if levels.workload is not None:
        key = (levels.workload.namespace, levels.workload.name)
        message = converted.get(key)
        if message is not None:
            return [f"{message.namespace}/{message.name}"]
    if _is_strict(levels.effective_mode()):
        return [f"{root_namespace}/{STATIC_STRICT_NAME}"]
    return []
