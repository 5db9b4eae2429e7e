"""ztunnel's delta-xDS client: a sans-IO core and its gRPC shell.

:class:`XdsClientCore` holds what the control plane sent (per type, per resource name:
the version and the domain object made at this edge by :mod:`ztunnel.xds.translate`),
builds the subscription requests (wildcard, with ``initial_resource_versions`` after a
reconnect) and answers each response with an ACK, or with a NACK naming every
unusable resource, in which case the whole response is dropped and the previous
state stays in force. :class:`XdsClient` runs it over gRPC/TLS, reconnecting with
capped exponential backoff; the last state keeps serving while the control plane is away.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.messages import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, security, workload
from api.xds import (
    DELTA_ADS_METHOD,
    DeltaRequest,
    DeltaResponse,
    WireFormatError,
    decode_response,
    encode_request,
)
from ztunnel.errors import XdsResourceError, XdsStreamError
from ztunnel.state.proxy_state import ProxyState
from ztunnel.state.security import Authorization
from ztunnel.state.workload import Service, Workload
from ztunnel.xds.translate import (
    authorization_from_proto,
    service_from_proto,
    workload_from_proto,
)

log = logging.getLogger("ztunnel.xds")

TYPES = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
DomainObject = Workload | Service | Authorization


def _decode(type_url: str, name: str, value: bytes) -> DomainObject:
    """One resource's bytes to a domain object; :class:`XdsResourceError` if unusable."""
    from google.protobuf.message import DecodeError

    try:
        if type_url == AUTHORIZATION_TYPE_URL:
            policy: Authorization = authorization_from_proto(
                security.Authorization.FromString(value)
            )
            return policy
        address = workload.Address.FromString(value)
    except DecodeError as err:
        raise XdsResourceError(f"undecodable: {err}", resource=name) from err
    which = address.WhichOneof("type")
    if which == "workload":
        result: Workload = workload_from_proto(address.workload)
        return result
    if which == "service":
        service: Service = service_from_proto(address.service)
        return service
    raise XdsResourceError("an Address with neither workload nor service", resource=name)


@dataclass
class TypeStatus:
    """What the client knows of one type."""

    resources: dict[str, tuple[str, DomainObject]] = field(default_factory=dict)
    """name -> (version, domain object)."""
    received: bool = False
    """A response of this type was accepted since start (readiness)."""
    last_nonce: str = ""
    acks: int = 0
    nacks: int = 0
    last_error: str = ""
    system_version: str = ""


class XdsClientCore:
    """Subscriptions, ACK/NACK decisions and the resulting :class:`ProxyState` (no I/O)."""

    def __init__(
        self, node_id: str, node_metadata: Mapping[str, str], types: tuple[str, ...] = TYPES
    ) -> None:
        self.node_id = node_id
        self.node_metadata = dict(node_metadata)
        self.types = {t: TypeStatus() for t in types}

    def initial_requests(self) -> list[DeltaRequest]:
        """The requests opening a stream: wildcard per type, with what we still hold."""
        return [
            DeltaRequest(
                type_url=type_url,
                node_id=self.node_id,
                node_metadata=self.node_metadata,
                initial_versions={n: v for n, (v, _) in status.resources.items()},
            )
            for type_url, status in self.types.items()
        ]

    def handle(self, response: DeltaResponse) -> tuple[DeltaRequest, bool]:
        """The ACK or NACK to send, and whether the state changed."""
        status = self.types.get(response.type_url)
        if status is None:
            return self._nack(response, f"unsubscribed type {response.type_url}"), False
        updated: dict[str, tuple[str, DomainObject]] = {}
        errors = []
        for resource in response.resources:
            try:
                obj = _decode(response.type_url, resource.name, resource.value)
            except XdsResourceError as err:
                errors.append(str(err))
                continue
            updated[resource.name] = (resource.version, obj)
        if errors:
            status.nacks += 1
            status.last_error = "; ".join(errors)
            log.warning(
                "NACK %s nonce %s: %s", response.type_url, response.nonce, status.last_error
            )
            return self._nack(response, status.last_error), False
        for name in response.removed:
            status.resources.pop(name, None)
        status.resources.update(updated)
        status.received = True
        status.acks += 1
        status.last_nonce = response.nonce
        status.system_version = response.system_version
        ack = DeltaRequest(type_url=response.type_url, response_nonce=response.nonce)
        return ack, bool(updated or response.removed)

    @staticmethod
    def _nack(response: DeltaResponse, error: str) -> DeltaRequest:
        return DeltaRequest(type_url=response.type_url, response_nonce=response.nonce, error=error)

    def ready(self) -> bool:
        """Whether every subscribed type has had one accepted response."""
        return all(s.received for s in self.types.values())

    def state(self) -> ProxyState:
        """The mesh as ztunnel's domain types (the same objects local mode builds)."""
        objects = [obj for s in self.types.values() for _, obj in s.resources.values()]
        return ProxyState(
            [o for o in objects if isinstance(o, Workload)],
            [o for o in objects if isinstance(o, Service)],
            [o for o in objects if isinstance(o, Authorization)],
        )

    def status(self) -> dict[str, object]:
        """Per type: resource count, accepted version, ACK/NACK counts, last NACK error."""
        return {
            type_url: {
                "resources": len(s.resources),
                "systemVersion": s.system_version,
                "acks": s.acks,
                "nacks": s.nacks,
                "lastError": s.last_error,
            }
            for type_url, s in self.types.items()
        }


