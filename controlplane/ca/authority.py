"""The control plane's certificate authority: keys, chain, and signing workload CSRs.

Pure apart from :func:`load_or_create` (the state folder): every call takes ``now``.
The CA signs with either a root it generated on first start (kept in the state
folder, key 0600) or a user's root or intermediate (``--ca-cert/--ca-key/--ca-chain``).
Workload certificates follow Istio: ECDSA P-256, an empty subject, exactly one URI SAN
taken from the CSR, 24 h by default, capped, the chain returned leaf first, root last.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.errors import CaConfigError, CsrRejected
from ztunnel.errors import IdentityError
from ztunnel.identity.certs import LocalCA, csr_identity, generate_key, key_to_pem
from ztunnel.identity.spiffe import SpiffeId

DEFAULT_TTL = dt.timedelta(hours=24)
MAX_TTL = dt.timedelta(days=7)
ROOT_TTL = dt.timedelta(days=3650)
SERVING_TTL = dt.timedelta(days=30)
BACKDATE = dt.timedelta(minutes=1)
"""Leaves start a little in the past so a peer whose clock lags accepts them."""

KEY_FILE = "ca-key.pem"
CERT_FILE = "ca-cert.pem"
ROOT_FILE = "root-cert.pem"

_SERVING_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class CaSettings:
    """How the CA signs workload certificates."""

    trust_domain: str = "cluster.local"
    """Only identities of this trust domain are signed."""
    default_ttl: dt.timedelta = DEFAULT_TTL
    """Lifetime when a request asks for none (Istio: 24 h)."""
    max_ttl: dt.timedelta = MAX_TTL
    """The cap on any requested lifetime."""


@dataclass(frozen=True)
class SignedChain:
    """What the CA returns: PEM certificates, the leaf first, the root last."""

    pems: tuple[str, ...]
    identity: SpiffeId
    not_after: dt.datetime


class CertificateAuthority:
    """Signs workload CSRs with one key; knows the chain from its certificate to the root."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        chain: tuple[x509.Certificate, ...] = (),
        settings: CaSettings | None = None,
    ) -> None:
        self._key = key
        self.cert = cert
        """The signing certificate (the root itself, or an intermediate)."""
        self.chain = chain
        """Certificates above :attr:`cert`, up to and including the root."""
        self.settings = settings or CaSettings()
        _check_chain(key, cert, chain)

    # --- construction -------------------------------------------------------

    @classmethod
    def create_root(
        cls, now: dt.datetime, trust_domain: str = "cluster.local"
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new self-signed root key and certificate (ztunnel's local CA builds the same)."""
        local = LocalCA.create(now, trust_domain=trust_domain, validity=ROOT_TTL)
        key = serialization.load_pem_private_key(local.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, local.root

    @classmethod
    def from_pem(
        cls,
        key_pem: bytes,
        cert_pem: bytes,
        chain_pem: bytes = b"",
        settings: CaSettings | None = None,
    ) -> CertificateAuthority:
        """A CA from a key, its certificate and the chain above it (PEM)."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
            chain = tuple(x509.load_pem_x509_certificates(chain_pem)) if chain_pem.strip() else ()
        except (ValueError, TypeError) as err:
            raise CaConfigError(
                f"unparsable CA key, certificate or chain: {err}",
                hint="give PEM files: --ca-key (unencrypted), --ca-cert, --ca-chain",
            ) from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaConfigError(
                f"the CA key is a {type(key).__name__}, not an ECDSA key",
                hint="the CA signs with ECDSA (P-256 recommended)",
            )
        return cls(key, cert, chain, settings)

    # --- what peers trust ---------------------------------------------------

    @property
    def root(self) -> x509.Certificate:
        """The root every workload trusts (the last of the chain, or the CA itself)."""
        return self.chain[-1] if self.chain else self.cert

    @property
    def root_pem(self) -> str:
        """The root, PEM."""
        return _pem(self.root)

    @property
    def upper_chain_pems(self) -> tuple[str, ...]:
        """The signing certificate and everything above it, up to the root, PEM."""
        return tuple(_pem(c) for c in (self.cert, *self.chain))

    # --- signing ------------------------------------------------------------

    def lifetime(self, requested_seconds: int) -> dt.timedelta:
        """The validity a request gets: the default for 0, never above ``max_ttl``."""
        if requested_seconds <= 0:
            return self.settings.default_ttl
        return min(dt.timedelta(seconds=requested_seconds), self.settings.max_ttl)

    def check_csr(self, csr_pem: str) -> tuple[x509.CertificateSigningRequest, SpiffeId]:
        """The parsed CSR and its identity; :class:`CsrRejected` when it is unusable."""
        try:
            identity = csr_identity(csr_pem.encode())
        except IdentityError as err:
            raise CsrRejected(f"CSR rejected: {err}", hint=err.hint) from err
        if identity.trust_domain != self.settings.trust_domain:
            raise CsrRejected(
                f"CSR asks for {identity}, outside the trust domain {self.settings.trust_domain!r}",
                hint="request identities of this mesh's trust domain",
            )
        return x509.load_pem_x509_csr(csr_pem.encode()), identity

    def sign(
        self,
        csr_pem: str,
        now: dt.datetime,
        requested_seconds: int = 0,
        *,
        identity: SpiffeId | None = None,
    ) -> SignedChain:
        """Sign a workload CSR: leaf with the CSR's one URI SAN, then the chain to the root.

        ``identity`` is what :meth:`check_csr` returned for this CSR, when the caller
        already checked it (the service does, before the impersonation check).
        """
        if identity is None:
            _, identity = self.check_csr(csr_pem)
        # The leaf's shape (SAN, usages, backdating, the cap at the signer's expiry) is
        # ztunnel's LocalCA's; the signer here may be an intermediate.
        signer = LocalCA(self._key, self.cert)
        leaf_pem = signer.sign_csr(csr_pem.encode(), now, self.lifetime(requested_seconds))[0]
        not_after = x509.load_pem_x509_certificate(leaf_pem).not_valid_after_utc
        return SignedChain((leaf_pem.decode(), *self.upper_chain_pems), identity, not_after)

    def serving_certificate(
        self, hosts: Iterable[str], now: dt.datetime
    ) -> tuple[bytes, tuple[str, ...]]:
        """A key and chain for the control plane's own TLS server (DNS and IP SANs)."""
        key = generate_key()
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + SERVING_TTL, self.cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_SERVING_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return key_to_pem(key), (_pem(leaf), *self.upper_chain_pems)


def _check_chain(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, chain: tuple[x509.Certificate, ...]
) -> None:
    if key.public_key() != cert.public_key():
        raise CaConfigError(
            "the CA key does not belong to the CA certificate",
            hint="pass the key and certificate of the same CA (--ca-key, --ca-cert)",
        )
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaConfigError(
            "the CA certificate is not a CA (basicConstraints CA:TRUE missing)",
            hint="use a root or intermediate certificate allowed to sign certificates",
        )
    below = cert
    for above in chain:
        try:
            below.verify_directly_issued_by(above)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise CaConfigError(
                f"the CA chain is broken: {below.subject.rfc4514_string()!r} "
                f"is not signed by {above.subject.rfc4514_string()!r}",
                hint="--ca-chain lists the issuers of --ca-cert in order, up to the root",
            ) from err
        below = above
    if not chain and cert.issuer != cert.subject:
        raise CaConfigError(
            "the CA certificate is an intermediate, but no chain up to its root was given",
            hint="pass the intermediates and the root with --ca-chain",
        )


@dataclass(frozen=True)
class CaFiles:
    """A user's CA, as files (all PEM)."""

    cert: Path
    key: Path
    chain: Path | None = None


def load_or_create(
    state_dir: Path,
    now: dt.datetime,
    *,
    settings: CaSettings | None = None,
    user: CaFiles | None = None,
) -> CertificateAuthority:
    """The CA: a user's, or the one kept in ``state_dir`` (created on first start).

    ``state_dir/root-cert.pem`` always ends up holding the root clients must trust.
    """
    settings = settings or CaSettings()
    state_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        try:
            key_pem, cert_pem = user.key.read_bytes(), user.cert.read_bytes()
            chain_pem = user.chain.read_bytes() if user.chain else b""
        except OSError as err:
            raise CaConfigError(f"cannot read the CA files: {err}") from err
        ca = CertificateAuthority.from_pem(key_pem, cert_pem, chain_pem, settings)
    elif (state_dir / KEY_FILE).exists():
        try:
            key_pem = (state_dir / KEY_FILE).read_bytes()
            cert_pem = (state_dir / CERT_FILE).read_bytes()
        except OSError as err:
            raise CaConfigError(
                f"the CA in {state_dir} is incomplete: {err}",
                hint=f"restore {CERT_FILE} beside {KEY_FILE}, or move both away to start anew",
            ) from err
        ca = CertificateAuthority.from_pem(key_pem, cert_pem, b"", settings)
    else:
        key, cert = CertificateAuthority.create_root(now, settings.trust_domain)
        write_private(state_dir / KEY_FILE, key_to_pem(key))
        (state_dir / CERT_FILE).write_text(_pem(cert))
        ca = CertificateAuthority(key, cert, (), settings)
    root_file = state_dir / ROOT_FILE
    if not root_file.exists() or root_file.read_text() != ca.root_pem:
        root_file.write_text(ca.root_pem)
    return ca
