"""The delta-xDS server as pure state: what to send a stream, and ACK/NACK bookkeeping.

Nothing here touches gRPC, sockets or clocks. :class:`ServerSnapshot` holds every
resource already serialized with its version (a digest of its bytes, equal to
:func:`controlplane.workloadapi.resource_version`). :class:`StreamCore` is one client
stream: it takes the client's requests (:class:`api.xds.DeltaRequest`) and new
snapshots, and returns the :class:`api.xds.DeltaResponse` values to send.

Rules (Envoy's incremental xDS, as istiod serves ztunnel):
- the first request of a type subscribes; no names (or ``*``) means wildcard;
- ``initial_resource_versions`` says what the client still holds after a reconnect:
  only resources whose version differs are sent, names it holds that are gone are
  listed in ``removed_resources``; the first request is always answered;
- an ACK (``response_nonce``, no ``error_detail``) records the acknowledged version;
  a NACK records the error and forgets that the client holds what that push carried,
  so the next change sends it again; nothing is resent in a loop;
- pushes may be pipelined; an ACK or NACK of a nonce settles every older one;
- a Cluster pushed (added or changed) makes its ClusterLoadAssignment due again, even
  unchanged: Envoy warms a new or updated EDS cluster until an EDS response names it
  (xDS protocol, "Resource warming"; ``initial_fetch_timeout``, 15 s by default), so the
  next EDS push (or the answer to the next EDS request) carries it, as istiod does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.xds import DeltaRequest, DeltaResponse, Resource
from controlplane.xds.envoytypes import CLUSTER, ENDPOINT, push_rank


def version_of(data: bytes) -> str:
    """A resource version: a short digest of its deterministic serialization."""
    return hashlib.sha256(data).hexdigest()[:16]


def _type_version(resources: Mapping[str, Resource]) -> str:
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(f"{name}\0{resources[name].version}\n".encode())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class ServerSnapshot:
    """Every resource of every type, serialized, versioned, by name."""

    resources: Mapping[str, Mapping[str, Resource]] = field(default_factory=dict)
    """type URL -> resource name -> resource."""
    versions: Mapping[str, str] = field(default_factory=dict)
    """type URL -> a digest of all its names and versions (``system_version_info``)."""
    assignments: Mapping[str, str] = field(default_factory=dict)
    """Cluster name -> the name of its ClusterLoadAssignment (the EDS ``service_name``),
    where it differs from the cluster's name."""

    @classmethod
    def build(
        cls,
        messages: Mapping[str, Mapping[str, Any]],
        assignments: Mapping[str, str] | None = None,
    ) -> ServerSnapshot:
        """From messages by type and name (each with ``SerializeToString``)."""
        resources: dict[str, dict[str, Resource]] = {}
        for type_url, by_name in messages.items():
            table: dict[str, Resource] = {}
            for name, message in by_name.items():
                data: bytes = message.SerializeToString(deterministic=True)
                table[name] = Resource(name, version_of(data), data)
            resources[type_url] = table
        versions = {t: _type_version(r) for t, r in resources.items()}
        return cls(resources, versions, dict(assignments or {}))

    def of(self, type_url: str) -> Mapping[str, Resource]:
        """The resources of one type (none for a type we do not serve)."""
        return self.resources.get(type_url, {})

    def assignment_of(self, cluster: str) -> str:
        """The ClusterLoadAssignment name a cluster waits for when it warms."""
        return self.assignments.get(cluster, cluster)


def clusters_pushed(due: set[str], snapshot: ServerSnapshot, clusters: Iterable[str]) -> None:
    """Clusters were sent (added or changed): their assignments are ``due`` again."""
    due.update(snapshot.assignment_of(name) for name in clusters)


def assignments_due(due: set[str], snapshot: ServerSnapshot, wants: Callable[[str], bool]) -> bool:
    """Whether an assignment the client subscribes to is due (its cluster was pushed)."""
    resources = snapshot.of(ENDPOINT)
    return any(name in resources and wants(name) for name in due)


