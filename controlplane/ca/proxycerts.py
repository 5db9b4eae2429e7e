"""Certificates the control plane makes for Envoy proxies (waypoints, gateways) it serves SDS to.

Unlike a ztunnel, an Envoy asks for its certificate over SDS and sends no CSR: the
control plane generates the key, has its CA sign it for exactly the proxy's identity,
and hands key and chain only to that proxy's authenticated stream (the key never leaves
this process otherwise, and is never written to disk). Pure apart from the key
generation: every call takes ``now``. A certificate is made again once half its
lifetime has passed (Istio's default rotation point), so a proxy is never sent one
close to expiry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from controlplane.ca.authority import CertificateAuthority
from ztunnel.identity.certs import build_csr, generate_key, key_to_pem
from ztunnel.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class ProxyCertificate:
    """A key and its signed chain for one identity."""

    identity: SpiffeId
    key_pem: bytes
    chain_pems: tuple[str, ...]
    """Leaf first, then the CA's chain up to (and including) the root."""
    issued_at: dt.datetime
    """When it was signed (its ``notBefore`` is back-dated a minute for lagging peers)."""
    not_after: dt.datetime

    @property
    def renew_at(self) -> dt.datetime:
        """Half-life: when a new certificate replaces this one."""
        return self.issued_at + (self.not_after - self.issued_at) / 2

    @property
    def leaf_and_intermediates(self) -> str:
        """The PEM chain a TLS peer is sent (the root stays out: peers have it)."""
        pems = self.chain_pems[:-1] if len(self.chain_pems) > 1 else self.chain_pems
        return "".join(pems)


class ProxyCertificates:
    """One current certificate per identity, issued on demand, renewed at half-life."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self._current: dict[SpiffeId, ProxyCertificate] = {}
        self.issued = 0

    def get(self, identity: SpiffeId, now: dt.datetime) -> ProxyCertificate:
        """The identity's certificate: the current one, or a new one when it is due."""
        cert = self._current.get(identity)
        if cert is None or now >= cert.renew_at:
            cert = self._issue(identity, now)
        return cert

    def forget(self, keep: set[SpiffeId]) -> None:
        """Drop the keys of identities no connected proxy has any more."""
        for identity in [i for i in self._current if i not in keep]:
            del self._current[identity]

    def next_renewal(self) -> dt.datetime | None:
        """The earliest half-life of the current certificates (None: none issued)."""
        return min((c.renew_at for c in self._current.values()), default=None)

    def _issue(self, identity: SpiffeId, now: dt.datetime) -> ProxyCertificate:
        key = generate_key()
        csr = build_csr(key, identity).decode()
        signed = self.ca.sign(csr, now, 0, identity=identity)
        cert = ProxyCertificate(identity, key_to_pem(key), signed.pems, now, signed.not_after)
        self._current[identity] = cert
        self.issued += 1
        return cert
