"""The gRPC shell of delta ADS: streams in, :class:`~controlplane.xds.core.StreamCore` decides.

:class:`XdsHub` holds the current :class:`ServerSnapshot` and every connected stream.
Each stream has a reader task (request bytes -> :func:`api.xds.decode_request` -> core)
and a writer loop (core's responses -> :func:`api.xds.encode_response` -> the wire),
joined by a queue, so a slow client never blocks the others or the snapshot updates.
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

from api.xds import DeltaResponse, WireFormatError, decode_request, encode_response
from controlplane.xds.core import ServerSnapshot, StreamCore

log = logging.getLogger("controlplane.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_RPC = "DeltaAggregatedResources"


@dataclass
class Connection:
    """One connected proxy: its stream core and where its responses queue."""

    core: StreamCore
    peer: str
    caller: str
    """Who authenticated (the node name), or empty when unauthenticated streams are allowed."""
    connected_at: float
    queue: asyncio.Queue[DeltaResponse | None] = field(default_factory=asyncio.Queue)

    def status(self) -> dict[str, object]:
        """The core's status plus the connection's own facts."""
        return {
            **self.core.status(),
            "peer": self.peer,
            "node": self.caller or self.core.node_metadata.get("NODE_NAME", ""),
            "connectedSeconds": round(time.monotonic() - self.connected_at, 1),
        }


StreamAuthenticator = Callable[[Mapping[str, str]], str]
"""Metadata -> the caller's node name; raises ``AuthenticationError`` to refuse."""


class XdsHub:
    """Every delta-ADS stream, and the snapshot they are all kept in step with."""

    def __init__(self, authenticate: StreamAuthenticator | None = None) -> None:
        self.snapshot = ServerSnapshot()
        self.connections: dict[str, Connection] = {}
        self.disconnected: list[dict[str, object]] = []
        self._authenticate = authenticate
        self._ids = itertools.count(1)
        self.pushes = 0

    def publish(self, snapshot: ServerSnapshot) -> None:
        """A new snapshot: queue each stream's delta now (in the event loop)."""
        self.snapshot = snapshot
        for connection in self.connections.values():
            for response in connection.core.update(snapshot):
                connection.queue.put_nowait(response)
                self.pushes += 1

    def status(self) -> list[dict[str, object]]:
        """Connected proxies (for ``controlplane status``), by stream id."""
        return [c.status() for c in self.connections.values()]

    def handler(self) -> Any:
        """The grpc generic handler serving delta ADS (bytes in and out)."""
        import grpc

        method = grpc.stream_stream_rpc_method_handler(self._serve)
        return grpc.method_handlers_generic_handler(ADS_SERVICE, {ADS_RPC: method})

    async def _serve(self, _requests: Any, context: Any) -> None:
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
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
                return
        stream_id = f"s{next(self._ids)}"
        connection = Connection(
            StreamCore(stream_id), str(context.peer()), caller, time.monotonic()
        )
        self.connections[stream_id] = connection
        log.info("xDS stream %s from %s (node %s) connected", stream_id, connection.peer, caller)
        reader = asyncio.create_task(self._read(connection, context))
        try:
            while True:
                response = await connection.queue.get()
                if response is None:
                    break
                await context.write(encode_response(response))
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            del self.connections[stream_id]
            self.disconnected = [*self.disconnected[-9:], connection.status()]
            log.info("xDS stream %s (node %s) closed", stream_id, caller)

    async def _read(self, connection: Connection, context: Any) -> None:
        import grpc

        try:
            while True:
                data = await context.read()
                if data is grpc.aio.EOF:
                    break
                request = decode_request(data)
                if request.error is not None:
                    log.warning(
                        "NACK from %s (node %s) for %s nonce %s: %s",
                        connection.core.stream_id,
                        connection.caller,
                        request.type_url,
                        request.response_nonce,
                        request.error,
                    )
                for response in connection.core.receive(request, self.snapshot, time.time()):
                    connection.queue.put_nowait(response)
                    self.pushes += 1
        except WireFormatError as err:
            log.warning("xDS stream %s: %s", connection.core.stream_id, err)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the stream broke (client gone): end the writer too
            log.debug("xDS stream %s read ended: %s", connection.core.stream_id, err)
        finally:
            connection.queue.put_nowait(None)
