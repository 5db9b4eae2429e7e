"""mTLS contexts for HBONE: TLS 1.3 only, ALPN ``h2``, identities from SPIFFE SANs.

The server requires a client certificate chaining to the mesh root; the client
presents its workload certificate and, after the handshake, checks the server's
identity against the identities it expected (OpenSSL's host-name checks do not
apply to SPIFFE URIs). Identity for policy comes only from the verified
certificate. The contexts are built from in-memory PEM; OpenSSL needs the key and
chain as files, so they pass through a private temporary directory that is removed
before the builder returns.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Collection
from pathlib import Path

from ztunnel.errors import CertificateError, PeerIdentityError
from ztunnel.identity.certs import CertifiedKey, certificate_identity
from ztunnel.identity.spiffe import SpiffeId

ALPN_H2 = "h2"


def _load_identity(context: ssl.SSLContext, cert: CertifiedKey) -> None:
    with tempfile.TemporaryDirectory(prefix="ztunnel-tls-") as tmp:
        key_path = Path(tmp) / "key.pem"
        chain_path = Path(tmp) / "chain.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cert.key_pem)
        chain_path.write_bytes(b"".join(cert.chain_pem))
        try:
            context.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as err:
            raise CertificateError(
                f"cannot load the certificate of {cert.identity}: {err}"
            ) from err


def _base_context(*, server: bool, cert: CertifiedKey, roots_pem: bytes) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN_H2])
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=roots_pem.decode("ascii"))
    except (ssl.SSLError, ValueError) as err:
        raise CertificateError(f"cannot load the mesh root certificates: {err}") from err
    _load_identity(context, cert)
    return context


def server_context(cert: CertifiedKey, roots_pem: bytes) -> ssl.SSLContext:
    """The 15008 listener's context for one local identity: client certificates required."""
    return _base_context(server=True, cert=cert, roots_pem=roots_pem)


def client_context(cert: CertifiedKey, roots_pem: bytes) -> ssl.SSLContext:
    """An outbound HBONE context presenting ``cert``; check the peer with :func:`verify_peer`."""
    context = _base_context(server=False, cert=cert, roots_pem=roots_pem)
    # SPIFFE identities are URIs, not host names: checked by verify_peer instead.
    context.check_hostname = False
    return context


def peer_identity(conn: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    """The SPIFFE identity of the verified peer of a completed handshake."""
    der = conn.getpeercert(binary_form=True)
    if not der:
        raise PeerIdentityError(
            "the peer presented no certificate",
            hint="HBONE peers must present a workload certificate",
        )
    return certificate_identity(der)


def negotiated_h2(conn: ssl.SSLObject | ssl.SSLSocket) -> bool:
    """Whether ALPN settled on ``h2`` (HBONE needs HTTP/2)."""
    return conn.selected_alpn_protocol() == ALPN_H2


def verify_peer(
    conn: ssl.SSLObject | ssl.SSLSocket,
    *,
    expected: Collection[SpiffeId] = (),
    trust_domain: str | None = None,
) -> SpiffeId:
    """Check the verified peer's identity after the handshake and return it.

    ``expected`` (client side): the identities acceptable for this destination;
    ``trust_domain`` (server side): the peer must belong to it. Failure raises
    :class:`PeerIdentityError`, recorded as ``IDENTITY_ERROR``.
    """
    identity = peer_identity(conn)
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise PeerIdentityError(
            f"peer {identity} is in trust domain {identity.trust_domain!r}, not {trust_domain!r}",
            hint="both meshes must share a trust domain (or be federated)",
        )
    if expected and identity not in expected:
        wanted = ", ".join(sorted(str(e) for e in expected))
        raise PeerIdentityError(
            f"peer presented {identity}, expected one of {wanted}",
            hint="the destination's workload or subject alt names do not match its certificate",
        )
    return identity