@dataclass(frozen=True)
class Nack:
    """A rejected push, as the client reported it."""

    nonce: str
    version: str
    """The ``system_version_info`` of the rejected push."""
    error: str
    at: float
    """When it arrived (the caller's clock, seconds)."""


@dataclass
class _Pending:
    seq: int
    version: str
    previous: dict[str, str | None]
    """name -> the version the client held before this push (None: not held)."""
    applied: dict[str, str | None]
    """name -> what this push set (None: removed)."""


@dataclass
class TypeState:
    """One stream's subscription to one type, and what its client holds."""

    wildcard: bool = False
    """Subscribed to every resource of the type."""
    names: set[str] = field(default_factory=set)
    """Explicitly subscribed names (besides or instead of the wildcard)."""
    known: dict[str, str] = field(default_factory=dict)
    """name -> the version the client holds (optimistic: set when sent)."""
    pending: dict[str, _Pending] = field(default_factory=dict)
    """Pushes sent and not yet ACKed or NACKed, by nonce."""
    sent_version: str = ""
    """``system_version_info`` of the last push."""
    acked_version: str = ""
    """``system_version_info`` of the last push the client acknowledged."""
    acked_nonce: str = ""
    acked_at: float | None = None
    acks: int = 0
    nacks: int = 0
    last_nack: Nack | None = None
    """The most recent rejection, kept after later ACKs (``controlplane status``)."""
    resources_sent: int = 0
    """How many resources (updates) this stream was sent, over all pushes."""

    def wants(self, name: str) -> bool:
        """Whether the subscription covers ``name``."""
        return self.wildcard or name in self.names


