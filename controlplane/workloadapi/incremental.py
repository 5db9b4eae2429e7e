"""Translation for a stream of cluster states, redoing only what each change touches.

:func:`~controlplane.workloadapi.translate` costs about 0.1 ms per pod: half a second
at 5,000 pods, on every change. :class:`IncrementalTranslator` keeps the previous
state and its messages, rebuilds the per-state context (authorizations, the service
index, peer policies: their cost grows with policies and services, not pods) and
re-translates only the workloads a change can affect:

- a pod added, changed or removed: that pod;
- a Namespace changed: the pods of that namespace (enrollment);
- a Service changed: the pods of its namespace its old or new selector picks;
- an AuthorizationPolicy changed: the pods of its namespace its old or new selector
  picks (namespace- and mesh-wide policies are not listed by workloads);
- a PeerAuthentication changed: the pods of its namespace, or every pod when it is in
  the root namespace (mesh-wide);
- a Namespace changed: also its services (``istio.io/use-waypoint`` on the namespace);
- a Gateway changed, or a waypoint's Service (its address): every service and workload
  (waypoint bindings can cross namespaces);
- other mesh settings: everything.

Unchanged resources keep their message objects (the same ``is``), so the serializer
(``controlplane.server``) re-encodes only the new ones. The result equals a full
translation (``tests/unit/test_controlplane_perf_incremental.py`` checks it after
random change sequences).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from api.messages import workload_resource_name
from controlplane.model import GATEWAY_NAME_LABEL, ClusterState, Pod, selector_matches
from controlplane.workloadapi import Snapshot, TranslationContext, service_address, translate
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.workloadapi.services import is_served
from controlplane.workloadapi.workloads import is_sent

K = TypeVar("K")
V = TypeVar("V")

EVERY_POD = None
"""The marker for "re-translate every workload"."""


def changed_keys(old: Mapping[K, V], new: Mapping[K, V]) -> list[K]:
    """Keys added, removed or whose value differs (identity first: sources reuse objects)."""
    out = [k for k, v in new.items() if (o := old.get(k)) is not v and o != v]
    out += [k for k in old if k not in new]
    return out


class IncrementalTranslator:
    """``translate()`` over successive states, re-translating only touched workloads."""

    def __init__(self, mesh: MeshConfig | None = None) -> None:
        self.mesh = mesh or MeshConfig()
        self._state: ClusterState | None = None
        self._addresses: dict[str, Any] = {}
        self.retranslated = 0
        """How many workloads the last :meth:`update` translated (for logs and tests)."""

    def update(self, state: ClusterState) -> Snapshot:
        """The snapshot of ``state``; equal to ``translate(state, mesh)``."""
        try:
            return self._update(state)
        except BaseException:
            self._state = None  # half-updated tables: start over with a full translation
            self._addresses = {}
            raise

    def _update(self, state: ClusterState) -> Snapshot:
        previous = self._state
        self._state = state
        if previous is None:
            snapshot = translate(state, self.mesh)
            self._addresses = dict(snapshot.addresses)
            self.retranslated = len(state.pods)
            return snapshot
        context = TranslationContext.of(state, self.mesh)
        addresses = self._addresses
        waypoints_moved = _waypoints_changed(previous, state)
        self._update_services(previous, state, context, everything=waypoints_moved)
        dirty = EVERY_POD if waypoints_moved else self._dirty_pods(previous, state)
        pods = state.pods.values() if dirty is EVERY_POD else _present(dirty, state)
        if dirty is EVERY_POD:
            for name in [n for n, a in addresses.items() if a.WhichOneof("type") == "workload"]:
                del addresses[name]
        else:
            for namespace, name in dirty:
                uid = self.mesh.workload_uid(namespace, name)
                addresses.pop(workload_resource_name(uid), None)
        count = 0
        for pod in pods:
            if is_sent(pod):
                name, address = context.workload_address(pod)
                addresses[name] = address
                count += 1
        self.retranslated = count
        return Snapshot(dict(addresses), context.authorizations)

    def _update_services(
        self,
        previous: ClusterState,
        state: ClusterState,
        context: TranslationContext,
        *,
        everything: bool,
    ) -> None:
        """Re-translates the services that changed, or whose namespace did (or all)."""
        addresses = self._addresses
        service_keys = set(changed_keys(previous.services, state.services))
        if everything:
            service_keys |= set(previous.services) | set(state.services)
        else:
            namespaces = set(changed_keys(previous.namespaces, state.namespaces))
            service_keys |= {k for k in state.services if k[0] in namespaces}
        for key in sorted(service_keys):
            old, new = previous.services.get(key), state.services.get(key)
            for service in (old, new):
                if service is not None:
                    addresses.pop(service_address(service, self.mesh)[0], None)
            if new is not None and is_served(new):
                name, address = service_address(new, self.mesh, context.waypoints)
                addresses[name] = address

    def _dirty_pods(
        self, previous: ClusterState, state: ClusterState
    ) -> set[tuple[str, str]] | None:
        """Keys of the pods whose workload may have changed; None for all of them."""
        root = self.mesh.root_namespace
        dirty: set[tuple[str, str]] = set(changed_keys(previous.pods, state.pods))
        namespaces = set(changed_keys(previous.namespaces, state.namespaces))
        selectors: list[tuple[str, Mapping[str, str]]] = []
        for key in changed_keys(previous.peer_authentications, state.peer_authentications):
            if key[0] == root:
                return EVERY_POD
            namespaces.add(key[0])
        for table in ("services", "authorization_policies"):
            old_table, new_table = getattr(previous, table), getattr(state, table)
            for key in changed_keys(old_table, new_table):
                for obj in (old_table.get(key), new_table.get(key)):
                    if obj is not None and obj.selector is not None:
                        # a root-namespace policy's selector picks pods of every namespace
                        every = table == "authorization_policies" and obj.namespace == root
                        selectors.append((ANY_NAMESPACE if every else obj.namespace, obj.selector))
        if namespaces or selectors:
            for key, pod in state.pods.items():
                if pod.namespace in namespaces or _selected(pod, selectors):
                    dirty.add(key)
        return dirty


def _waypoints_changed(previous: ClusterState, state: ClusterState) -> bool:
    """Whether a Gateway, or a Service that may front a waypoint, changed."""
    if changed_keys(previous.gateways, state.gateways):
        return True
    gateways = set(previous.gateways) | set(state.gateways)
    for key in changed_keys(previous.services, state.services):
        if key in gateways:
            return True
        for service in (previous.services.get(key), state.services.get(key)):
            if service is not None and GATEWAY_NAME_LABEL in service.labels:
                return True
    return False


ANY_NAMESPACE = "*"
"""A selector's namespace meaning all of them (no Kubernetes namespace is named so)."""


def _selected(pod: Pod, selectors: Iterable[tuple[str, Mapping[str, str]]]) -> bool:
    return any(
        namespace in (pod.namespace, ANY_NAMESPACE) and selector_matches(selector, pod.labels)
        for namespace, selector in selectors
    )


def _present(keys: Iterable[tuple[str, str]], state: ClusterState) -> list[Pod]:
    return [pod for key in keys if (pod := state.pods.get(key)) is not None]
