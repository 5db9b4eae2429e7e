"""The Envoy reference's PKI: the mesh's own local CA, its certificates written as files.

Certificates come from :class:`ztunnel.identity.certs.LocalCA`, so the sidecar pair
presents exactly what ztunnel would: ECDSA P-256, one URI SAN
``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``, 24 h leaves.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from ztunnel.identity.certs import LocalCA
from ztunnel.identity.spiffe import SpiffeId

TRUST_DOMAIN = "cluster.local"


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``."""
    return str(SpiffeId(trust_domain, namespace, service_account))


@dataclass(frozen=True)
class WorkloadCert:
    """A workload's certificate and key on disk."""

    spiffe_id: str
    cert_path: Path
    """PEM chain, leaf first (the root is not included: peers hold it)."""
    key_path: Path
    """PEM PKCS#8 private key, readable by root only."""


@dataclass(frozen=True)
class MeshPki:
    """The root every proxy trusts, and the workload certificates issued under it."""

    root_path: Path
    workloads: dict[str, WorkloadCert]
    """By SPIFFE id."""


def make_mesh_pki(
    folder: Path,
    identities: list[tuple[str, str]],
    *,
    trust_domain: str = TRUST_DOMAIN,
    now: datetime.datetime | None = None,
) -> MeshPki:
    """Write a new root and one certificate per (namespace, service account) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    ca = LocalCA.create(now, trust_domain=trust_domain)
    root_path = folder / "root-cert.pem"
    root_path.write_bytes(ca.root_pem)
    workloads: dict[str, WorkloadCert] = {}
    for namespace, service_account in identities:
        identity = SpiffeId(trust_domain, namespace, service_account)
        issued = ca.issue(identity, now)
        stem = f"{namespace}.{service_account}"
        cert_path = folder / f"{stem}-cert.pem"
        key_path = folder / f"{stem}-key.pem"
        cert_path.write_bytes(b"".join(issued.chain_pem))
        key_path.touch(mode=0o600)
        key_path.write_bytes(issued.key_pem)
        key_path.chmod(0o600)
        workloads[str(identity)] = WorkloadCert(str(identity), cert_path, key_path)
    return MeshPki(root_path, workloads)
