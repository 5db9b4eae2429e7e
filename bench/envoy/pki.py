"""A throw-away mesh PKI for the Envoy reference: one root, SPIFFE workload certificates.

Same shape as the mesh's own identities (DESIGN.md section 3): ECDSA P-256, one URI
SAN ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``, 24 h lifetime.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "cluster.local"
LIFETIME = datetime.timedelta(hours=24)


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class WorkloadCert:
    """A workload's certificate and key on disk."""

    spiffe_id: str
    cert_path: Path
    """PEM chain, leaf first."""
    key_path: Path
    """PEM PKCS#8 private key."""


@dataclass(frozen=True)
class MeshPki:
    """The root every proxy trusts, and the workload certificates issued under it."""

    root_path: Path
    workloads: dict[str, WorkloadCert]
    """By SPIFFE id."""


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_mesh_pki(
    folder: Path,
    identities: list[tuple[str, str]],
    *,
    trust_domain: str = TRUST_DOMAIN,
    now: datetime.datetime | None = None,
) -> MeshPki:
    """Write a root and one certificate per (namespace, service account) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)  # tolerate small clock steps
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    root_path = folder / "root-cert.pem"
    root_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    workloads: dict[str, WorkloadCert] = {}
    for namespace, service_account in identities:
        uri = spiffe_id(namespace, service_account, trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(now + LIFETIME)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
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
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        stem = f"{namespace}.{service_account}"
        cert_path = folder / f"{stem}-cert.pem"
        key_path = folder / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        workloads[uri] = WorkloadCert(uri, cert_path, key_path)
    return MeshPki(root_path, workloads)