# --- the gRPC shell ---------------------------------------------------------------------


@dataclass(frozen=True)
class ControlPlaneEndpoint:
    """Where the control plane is and how to talk to it (shared by xDS and the CA client)."""

    address: str
    """``host:port`` of the control plane's gRPC (TLS) port, e.g. ``127.0.0.1:15012``."""
    root_cert: Path
    """The mesh root that signed the control plane's serving certificate (``root-cert.pem``)."""
    token_file: Path | None = None
    """The bearer token (node credential or projected service-account token), re-read on
    every connection so a rotated token is picked up."""
    server_name: str = ""
    """The name to verify in the server certificate if not the address's host
    (for example ``istiod.istio-system.svc``)."""
    cluster_id: str = "Kubernetes"
    """Sent as ``clusterid`` metadata, as Istio's ztunnel does."""
    timeout: float = 10.0
    """Seconds for connecting and for each unary call."""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata: the bearer token (if any) and the cluster id."""
        out = [("clusterid", self.cluster_id)]
        if self.token_file is not None:
            out.append(("authorization", f"Bearer {self.token_file.read_text().strip()}"))
        return tuple(out)

    def channel(self) -> Any:
        """A new TLS channel (server-authenticated against ``root_cert``)."""
        import grpc

        credentials = grpc.ssl_channel_credentials(root_certificates=self.root_cert.read_bytes())
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 200 * 1024 * 1024),
            # A control plane that vanishes without closing the connection is noticed
            # within ~40 s, so the client reconnects instead of waiting forever.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.address, credentials, options=options)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: exponential with jitter, capped."""

    initial: float = 0.2
    """Seconds after the first failure."""
    maximum: float = 15.0
    """The cap on any delay."""
    multiplier: float = 2.0
    """Growth per consecutive failure."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after ``failures`` consecutive failed or broken connections."""
        base = min(self.initial * self.multiplier ** max(failures - 1, 0), self.maximum)
        return float(min(base * rng.uniform(1 - self.jitter, 1 + self.jitter), self.maximum))


class XdsClient:
    """Keeps a :class:`ProxyState` in step with the control plane until cancelled."""

    def __init__(
        self,
        endpoint: ControlPlaneEndpoint,
        node_id: str,
        on_state: Callable[[ProxyState], None],
        *,
        node_metadata: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.core = XdsClientCore(node_id, node_metadata or {})
        self.on_state = on_state
        self.backoff = backoff or Backoff()
        self.connected = False
        self.connections = 0
        self.last_error = ""
        self.first_state = asyncio.Event()
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography

    async def run(self) -> None:
        """Connect, follow, reconnect with backoff; never returns until cancelled."""
        failures = 0
        while True:
            try:
                received = await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # grpc errors, TLS, a missing token file
                self.last_error = f"{type(err).__name__}: {err}"
                received = False
            self.connected = False
            failures = 0 if received else failures + 1
            delay = self.backoff.delay(max(failures, 1), self._rng)
            log.warning(
                "xDS stream to %s ended (%s); keeping the last state, retry in %.1fs",
                self.endpoint.address,
                self.last_error or "closed",
                delay,
            )
            await asyncio.sleep(delay)

    async def _stream(self) -> bool:
        """One stream; True when it delivered at least one response."""
        import grpc

        received = False
        async with self.endpoint.channel() as channel:
            await asyncio.wait_for(channel.channel_ready(), self.endpoint.timeout)
            method = channel.stream_stream(DELTA_ADS_METHOD)
            call = method(metadata=self.endpoint.metadata())
            try:
                for request in self.core.initial_requests():
                    await call.write(encode_request(request))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
                # The server ended the stream (a refusal) before or while we wrote: the
                # call's final status says why, not the write's error.
                code = await asyncio.wait_for(call.code(), self.endpoint.timeout)
                details = await asyncio.wait_for(call.details(), self.endpoint.timeout)
                if code is None or code == grpc.StatusCode.OK:
                    raise
                raise XdsStreamError(code.name, details or "") from err
            self.connected = True
            self.connections += 1
            self.last_error = ""
            log.info("xDS connected to %s", self.endpoint.address)
            while True:
                data = await call.read()
                if data is grpc.aio.EOF:
                    self.last_error = "the control plane closed the stream"
                    return received
                received = True
                try:
                    response = decode_response(data)
                except WireFormatError as err:
                    self.last_error = str(err)
                    return received
                reply, changed = self.core.handle(response)
                await call.write(encode_request(reply))
                first = not self.first_state.is_set()
                if self.core.ready() and (changed or first):
                    self.on_state(self.core.state())
                    self.first_state.set()

    def status(self) -> dict[str, object]:
        """Connection facts and per-type bookkeeping (for ztunnel's admin)."""
        return {
            "address": self.endpoint.address,
            "connected": self.connected,
            "connections": self.connections,
            "lastError": self.last_error,
            "types": self.core.status(),
        }


def node_id(ip: str = "", pod: str = "ztunnel", namespace: str = "istio-system") -> str:
    """Istio's proxy id for ztunnel: ``ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local``."""
    return f"ztunnel~{ip or '1.1.1.1'}~{pod}.{namespace}~{namespace}.svc.cluster.local"
