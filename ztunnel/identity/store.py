"""The asyncio shell of workload identity: certificates per identity, and TLS contexts.

For each identity with a local workload, a :class:`~ztunnel.identity.rotation.CertificateRotation`
decides when to ask the CA; this store asks (through an injected ``issue``
coroutine: the local CA now, the control plane's CA client later), keeps the
results, and builds one server and one client ``SSLContext`` per certificate, so
new connections use the newest certificate while old connections keep theirs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable

from cryptography.hazmat.primitives import serialization

from ztunnel.errors import IdentityError
from ztunnel.identity.certs import (
    BACKDATE,
    DEFAULT_LEAF_TTL,
    CertifiedKey,
    LocalCA,
    load_pem_chain,
)
from ztunnel.identity.rotation import CertificateRotation
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.tls import client_context, server_context

log = logging.getLogger("ztunnel.identity")

Issuer = Callable[[SpiffeId], Awaitable[CertifiedKey]]
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The wall clock, aware UTC (the shell's clock; the core takes ``now`` instead)."""
    return dt.datetime.now(dt.UTC)


def local_issuer(
    ca: LocalCA,
    clock: Clock = utc_now,
    ttl: dt.timedelta = DEFAULT_LEAF_TTL,
    backdate: dt.timedelta = BACKDATE,
) -> Issuer:
    """An issuer signing with a local CA (local mode and tests)."""

    async def issue(identity: SpiffeId) -> CertifiedKey:
        return ca.issue(identity, clock(), ttl, backdate=backdate)

    return issue


class IdentityStore:
    """Certificates and TLS contexts for the identities of this node's workloads."""

    def __init__(self, roots_pem: bytes, issue: Issuer, clock: Clock = utc_now) -> None:
        self.roots_pem = roots_pem
        self._issue = issue
        self._clock = clock
        self.rotations: dict[SpiffeId, CertificateRotation] = {}
        self._contexts: dict[tuple[SpiffeId, str, bool], ssl.SSLContext] = {}
        self._wake = asyncio.Event()

    def track(self, identities: Iterable[SpiffeId]) -> None:
        """Keep certificates for exactly these identities (new ones fetched soon)."""
        wanted = set(identities)
        now = self._clock()
        for identity in wanted - set(self.rotations):
            self.rotations[identity] = CertificateRotation(identity, now)
        for identity in set(self.rotations) - wanted:
            del self.rotations[identity]
        self._wake.set()

    async def refresh_due(self) -> None:
        """Request certificates for every identity whose rotation is due."""
        for identity, rotation in list(self.rotations.items()):
            now = self._clock()
            if not rotation.due(now):
                continue
            try:
                cert = await self._issue(identity)
            except Exception as err:  # any CA failure is retried with backoff
                delay = rotation.failed(self._clock(), str(err))
                log.warning("certificate for %s failed: %s; retry in %s", identity, err, delay)
                continue
            if cert.identity != identity:
                rotation.failed(self._clock(), f"CA issued {cert.identity}, asked for {identity}")
                continue
            rotation.issued(cert, self._clock())

    async def run(self) -> None:
        """Keep certificates fresh until cancelled."""
        while True:
            await self.refresh_due()
            times = [r.next_attempt() for r in self.rotations.values()]
            delay = (min(times) - self._clock()).total_seconds() if times else 3600.0
            self._wake.clear()
            with_timeout = max(0.05, min(delay, 3600.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), with_timeout)

    def ready(self) -> bool:
        """Whether every tracked identity has a usable certificate now."""
        now = self._clock()
        return all(r.current(now) is not None for r in self.rotations.values())

    def certificate(self, identity: SpiffeId) -> CertifiedKey:
        """The certificate new connections of ``identity`` use now."""
        rotation = self.rotations.get(identity)
        cert = rotation.current(self._clock()) if rotation else None
        if cert is None:
            raise IdentityError(
                f"no valid certificate for {identity}",
                hint="the workload is not on this node, or the CA has not answered yet",
            )
        return cert

    def context(self, identity: SpiffeId, *, server: bool) -> ssl.SSLContext:
        """The TLS context presenting ``identity``'s current certificate."""
        cert = self.certificate(identity)
        key = (identity, cert.serial, server)
        context = self._contexts.get(key)
        if context is None:
            build = server_context if server else client_context
            context = build(cert, self.roots_pem)
            # Contexts of replaced certificates go; connections using them keep their own.
            self._contexts = {
                k: v
                for k, v in self._contexts.items()
                if k[:1] != (identity,) or k[1] == cert.serial
            }
            self._contexts[key] = context
        return context

    def dump(self) -> list[dict[str, object]]:
        """``/config_dump``'s ``certificates``: identity, state, chain and roots.

        Each certificate is ``{pem (base64 of the PEM), serialNumber, validFrom,
        expirationTime}`` as Istio's ztunnel writes it.
        """
        now = self._clock()
        roots = [
            _cert_json(root.public_bytes(serialization.Encoding.PEM))
            for root in load_pem_chain(self.roots_pem)
        ]
        out: list[dict[str, object]] = []
        for identity, rotation in sorted(self.rotations.items()):
            chain = [
                _cert_json(pem)
                for cert in rotation.certificates(now)[-1:]
                for pem in cert.chain_pem
            ]
            out.append(
                {
                    "identity": str(identity),
                    "state": rotation.state(now),
                    "certChain": chain,
                    "rootCerts": roots,
                }
            )
        return out


def _cert_json(pem: bytes) -> dict[str, object]:
    (cert,) = load_pem_chain(pem)

    def rfc3339(when: dt.datetime) -> str:
        return when.isoformat().replace("+00:00", "Z")

    return {
        "pem": base64.b64encode(pem).decode("ascii"),
        "serialNumber": format(cert.serial_number, "x"),
        "validFrom": rfc3339(cert.not_valid_before_utc),
        "expirationTime": rfc3339(cert.not_valid_after_utc),
    }
