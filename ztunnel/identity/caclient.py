"""Certificates from the control plane's CA (``istio.v1.auth.IstioCertificateService``).

:class:`CaClient.issue` has the shape of :data:`ztunnel.identity.store.Issuer`, so the
:class:`~ztunnel.identity.store.IdentityStore` (and its
:class:`~ztunnel.identity.rotation.CertificateRotation`: renew at half-life, backoff,
old certificate kept until expiry) uses it exactly as it uses the local CA. Like
Istio's ztunnel in node mode it sends one CSR per identity with
``ImpersonatedIdentity`` metadata and a bearer token, then checks that the leaf
certifies the identity asked for and chains to the mesh root it trusts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from api.xds import (
    CA_METHOD,
    IMPERSONATED_IDENTITY,
    CertificateRequest,
    WireFormatError,
    decode_certificate_response,
    encode_certificate_request,
)
from ztunnel.errors import CertificateError, IdentityError
from ztunnel.identity.certs import CertifiedKey, build_csr, generate_key, key_to_pem, load_pem_chain
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.xds.client import ControlPlaneEndpoint

log = logging.getLogger("ztunnel.identity")


def check_chain(chain_pem: tuple[str, ...], roots_pem: bytes, identity: SpiffeId) -> CertifiedKey:
    """Validate a CA answer (leaf first): identity, issuer links, anchored in a trusted root.

    Returns a :class:`CertifiedKey` without a key (the caller adds its own) whose chain
    stops below the root, as the local CA's does.
    """
    if not chain_pem:
        raise CertificateError("the CA answered with an empty certificate chain")
    certs = [c for pem in chain_pem for c in load_pem_chain(pem.encode())]
    roots = load_pem_chain(roots_pem)
    for below, above in itertools.pairwise(certs):
        try:
            below.verify_directly_issued_by(above)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise CertificateError(
                f"the CA's chain is broken at {below.subject.rfc4514_string()!r}",
                hint="the control plane's CA files are inconsistent",
            ) from err
    top = certs[-1]
    if top not in roots and not any(_issued_by(top, root) for root in roots):
        raise CertificateError(
            "the CA's chain does not lead to the mesh root this ztunnel trusts",
            hint="give ztunnel the control plane's root-cert.pem",
        )
    pems = tuple(c.public_bytes(Encoding.PEM) for c in certs if c not in roots)
    return CertifiedKey(key_pem=b"", chain_pem=pems)


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CaClient:
    """Asks the control plane's CA for workload certificates over gRPC/TLS."""

    def __init__(
        self,
        endpoint: ControlPlaneEndpoint,
        ttl: dt.timedelta = dt.timedelta(hours=24),
    ) -> None:
        self.endpoint = endpoint
        self.ttl = ttl
        self._channel: Any = None
        self.issued = 0

    async def issue(self, identity: SpiffeId) -> CertifiedKey:
        """A fresh key and a certificate for ``identity`` (the :data:`Issuer` shape)."""
        import grpc

        key = generate_key()
        request = CertificateRequest(
            csr=build_csr(key, identity).decode(),
            validity_seconds=int(self.ttl.total_seconds()),
            metadata={IMPERSONATED_IDENTITY: str(identity)},
        )
        if self._channel is None:
            self._channel = self.endpoint.channel()
        method = self._channel.unary_unary(CA_METHOD)
        try:
            data = await method(
                encode_certificate_request(request),
                metadata=self.endpoint.metadata(),
                timeout=self.endpoint.timeout,
            )
            chain = decode_certificate_response(data)
        except grpc.aio.AioRpcError as err:
            raise IdentityError(
                f"the CA at {self.endpoint.address} refused {identity}: "
                f"{err.code().name}: {err.details()}",
                hint="check the node credential (token file) and that the workload is "
                "scheduled on this node",
            ) from err
        except (OSError, WireFormatError) as err:
            raise IdentityError(f"certificate request for {identity} failed: {err}") from err
        checked = check_chain(chain, self.endpoint.root_cert.read_bytes(), identity)
        result = CertifiedKey(key_pem=key_to_pem(key), chain_pem=checked.chain_pem)
        if result.identity != identity:
            raise CertificateError(f"the CA issued {result.identity}, asked for {identity}")
        self.issued += 1
        log.info("certificate for %s valid until %s", identity, result.not_after.isoformat())
        return result

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