class StreamCore:
    """One delta-ADS stream: requests and snapshots in, responses out."""

    def __init__(self, stream_id: str, nonce_prefix: str = "") -> None:
        self.stream_id = stream_id
        self.node_id = ""
        self.node_metadata: dict[str, str] = {}
        self.types: dict[str, TypeState] = {}
        self.assignments_due: set[str] = set()
        """EDS names whose cluster was pushed after their assignment last was."""
        self._seq = 0
        self._nonce_prefix = nonce_prefix or stream_id

    # --- input ------------------------------------------------------------

    def receive(
        self, request: DeltaRequest, snapshot: ServerSnapshot, now: float
    ) -> list[DeltaResponse]:
        """Handle one request; the responses it calls for (zero or one)."""
        if request.node_id and not self.node_id:
            self.node_id = request.node_id
            self.node_metadata = dict(request.node_metadata)
        state = self.types.get(request.type_url)
        first = state is None
        if state is None:
            state = self.types[request.type_url] = TypeState()
            state.known = dict(request.initial_versions)
        if request.response_nonce:
            self._settle(state, request, now)
        changed = self._subscribe(state, request, first)
        due = request.type_url == ENDPOINT and assignments_due(
            self.assignments_due, snapshot, state.wants
        )
        if not (first or changed or due):
            return []
        response = self._push(request.type_url, state, snapshot, always=first)
        return [response] if response else []

    def update(self, snapshot: ServerSnapshot) -> list[DeltaResponse]:
        """A new snapshot: one response per subscribed type whose resources changed."""
        out = []
        # Envoy's types go clusters, endpoints, listeners, routes, secrets (ADS ordering).
        for type_url in sorted(self.types, key=push_rank):
            response = self._push(type_url, self.types[type_url], snapshot, always=False)
            if response:
                out.append(response)
        return out

    # --- bookkeeping --------------------------------------------------------

    def _settle(self, state: TypeState, request: DeltaRequest, now: float) -> None:
        pending = state.pending.get(request.response_nonce)
        if pending is None:
            return  # a nonce we never sent, or one already settled: nothing to record
        for nonce in [n for n, p in state.pending.items() if p.seq <= pending.seq]:
            del state.pending[nonce]
        if request.error is None:
            state.acked_version, state.acked_nonce, state.acked_at = (
                pending.version,
                request.response_nonce,
                now,
            )
            state.acks += 1
            return
        state.nacks += 1
        state.last_nack = Nack(request.response_nonce, pending.version, request.error, now)
        # The client kept its previous state: it does not hold what this push carried.
        for name, applied in pending.applied.items():
            if state.known.get(name) == applied:
                previous = pending.previous[name]
                if previous is None:
                    state.known.pop(name, None)
                else:
                    state.known[name] = previous

    @staticmethod
    def _subscribe(state: TypeState, request: DeltaRequest, first: bool) -> bool:
        before = (state.wildcard, frozenset(state.names))
        if first and not request.subscribe:
            state.wildcard = True
        for name in request.subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.names.add(name)
        for name in request.unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.names.discard(name)
                if not state.wildcard:
                    state.known.pop(name, None)
        return (state.wildcard, frozenset(state.names)) != before

    def _push(
        self, type_url: str, state: TypeState, snapshot: ServerSnapshot, *, always: bool
    ) -> DeltaResponse | None:
        resources = snapshot.of(type_url)
        due = self.assignments_due if type_url == ENDPOINT else set()
        updated = [
            r
            for name, r in sorted(resources.items())
            if state.wants(name) and (state.known.get(name) != r.version or name in due)
        ]
        removed = sorted(
            name for name in state.known if name not in resources or not state.wants(name)
        )
        if not (updated or removed or always):
            return None
        self._seq += 1
        nonce = f"{self._nonce_prefix}-{self._seq}"
        version = snapshot.versions.get(type_url, "")
        previous: dict[str, str | None] = {}
        applied: dict[str, str | None] = {}
        for r in updated:
            previous[r.name] = state.known.get(r.name)
            applied[r.name] = state.known[r.name] = r.version
        for name in removed:
            previous[name] = state.known.pop(name)
            applied[name] = None
        state.pending[nonce] = _Pending(self._seq, version, previous, applied)
        if type_url == CLUSTER:
            clusters_pushed(self.assignments_due, snapshot, (r.name for r in updated))
        due.difference_update(r.name for r in updated)
        state.sent_version = version
        state.resources_sent += len(updated)
        return DeltaResponse(type_url, nonce, tuple(updated), tuple(removed), version)

    # --- reporting ----------------------------------------------------------

    def status(self) -> dict[str, object]:
        """What ``controlplane status`` shows for this stream (JSON-ready)."""
        types: dict[str, object] = {}
        for type_url, s in sorted(self.types.items()):
            nack = s.last_nack
            types[type_url] = {
                "subscription": "*" if s.wildcard else sorted(s.names),
                "resources": len(s.known),
                "resourcesSent": s.resources_sent,
                "sentVersion": s.sent_version,
                "ackedVersion": s.acked_version,
                "ackedAt": s.acked_at,
                "acks": s.acks,
                "nacks": s.nacks,
                "pendingNonces": sorted(s.pending),
                "lastNack": None
                if nack is None
                else {"nonce": nack.nonce, "version": nack.version, "error": nack.error},
            }
        return {"stream": self.stream_id, "nodeId": self.node_id, "types": types}


def names_of(responses: Iterable[DeltaResponse]) -> list[str]:
    """Every resource name carried by ``responses`` (a test and log helper)."""
    return [r.name for response in responses for r in response.resources]


@dataclass
class Debouncer:
    """Coalesces bursts of changes: fire after ``quiet`` s of calm, at most ``max_delay`` s late."""

    quiet: float = 0.02
    max_delay: float = 0.08
    _first: float | None = None
    _last: float | None = None

    def changed(self, now: float) -> None:
        """A change arrived at ``now``."""
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the pending changes should be pushed (None: nothing pending)."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def fire(self, now: float) -> bool:
        """True (and reset) when a push is due at ``now``."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return False
        self._first = self._last = None
        return True
