"""Workload certificates: keys and CSRs, a local CA, and reading identities back.

Istio's shape throughout: ECDSA P-256 keys, SHA-256 signatures, an empty subject
and exactly one URI SAN ``spiffe://<td>/ns/<ns>/sa/<sa>``, 24 h leaves by default.
:class:`LocalCA` is the CA of the local mode and of tests; in a cluster the control
plane's CA signs the same CSRs. Nothing here reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztunnel.errors import CertificateError
from ztunnel.identity.spiffe import SpiffeId

DEFAULT_LEAF_TTL = dt.timedelta(hours=24)
DEFAULT_ROOT_TTL = dt.timedelta(days=3650)
# Leaves start a little in the past so a peer whose clock lags slightly accepts them.
BACKDATE = dt.timedelta(minutes=1)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of ``key``, unencrypted (it lives in memory or a 0600 file)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def build_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR with an empty subject and one URI SAN naming ``identity``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _uri_identity(extensions: x509.Extensions, what: str) -> SpiffeId:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as err:
        raise CertificateError(
            f"{what} has no subjectAltName",
            hint="workload certificates carry one URI SAN spiffe://<td>/ns/<ns>/sa/<sa>",
        ) from err
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertificateError(
            f"{what} has {len(uris)} URI SANs, expected exactly one",
            hint="workload certificates carry one URI SAN spiffe://<td>/ns/<ns>/sa/<sa>",
        )
    return SpiffeId.parse(uris[0])


def csr_identity(csr_pem: bytes) -> SpiffeId:
    """The identity a PEM CSR asks for; raise :class:`CertificateError` if unusable."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise CertificateError(f"unparsable CSR: {err}") from err
    if not csr.is_signature_valid:
        raise CertificateError("CSR signature does not verify", hint="the CSR was altered")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("CSR key is not ECDSA P-256", hint="generate the key with P-256")
    return _uri_identity(csr.extensions, "CSR")


def certificate_identity(cert: x509.Certificate | bytes) -> SpiffeId:
    """The SPIFFE identity in a certificate (DER bytes or parsed) from its URI SAN."""
    if isinstance(cert, bytes):
        try:
            cert = x509.load_der_x509_certificate(cert)
        except ValueError as err:
            raise CertificateError(f"unparsable peer certificate: {err}") from err
    return _uri_identity(cert.extensions, "certificate")


def load_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM bundle, in order; raise if there is none."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as err:
        raise CertificateError(f"unparsable certificate PEM: {err}") from err
    return certs


@dataclass(frozen=True)
class CertifiedKey:
    """A workload's key with its certificate chain (leaf first), as PEM."""

    key_pem: bytes
    """The private key, PKCS#8 PEM."""
    chain_pem: tuple[bytes, ...]
    """The leaf first, then intermediates; roots are not included."""

    @cached_property
    def leaf(self) -> x509.Certificate:
        """The parsed leaf certificate."""
        return x509.load_pem_x509_certificate(self.chain_pem[0])

    @property
    def identity(self) -> SpiffeId:
        """The identity the leaf certifies."""
        return certificate_identity(self.leaf)

    @property
    def not_before(self) -> dt.datetime:
        """Start of validity (aware, UTC)."""
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        """End of validity (aware, UTC)."""
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> str:
        """The leaf's serial number in hex, as ``/config_dump`` shows it."""
        return format(self.leaf.serial_number, "x")

    def valid_at(self, now: dt.datetime) -> bool:
        """Whether the leaf is within its validity window at ``now``."""
        return self.not_before <= now < self.not_after

    @classmethod
    def from_pem(cls, key_pem: bytes, chain_pem: bytes) -> CertifiedKey:
        """Build from a key PEM and a chain bundle; check the key fits the leaf."""
        chain = load_pem_chain(chain_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise CertificateError(f"unparsable private key: {err}") from err
        if key.public_key() != chain[0].public_key():
            raise CertificateError(
                "the private key does not belong to the leaf certificate",
                hint="pair each certificate with the key its CSR was made from",
            )
        pems = tuple(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        return cls(key_pem=key_pem, chain_pem=pems)


class LocalCA:
    """A self-contained CA: one root key and certificate, signing workload CSRs."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> None:
        self._key = key
        self.root = root

    @classmethod
    def create(
        cls,
        now: dt.datetime,
        *,
        trust_domain: str = "cluster.local",
        validity: dt.timedelta = DEFAULT_ROOT_TTL,
    ) -> LocalCA:
        """A new root valid from ``now - BACKDATE`` for ``validity``."""
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"ambient-node root ({trust_domain})"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, root)

    @classmethod
    def from_pem(cls, key_pem: bytes, root_pem: bytes) -> LocalCA:
        """A CA from its saved key and root certificate; checks they belong together."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            root = x509.load_pem_x509_certificate(root_pem)
        except (ValueError, TypeError) as err:
            raise CertificateError(f"unparsable CA key or root certificate: {err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != root.public_key():
            raise CertificateError(
                "the CA key does not belong to the CA root certificate",
                hint="keep ca-key.pem and root-cert.pem from the same CA together",
            )
        return cls(key, root)

    @property
    def key_pem(self) -> bytes:
        """The CA's private key, PEM (to persist the CA; keep it 0600)."""
        return key_to_pem(self._key)

    @property
    def root_pem(self) -> bytes:
        """The root certificate, PEM (what every peer trusts)."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    def sign_csr(
        self,
        csr_pem: bytes,
        now: dt.datetime,
        ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        *,
        backdate: dt.timedelta = BACKDATE,
    ) -> tuple[bytes, ...]:
        """Sign a workload CSR; the chain (leaf, root) as PEM, leaf first.

        The leaf is valid from ``now - backdate`` (peers with a slightly late clock
        accept it) until ``now + ttl``.
        """
        identity = csr_identity(csr_pem)
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked by csr_identity
        not_after = min(now + ttl, self.root.not_valid_after_utc)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return (leaf.public_bytes(serialization.Encoding.PEM), self.root_pem)

    def issue(
        self,
        identity: SpiffeId,
        now: dt.datetime,
        ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        *,
        backdate: dt.timedelta = BACKDATE,
    ) -> CertifiedKey:
        """Generate a key and CSR for ``identity`` and sign it (local mode, tests)."""
        key = generate_key()
        chain = self.sign_csr(build_csr(key, identity), now, ttl, backdate=backdate)
        # The chain handed to TLS stops below the root: peers already hold the root.
        return CertifiedKey(key_pem=key_to_pem(key), chain_pem=chain[:-1])

    def verify(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` was signed by this CA's root key."""
        try:
            cert.verify_directly_issued_by(self.root)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True
