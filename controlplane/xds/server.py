"""The gRPC shell of ADS: streams in, a sans-IO core decides.

:class:`XdsHub` holds the current workload-API :class:`ServerSnapshot` and every
connected stream. ``DeltaAggregatedResources`` serves ztunnels (the workload API,
:class:`~controlplane.xds.core.StreamCore`) and Envoys (LDS/RDS/CDS/EDS/SDS, the same
core on a per-proxy snapshot); ``StreamAggregatedResources`` (state of the world)
serves Envoys only (:class:`~controlplane.xds.sotw.SotwStreamCore`). Which kind a delta
stream is follows from its first request: an Envoy's node metadata names its
``PROXY_KIND`` (or it asks for an Envoy type). Each stream has a reader task (request
bytes -> decoded request -> core) and a writer loop (core's responses -> bytes), joined
by a queue, so a slow client never blocks the others or the snapshot updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.xds import (
    DeltaRequest,
    DeltaResponse,
    DiscoveryRequest,
    DiscoveryResponse,
    WireFormatError,
    decode_discovery_request,
    decode_request,
    encode_discovery_response,
    encode_response,
)
from controlplane.xds.core import ServerSnapshot, StreamCore
from controlplane.xds.envoy import EnvoyServing, is_envoy_node
from controlplane.xds.envoytypes import is_envoy_type, short_name
from controlplane.xds.metrics import Histogram
from controlplane.xds.sotw import SotwStreamCore

log = logging.getLogger("controlplane.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_RPC = "DeltaAggregatedResources"
SOTW_RPC = "StreamAggregatedResources"

Request = DeltaRequest | DiscoveryRequest
Response = DeltaResponse | DiscoveryResponse


@dataclass
class Connection:
    """One connected proxy: its stream core and where its responses queue."""

    core: StreamCore | SotwStreamCore
    peer: str
    caller: str
    """Who authenticated (the node name), or empty when unauthenticated streams are allowed."""
    connected_at: float
    proxy: Any = None
    """The :class:`~controlplane.envoy.proxy.EnvoyProxy` of an Envoy stream (None: ztunnel)."""
    queue: asyncio.Queue[Response | None] = field(default_factory=asyncio.Queue)
    pushed: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Envoy streams: nonce -> (type, monotonic time queued), until ACKed or NACKed."""

    def status(self) -> dict[str, object]:
        """The core's status plus the connection's own facts."""
        out: dict[str, object] = {
            **self.core.status(),
            "peer": self.peer,
            "node": self.caller or self.core.node_metadata.get("NODE_NAME", ""),
            "connectedSeconds": round(time.monotonic() - self.connected_at, 1),
        }
        if self.proxy is not None:
            out.setdefault("api", "delta")
            out["kind"] = self.proxy.kind
            out["namespace"] = self.proxy.namespace
            out["gateway"] = self.proxy.gateway_name
            out["serviceAccount"] = self.proxy.service_account
        return out


StreamAuthenticator = Callable[[Mapping[str, str]], str]
"""Metadata -> the caller's node name; raises ``AuthenticationError`` to refuse."""


@dataclass
class EnvoyPushStats:
    """What Envoy streams were sent and answered (``/metrics``)."""

    pushes: dict[str, int] = field(default_factory=dict)
    """Short type name (CDS, EDS...) -> responses sent."""
    nacks: dict[str, int] = field(default_factory=dict)
    """Short type name -> NACKs received."""
    push_to_ack: Histogram = field(default_factory=Histogram)
    """Seconds from a response being queued to its ACK."""


