"""State-of-the-world ADS (``StreamAggregatedResources``) as pure state, for Envoy.

:class:`SotwStreamCore` is the state-of-the-world twin of
:class:`~controlplane.xds.core.StreamCore`: requests and per-proxy snapshots in,
:class:`api.xds.DiscoveryResponse` values out; nothing here touches gRPC or a clock.

Rules (Envoy's SotW xDS, as istiod serves it):
- a request carries the whole subscription; Listener and Cluster are subscribed as a
  whole (no names, or ``*``), the other types by name;
- a request whose ``response_nonce`` is not the type's latest nonce is stale (a newer
  push is on its way) and changes nothing;
- an ACK records the acknowledged version; a NACK is recorded with its error and the
  client is taken to hold what it last acknowledged, so the next change resends what
  it rejected; nothing is resent in a loop;
- every response of a wildcard type carries all its resources (a missing one is
  removed); a response of a named type carries the resources that changed, or, when
  the subscription grew, every requested one;
- the first request of a type is always answered; a new snapshot is pushed type by type
  in :data:`~controlplane.xds.envoytypes.PUSH_ORDER`;
- a Cluster pushed (added or changed) makes its ClusterLoadAssignment due again, even
  unchanged (Envoy warms the cluster until an EDS response names it): the EDS push
  that follows carries it, and an EDS request naming a due assignment is answered with
  every requested one, even with the version and nonce the client already acknowledged
  (Envoy re-sends its EDS request so after a cluster update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from api.xds import DiscoveryRequest, DiscoveryResponse, Resource
from controlplane.xds.core import Nack, ServerSnapshot, assignments_due, clusters_pushed
from controlplane.xds.envoytypes import CLUSTER, ENDPOINT, WILDCARD_TYPES, push_rank


@dataclass
class SotwTypeState:
    """One stream's subscription to one type, and what its client holds."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()
    """The requested names (ignored when :attr:`wildcard`)."""
    known: dict[str, str] = field(default_factory=dict)
    """name -> the version the client holds (optimistic: set when sent)."""
    acked: dict[str, str] = field(default_factory=dict)
    """name -> version, as of the last ACK (what a NACKing client keeps)."""
    pending: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """nonce -> (version, what the client holds if it accepts), pushes not yet settled."""
    last_nonce: str = ""
    rejected_version: str = ""
    """The type version of the last NACKed push: not pushed again until the type changes."""
    sent_version: str = ""
    acked_version: str = ""
    acked_nonce: str = ""
    acked_at: float | None = None
    acks: int = 0
    nacks: int = 0
    last_nack: Nack | None = None
    resources_sent: int = 0

    def wants(self, name: str) -> bool:
        """Whether the subscription covers ``name``."""
        return self.wildcard or name in self.names


class SotwStreamCore:
    """One SotW ADS stream: requests and snapshots in, responses out."""

    def __init__(self, stream_id: str, nonce_prefix: str = "") -> None:
        self.stream_id = stream_id
        self.node_id = ""
        self.node_metadata: dict[str, str] = {}
        self.types: dict[str, SotwTypeState] = {}
        self.assignments_due: set[str] = set()
        """EDS names whose cluster was pushed after their assignment last was."""
        self._seq = 0
        self._nonce_prefix = nonce_prefix or stream_id

    def receive(
        self, request: DiscoveryRequest, snapshot: ServerSnapshot, now: float
    ) -> list[DiscoveryResponse]:
        """Handle one request; the responses it calls for (zero or one)."""
        if request.node_id and not self.node_id:
            self.node_id = request.node_id
            self.node_metadata = dict(request.node_metadata)
        state = self.types.get(request.type_url)
        first = state is None
        if state is None:
            state = self.types[request.type_url] = SotwTypeState()
        elif request.response_nonce and request.response_nonce != state.last_nonce:
            state.pending.pop(request.response_nonce, None)
            return []  # stale: the client has not seen the latest push yet
        if request.response_nonce and not first:
            self._settle(state, request, now)
        names = frozenset(request.resource_names) - {"*"}
        wildcard = request.type_url in WILDCARD_TYPES and (
            not request.resource_names or "*" in request.resource_names
        )
        grew = bool(names - state.names) or (wildcard and not state.wildcard)
        for name in state.names - names:
            state.known.pop(name, None)
            state.acked.pop(name, None)
        state.wildcard, state.names = wildcard, names
        due = request.type_url == ENDPOINT and assignments_due(
            self.assignments_due, snapshot, state.wants
        )
        if not (first or grew or due):
            return []
        response = self._push(request.type_url, state, snapshot, full=True, always=True)
        return [response] if response else []

    def update(self, snapshot: ServerSnapshot) -> list[DiscoveryResponse]:
        """A new snapshot: one response per subscribed type whose resources changed."""
        out = []
        for type_url in sorted(self.types, key=push_rank):
            response = self._push(type_url, self.types[type_url], snapshot, full=False)
            if response:
                out.append(response)
        return out

    def _settle(self, state: SotwTypeState, request: DiscoveryRequest, now: float) -> None:
        version, holds = state.pending.pop(request.response_nonce, ("", {}))
        state.pending.clear()  # the latest nonce settles every older push
        if request.error is None:
            state.acked = dict(holds) if holds or version else state.acked
            state.acked_version = version or request.version_info
            state.acked_nonce, state.acked_at = request.response_nonce, now
            state.acks += 1
            return
        state.nacks += 1
        state.last_nack = Nack(request.response_nonce, version, request.error, now)
        state.known = dict(state.acked)
        state.rejected_version = version

    def _push(
        self,
        type_url: str,
        state: SotwTypeState,
        snapshot: ServerSnapshot,
        *,
        full: bool,
        always: bool = False,
    ) -> DiscoveryResponse | None:
        version = snapshot.versions.get(type_url, "")
        if not always and version and version == state.rejected_version:
            return None  # the client rejected exactly this: wait for a change
        resources = snapshot.of(type_url)
        wanted = {n: r for n, r in sorted(resources.items()) if state.wants(n)}
        due = self.assignments_due if type_url == ENDPOINT else set()
        changed = [r for n, r in wanted.items() if state.known.get(n) != r.version or n in due]
        gone = [n for n in state.known if n not in wanted]
        if not (changed or gone or always):
            return None
        holds = {n: r.version for n, r in wanted.items()}
        if not state.wildcard:
            # A named type keeps what is not in the response; only what we send changes.
            holds = {**{n: v for n, v in state.known.items() if n in wanted}, **holds}
        send: list[Resource] = list(wanted.values()) if (full or state.wildcard) else changed
        self._seq += 1
        nonce = f"{self._nonce_prefix}-{self._seq}"
        state.known = holds
        state.pending[nonce] = (version, dict(holds))
        state.last_nonce, state.sent_version = nonce, version
        state.resources_sent += len(send)
        if type_url == CLUSTER:
            clusters_pushed(self.assignments_due, snapshot, (r.name for r in changed))
        due.difference_update(r.name for r in send)
        return DiscoveryResponse(type_url, nonce, version, tuple(send))

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
        return {"stream": self.stream_id, "nodeId": self.node_id, "api": "sotw", "types": types}
