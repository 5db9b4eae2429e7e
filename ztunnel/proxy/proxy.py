"""The three proxy listeners' connection handlers: outbound, inbound HBONE, inbound plaintext.

Each handler asks a pure decision function (:mod:`~ztunnel.proxy.outbound`,
:mod:`~ztunnel.proxy.inbound`) what to do, then moves bytes; it records Istio
metrics for its reporter and writes exactly one access record per connection,
in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

from ztunnel.config import ZtunnelConfig
from ztunnel.errors import HboneError, IdentityError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.store import IdentityStore
from ztunnel.identity.tls import verify_peer
from ztunnel.metrics import (
    FLAG_CONNECT,
    FLAG_TLS_FAILURE,
    ConnectionLabels,
    TcpMetrics,
    connection_labels,
)
from ztunnel.proxy import inbound, outbound
from ztunnel.proxy.connector import HboneConnector, TunnelRefusedError, require_established
from ztunnel.proxy.hbone import CONNECT_ERROR, HboneServer, TunnelRequest, TunnelResponse
from ztunnel.proxy.hbone_io import HboneChannel, Transfer, TunnelStream, relay, splice
from ztunnel.proxy.sockets import SocketFactory
from ztunnel.state.proxy_state import LoadBalancer, ProxyState
from ztunnel.state.workload import IPAddress, Service, Workload

access_log = logging.getLogger("ztunnel.access")

ANSWER_HOLD_S = 0.001
"""How long a tunnel's 200 may wait for the pod's answer to the request that came with
the CONNECT (the event loop's timers have millisecond resolution)."""


@dataclass
class AccessRecord:
    """One connection, as its access-log line will show it."""

    direction: str
    src: str
    dst: str
    src_workload: str = "-"
    dst_workload: str = "-"
    src_identity: str = "-"
    dst_identity: str = "-"
    bytes_sent: int = 0
    bytes_received: int = 0
    result: str = "ok"
    reason: str = ""
    started: float = field(default_factory=time.monotonic)

    def emit(self, fmt: str) -> None:
        """Write the record (text ``k=v`` or JSON) to the ``ztunnel.access`` logger."""
        if not access_log.isEnabledFor(logging.INFO):
            return  # access logging is off: no line to build
        duration_ms = round((time.monotonic() - self.started) * 1000, 3)
        if fmt == "json":
            values = {k: v for k, v in vars(self).items() if k != "started"}
            values["duration_ms"] = duration_ms
            access_log.info(json.dumps(values, sort_keys=True))
            return
        # One f-string per connection (and per side): this line is on every tunnel's path.
        access_log.info(
            f"direction={self.direction} src={self.src} dst={self.dst} "
            f"src_workload={self.src_workload} dst_workload={self.dst_workload} "
            f"src_identity={self.src_identity} dst_identity={self.dst_identity} "
            f"bytes_sent={self.bytes_sent} bytes_received={self.bytes_received} "
            f"result={self.result} reason={self.reason!r} duration_ms={duration_ms}"
        )


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> IPAddress:
    """An address as text parsed once: a node sees the same few pod IPs on every connection."""
    return ip_address(text)


def _addr(extra: object) -> tuple[IPAddress, int]:
    assert isinstance(extra, tuple)
    return _ip(extra[0]), int(extra[1])


class Proxy:
    """Connection handlers sharing the state, identities, pool and metrics of one process."""

    def __init__(
        self,
        config: ZtunnelConfig,
        *,
        state: Callable[[], ProxyState],
        identities: IdentityStore,
        metrics: TcpMetrics,
        sockets: SocketFactory,
        connector: HboneConnector,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.identities = identities
        self.metrics = metrics
        self.sockets = sockets
        self.connector = connector
        self.rng = rng or random.Random()  # noqa: S311 - trace ids and balancing, not secrets
        self.balancer = LoadBalancer(config.load_balancing, self.rng)
        self.inbound_channels: set[HboneChannel] = set()

    def close_idle(self) -> int:
        """Close HBONE connections (inbound and pooled outbound) carrying no tunnel."""
        idle = [ch for ch in self.inbound_channels if not ch.streams]
        for channel in idle:
            channel.close()
        return len(idle) + self.connector.close_idle()

    # --- outbound (15001) -------------------------------------------------

    async def handle_outbound(self, conn: socket.socket) -> None:
        """A captured outbound connection: its local address is the original destination.

        ``conn`` is the accepted socket (non-blocking); a tunnel relays it from the
        loop's callbacks, the other paths hand it to asyncio streams.
        """
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            src_ip, src_port = _addr(conn.getpeername())
            dst_ip, dst_port = _addr(conn.getsockname())
        except OSError:
            conn.close()  # reset before we got to it: nothing was asked of the mesh yet
            return
        record = AccessRecord("outbound", f"{src_ip}:{src_port}", f"{dst_ip}:{dst_port}")
        state = self.state()
        labels: ConnectionLabels | None = None
        try:
            plan = outbound.plan_outbound(
                state,
                self.balancer,
                source_ip=src_ip,
                source_port=src_port,
                destination_ip=dst_ip,
                destination_port=dst_port,
                node=self.config.node_name,
                rng=self.rng,
                network=self.config.network,
                hbone_port=self.config.hbone_port,
            )
            source = state.workload_by_ip(src_ip, self.config.network)
            record.src_workload = source.name if source else "-"
            if isinstance(plan, outbound.Refuse):
                record.result, record.reason = plan.flag, plan.reason
                self.metrics.connection_failed(
                    connection_labels(reporter="source", source=source), plan.flag
                )
                _abort(conn)
                return
            if isinstance(plan, outbound.PlainTcp):
                upstream = await self.sockets.connect(plan.address, plan.port)
                record.dst_workload = plan.workload.name if plan.workload else "-"
                passed = Transfer()
                try:
                    streams = await asyncio.open_connection(sock=conn)
                    await splice(streams, upstream, passed)
                finally:
                    upstream[1].close()
                    record.bytes_received, record.bytes_sent = passed.forward, passed.backward
                return
            labels = _tunnel_labels(plan, source, record)
            if self._is_local(plan):
                streams = await asyncio.open_connection(sock=conn)
                await self._outbound_same_node(plan, (src_ip, src_port), streams, labels, record)
            else:
                await self._outbound_tunnel(plan, conn, labels, record)
        except (OSError, TimeoutError, HboneError, IdentityError, ssl.SSLError) as err:
            flag = _failure_flag(err)
            record.result, record.reason = flag, str(err)
            self.metrics.connection_failed(labels or connection_labels(reporter="source"), flag)
            if streams is None:
                _abort(conn)
            else:
                streams[1].transport.abort()
        finally:
            if streams is None:
                conn.close()
            else:
                streams[1].close()  # the transport owns the socket
            record.emit(self.config.access_log_format)

    async def _outbound_tunnel(
        self,
        plan: outbound.Tunnel,
        conn: socket.socket,
        labels: ConnectionLabels,
        record: AccessRecord,
    ) -> None:
        # A ztunnel peer queues early bytes until it has connected upstream (and drops
        # them if it refuses): the client's first bytes go with the CONNECT (relay()
        # flushes both), and nothing comes back to the client before the peer's 200.
        stream = await self.connector.start(plan, flush=plan.via_waypoint)
        opened = False

        def answered(response: TunnelResponse) -> None:
            nonlocal opened
            require_established(response)
            opened = True
            # Counted once the relay has handed the answer to the client (later in this
            # loop step), not before: the client waits for those bytes, not the metric.
            asyncio.get_running_loop().call_soon(self.metrics.connection_opened, labels)

        if plan.via_waypoint:
            # Envoy answers the CONNECT before it takes the bytes.
            answered(await self.connector.established(stream))
        moved = Transfer()
        try:
            await relay(
                stream,
                conn,
                moved,
                on_response=None if plan.via_waypoint else answered,
                response_timeout=self.connector.response_timeout,
            )
        except (HboneError, OSError) as err:
            if not opened:
                raise  # refused or never answered: a failed connection, counted as such
            # The tunnel was up and then reset (by the client, as wrk and iperf3 end, or
            # by the peer): a closed connection with the bytes it moved, not a failed one.
            record.result, record.reason = "reset", str(err) or type(err).__name__
            _abort(conn)
        finally:
            record.bytes_received, record.bytes_sent = moved.forward, moved.backward
            if opened:
                self.metrics.connection_closed(labels, received=moved.forward, sent=moved.backward)

    def _is_local(self, plan: outbound.Tunnel) -> bool:
        """Whether the tunnel would end at this very ztunnel (a pod of this node).

        A waypoint is never local: it terminates HBONE itself and is not captured.
        """
        if plan.via_waypoint:
            return False
        return bool(self.config.node_name) and plan.destination.node == self.config.node_name

    async def _outbound_same_node(
        self,
        plan: outbound.Tunnel,
        client: tuple[IPAddress, int],
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        labels: ConnectionLabels,
        record: AccessRecord,
    ) -> None:
        """A destination on this node: the inbound half runs here, in-process.

        A SYN from the node to a local pod's 15008 would go straight into the pod (no
        capture sees it), so the tunnel is not dialed: the same inbound decision as an
        HBONE peer would get is taken with the source workload's identity (this process
        holds its certificate), and both reporters are counted, as two ztunnels would.
        """
        decision = inbound.decide_hbone(
            self.state(),
            plan.request,
            peer_identity=plan.pool_key.source,
            peer_ip=client[0],
            node=self.config.node_name,
            network=self.config.network,
        )
        dest_labels = dataclasses.replace(labels, reporter="destination")
        if isinstance(decision, inbound.Refuse):
            record.result, record.reason = decision.flag, decision.reason
            self.metrics.connection_failed(dest_labels, decision.flag)
            self.metrics.connection_failed(labels, decision.flag)
            conn[1].transport.abort()
            return
        upstream = await self.sockets.connect(
            decision.upstream_ip, decision.upstream_port, source=decision.source_ip
        )
        self.metrics.connection_opened(labels)
        self.metrics.connection_opened(dest_labels)
        moved = Transfer()
        try:
            await splice(conn, upstream, moved)
        finally:
            upstream[1].close()
            record.bytes_received, record.bytes_sent = moved.forward, moved.backward
            for side in (labels, dest_labels):
                self.metrics.connection_closed(side, received=moved.forward, sent=moved.backward)

    # --- inbound HBONE (15008) --------------------------------------------

    async def handle_hbone(self, conn: socket.socket) -> None:
        """An accepted HBONE connection: TLS as the local workload addressed, then tunnels."""
        peer_ip, peer_port = _addr(conn.getpeername())
        local_ip, _ = _addr(conn.getsockname())
        src, dst = f"{peer_ip}:{peer_port}", str(local_ip)
        state = self.state()
        destination = state.workload_by_ip(local_ip, self.config.network)
        labels = connection_labels(reporter="destination", destination=destination)
        try:
            if destination is None or (
                self.config.node_name and destination.node != self.config.node_name
            ):
                raise IdentityError(
                    f"{local_ip} is not a workload on this node: no certificate to present"
                )
            context = self.identities.context(destination.identity, server=True)
            reader, writer = await self.sockets.accept_tls(conn, context)
        except (OSError, TimeoutError, IdentityError, ssl.SSLError) as err:
            self._hbone_failed(labels, err, src, dst)
            conn.close()
            return
        try:
            peer = verify_peer(
                writer.get_extra_info("ssl_object"), trust_domain=self.config.trust_domain
            )
        except IdentityError as err:
            self._hbone_failed(labels, err, src, dst)
            writer.transport.abort()
            return
        channel = HboneChannel(HboneServer(self.config.hbone), reader, writer)

        async def serve(stream: TunnelStream, request: TunnelRequest) -> None:
            await self._serve_tunnel(channel, stream, request, peer, peer_ip)

        self.inbound_channels.add(channel)
        try:
            await channel.run(serve)
        finally:
            self.inbound_channels.discard(channel)
            writer.close()

    def _hbone_failed(
        self, labels: ConnectionLabels, err: BaseException, src: str, dst: str
    ) -> None:
        flag = _failure_flag(err)
        self.metrics.connection_failed(labels, flag)
        reason = str(err) or type(err).__name__
        record = AccessRecord("inbound-hbone", src, dst, result=flag, reason=reason)
        record.emit(self.config.access_log_format)

    async def _serve_tunnel(
        self,
        channel: HboneChannel,
        stream: TunnelStream,
        request: TunnelRequest,
        peer: SpiffeId,
        peer_ip: IPAddress,
    ) -> None:
        state = self.state()
        core = channel.core
        assert isinstance(core, HboneServer)
        record = AccessRecord(
            "inbound-hbone", request.forwarded_for or str(peer_ip), str(request.authority)
        )
        record.src_identity = str(peer)
        decision = inbound.decide_hbone(
            state,
            request,
            peer_identity=peer,
            peer_ip=peer_ip,
            node=self.config.node_name,
            network=self.config.network,
        )
        try:
            if isinstance(decision, inbound.Refuse):
                labels = connection_labels(
                    reporter="destination", source_identity=peer, mutual_tls=True
                )
                self.metrics.connection_failed(labels, decision.flag)
                record.result, record.reason = decision.flag, decision.reason
                core.respond(stream.stream_id, decision.status or 400)
                stream.discard_unread()  # what the client sent early never reaches anyone
                await channel.drain()
                return
            dest = decision.destination
            record.src_workload = decision.source_workload.name if decision.source_workload else "-"
            record.dst_workload, record.dst_identity = dest.name, str(dest.identity)

            def tunnel_labels() -> ConnectionLabels:
                return connection_labels(
                    reporter="destination",
                    source=decision.source_workload,
                    source_identity=peer,
                    destination=dest,
                    destination_identity=dest.identity,
                    service=service_for(state, request),
                    mutual_tls=True,
                )

            try:
                sock = await self.sockets.connect_socket(
                    decision.upstream_ip, decision.upstream_port, source=decision.source_ip
                )
            except (OSError, TimeoutError) as err:
                self.metrics.connection_failed(tunnel_labels(), FLAG_CONNECT)
                record.result, record.reason = FLAG_CONNECT, f"upstream connect failed: {err}"
                core.respond(stream.stream_id, 503)
                stream.discard_unread()
                await channel.drain()
                return
            # What the caller sent with the CONNECT goes to the pod now, before the 200
            # goes back (and before the labels are looked up): the pod starts on the
            # request meanwhile (a new connection's latency). A socket error here is the
            # relay's to meet.
            early = 0
            with contextlib.suppress(OSError):
                early = stream.send_queued(sock)
            labels = tunnel_labels()
            # The 200 leaves with relay()'s first flush. When the pod has a request to
            # answer, that flush waits (up to ANSWER_HOLD_S) for the answer: the 200 and
            # a quick answer are one TLS record, one wake-up at the source instead of
            # two. A peer that waits for the 200 before it sends (Envoy) sent nothing
            # early and gets the 200 at once.
            core.respond(stream.stream_id, 200)
            self.metrics.connection_opened(labels)
            moved = Transfer()  # forward: server to client (into the tunnel), here
            try:
                await relay(stream, sock, moved, hold_first_flush=ANSWER_HOLD_S if early else 0.0)
            except (HboneError, OSError) as err:
                record.result, record.reason = "reset", str(err)
                stream.reset(CONNECT_ERROR)
            finally:
                sock.close()
                record.bytes_sent, record.bytes_received = moved.forward, moved.backward
                self.metrics.connection_closed(labels, received=moved.backward, sent=moved.forward)
        finally:
            record.emit(self.config.access_log_format)

    # --- inbound plaintext (15006) ----------------------------------------

    async def handle_plaintext(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A captured plaintext connection to a local workload (PeerAuthentication decides)."""
        src_ip, src_port = _addr(writer.get_extra_info("peername"))
        dst_ip, dst_port = _addr(writer.get_extra_info("sockname"))
        record = AccessRecord("inbound-plaintext", f"{src_ip}:{src_port}", f"{dst_ip}:{dst_port}")
        state = self.state()
        decision = inbound.decide_plaintext(
            state,
            source_ip=src_ip,
            destination_ip=dst_ip,
            destination_port=dst_port,
            node=self.config.node_name,
            network=self.config.network,
        )
        destination = state.workload_by_ip(dst_ip, self.config.network)
        source = state.workload_by_ip(src_ip, self.config.network)
        labels = connection_labels(reporter="destination", source=source, destination=destination)
        try:
            if isinstance(decision, inbound.Refuse):
                self.metrics.connection_failed(labels, decision.flag)
                record.result, record.reason = decision.flag, decision.reason
                writer.transport.abort()
                return
            upstream = await self.sockets.connect(
                decision.upstream_ip, decision.upstream_port, source=decision.source_ip
            )
            self.metrics.connection_opened(labels)
            moved = Transfer()
            try:
                await splice((reader, writer), upstream, moved)
            finally:
                upstream[1].close()
                record.bytes_received, record.bytes_sent = moved.forward, moved.backward
                self.metrics.connection_closed(labels, received=moved.forward, sent=moved.backward)
        except (OSError, TimeoutError) as err:
            self.metrics.connection_failed(labels, FLAG_CONNECT)
            record.result, record.reason = FLAG_CONNECT, str(err)
            writer.transport.abort()
        finally:
            writer.close()
            record.emit(self.config.access_log_format)


def _tunnel_labels(
    plan: outbound.Tunnel, source: Workload | None, record: AccessRecord
) -> ConnectionLabels:
    """The source reporter's labels for a tunnel; the record learns the identities."""
    record.src_identity = str(plan.pool_key.source)
    record.dst_identity = str(plan.pool_key.destination)
    record.dst_workload = plan.destination.name
    return connection_labels(
        reporter="source",
        source=source,
        source_identity=plan.pool_key.source,
        destination=plan.destination,
        destination_identity=plan.pool_key.destination,
        service=plan.service,
        mutual_tls=True,
    )


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (SO_LINGER 0), as a transport's ``abort()`` does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


_LINGER_RESET = struct.pack("ii", 1, 0)


def service_for(state: ProxyState, request: TunnelRequest) -> Service | None:
    """The service a CONNECT names in ``forwarded: ...;host=`` (telemetry), if known."""
    if not request.forwarded_host:
        return None
    return state.service_by_hostname(request.forwarded_host)


def _failure_flag(err: BaseException) -> str:
    if isinstance(err, TunnelRefusedError):
        return "DENY" if err.status == 401 else FLAG_CONNECT
    if isinstance(err, IdentityError):
        return err.response_flag
    if isinstance(err, ssl.SSLError):
        return FLAG_TLS_FAILURE
    if isinstance(err, HboneError):
        return err.response_flag
    return FLAG_CONNECT