class XdsHub:
    """Every ADS stream, and the snapshots they are all kept in step with."""

    def __init__(
        self, authenticate: StreamAuthenticator | None = None, envoy: EnvoyServing | None = None
    ) -> None:
        self.snapshot = ServerSnapshot()
        self.connections: dict[str, Connection] = {}
        self.disconnected: list[dict[str, object]] = []
        self._authenticate = authenticate
        self.envoy = envoy
        self._ids = itertools.count(1)
        self.pushes = 0
        self.envoy_stats = EnvoyPushStats()

    # --- snapshots ----------------------------------------------------------

    def publish(self, snapshot: ServerSnapshot) -> None:
        """A new workload-API snapshot: queue each ztunnel stream's delta now."""
        self.snapshot = snapshot
        for connection in self.connections.values():
            if connection.proxy is None:
                self._queue(connection, connection.core.update(snapshot))

    def publish_envoy(self, snapshots: Mapping[Any, ServerSnapshot]) -> None:
        """New per-proxy snapshots: queue what changed to those proxies' streams only."""
        for connection in self.connections.values():
            snapshot = snapshots.get(connection.proxy) if connection.proxy is not None else None
            if snapshot is not None:
                self._queue(connection, connection.core.update(snapshot))  # type: ignore[arg-type]

    def _snapshot_of(self, connection: Connection) -> ServerSnapshot:
        if connection.proxy is not None and self.envoy is not None:
            return self.envoy.snapshot(connection.proxy)
        return self.snapshot

    def _queue(self, connection: Connection, responses: list[Any]) -> None:
        for response in responses:
            connection.queue.put_nowait(response)
            self.pushes += 1
            if connection.proxy is not None:
                kind = short_name(response.type_url)
                log.debug(
                    "push %s %s nonce %s: %d resources",
                    connection.core.stream_id,
                    kind,
                    response.nonce,
                    len(response.resources),
                )
                self.envoy_stats.pushes[kind] = self.envoy_stats.pushes.get(kind, 0) + 1
                connection.pushed[response.nonce] = (response.type_url, time.monotonic())

    # --- status -------------------------------------------------------------

    def status(self) -> list[dict[str, object]]:
        """Connected ztunnels (for ``controlplane status``), by stream id."""
        return [c.status() for c in self.connections.values() if c.proxy is None]

    def envoy_status(self) -> list[dict[str, object]]:
        """Connected Envoy proxies (waypoints, gateways)."""
        return [c.status() for c in self.connections.values() if c.proxy is not None]

    # --- gRPC -----------------------------------------------------------------

    def handler(self) -> Any:
        """The grpc generic handler serving delta and SotW ADS (bytes in and out)."""
        import grpc

        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                ADS_RPC: grpc.stream_stream_rpc_method_handler(self._serve_delta),
                SOTW_RPC: grpc.stream_stream_rpc_method_handler(self._serve_sotw),
            },
        )

    async def _serve_delta(self, _requests: Any, context: Any) -> None:
        await self._serve(context, sotw=False)

    async def _serve_sotw(self, _requests: Any, context: Any) -> None:
        await self._serve(context, sotw=True)

    async def _serve(self, context: Any, *, sotw: bool) -> None:
        import grpc

        from controlplane.errors import AuthenticationError

        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        caller = ""
        if self._authenticate is not None:
            try:
                # In a thread: a TokenReview is an HTTP call to the API server.
                caller = await asyncio.to_thread(self._authenticate, metadata)
            except AuthenticationError as err:
                log.warning("xDS stream from %s refused: %s", context.peer(), err)
                await refuse(context, grpc.StatusCode.UNAUTHENTICATED, str(err))
                return
        try:
            data = await context.read()
            if data is grpc.aio.EOF:
                return
            first: Request = decode_discovery_request(data) if sotw else decode_request(data)
        except WireFormatError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            return
        stream_id = f"s{next(self._ids)}"
        core = SotwStreamCore(stream_id) if sotw else StreamCore(stream_id)
        connection = Connection(core, str(context.peer()), caller, time.monotonic())
        envoy = sotw or is_envoy_node(first.node_metadata) or is_envoy_type(first.type_url)
        if envoy and not await self._attach_envoy(connection, first, context):
            return
        self.connections[stream_id] = connection
        what = "ztunnel" if connection.proxy is None else f"Envoy {first.node_id}"
        log.info(
            "xDS stream %s (%s, %s) from %s (node %s) connected",
            stream_id,
            "sotw" if sotw else "delta",
            what,
            connection.peer,
            caller,
        )
        self._handle(connection, first)
        reader = asyncio.create_task(self._read(connection, context, sotw=sotw))
        encode = encode_discovery_response if sotw else encode_response
        try:
            while True:
                response = await connection.queue.get()
                if response is None:
                    break
                await context.write(encode(response))  # type: ignore[arg-type]
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            del self.connections[stream_id]
            if connection.proxy is not None and self.envoy is not None:
                self.envoy.detach(connection.proxy)
            self.disconnected = [*self.disconnected[-9:], connection.status()]
            log.info("xDS stream %s (node %s) closed", stream_id, caller)

    async def _attach_envoy(self, connection: Connection, first: Request, context: Any) -> bool:
        """Who an Envoy stream's proxy is, checked against its caller; False: refused."""
        import grpc

        from controlplane.errors import ImpersonationDenied
        from controlplane.xds.envoy import EnvoyNodeError

        if self.envoy is None:
            await refuse(
                context,
                grpc.StatusCode.UNIMPLEMENTED,
                "this control plane does not serve Envoy xDS",
            )
            return False
        if self._authenticate is None or not connection.caller:
            # SDS hands out private keys: only to an authenticated node's own proxies.
            await refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "Envoy streams need an authenticated caller (authorization: Bearer <token>)",
            )
            return False
        code, error = None, ""
        try:
            connection.proxy = await self.envoy.attach(
                connection.caller, first.node_id, first.node_metadata
            )
        except EnvoyNodeError as err:
            code, error = grpc.StatusCode.INVALID_ARGUMENT, str(err)
        except ImpersonationDenied as err:
            code, error = grpc.StatusCode.PERMISSION_DENIED, str(err)
        if code is not None:
            log.warning("Envoy stream from %s refused: %s", connection.peer, error)
            await refuse(context, code, error)
            return False
        return True

    def _handle(self, connection: Connection, request: Request) -> None:
        """One request: log a NACK, time an ACK, let the core answer."""
        if request.error is not None:
            log.warning(
                "NACK from %s (node %s, %s) for %s nonce %s: %s",
                connection.core.stream_id,
                connection.caller,
                connection.core.node_id,
                request.type_url,
                request.response_nonce,
                request.error,
            )
        if connection.proxy is not None:
            log.debug(
                "request %s %s nonce %r names %s error %s",
                connection.core.stream_id,
                short_name(request.type_url),
                request.response_nonce,
                request.resource_names
                if isinstance(request, DiscoveryRequest)
                else (request.subscribe, request.unsubscribe),
                request.error,
            )
            if request.response_nonce:
                self._settled(connection, request)
        snapshot = self._snapshot_of(connection)
        responses = connection.core.receive(request, snapshot, time.time())  # type: ignore[arg-type]
        self._queue(connection, responses)

    def _settled(self, connection: Connection, request: Request) -> None:
        pushed = connection.pushed.pop(request.response_nonce, None)
        if pushed is None:
            return
        type_url, at = pushed
        for nonce in [
            n for n, (t, when) in connection.pushed.items() if t == type_url and when <= at
        ]:
            del connection.pushed[nonce]
        if request.error is None:
            self.envoy_stats.push_to_ack.observe(time.monotonic() - at)
        else:
            kind = short_name(type_url)
            self.envoy_stats.nacks[kind] = self.envoy_stats.nacks.get(kind, 0) + 1

    async def _read(self, connection: Connection, context: Any, *, sotw: bool) -> None:
        import grpc

        decode = decode_discovery_request if sotw else decode_request
        try:
            while True:
                data = await context.read()
                if data is grpc.aio.EOF:
                    break
                self._handle(connection, decode(data))
        except WireFormatError as err:
            log.warning("xDS stream %s: %s", connection.core.stream_id, err)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the stream broke (client gone): end the writer too
            log.debug("xDS stream %s read ended: %s", connection.core.stream_id, err)
        finally:
            connection.queue.put_nowait(None)


REFUSAL_LINGER_SECONDS = 0.25
"""How long a refused stream keeps reading before it ends (see :func:`refuse`)."""
REFUSAL_LINGER_MESSAGES = 8
"""At most this many messages are read (and dropped) from a refused stream."""


async def refuse(context: Any, code: Any, message: str) -> None:
    """End a stream with ``code``, after taking the client's first requests off the wire.

    A client writes its subscriptions right after opening the stream. Ended at once,
    those writes race the status: Python's gRPC then fails the write with a generic
    INTERNAL and the client never learns that it was UNAUTHENTICATED. Reading (and
    dropping) what is already in flight, bounded in count and time, lets the real
    status reach it.
    """
    import grpc

    async def drain() -> None:
        for _ in range(REFUSAL_LINGER_MESSAGES):
            if await context.read() is grpc.aio.EOF:
                return

    with contextlib.suppress(Exception):  # the linger's timeout, or a client gone already
        await asyncio.wait_for(drain(), REFUSAL_LINGER_SECONDS)
    await context.abort(code, message)
