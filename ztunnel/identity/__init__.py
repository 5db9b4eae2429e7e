"""Workload identity: SPIFFE ids, certificates, a local CA, rotation and mTLS contexts."""

from ztunnel.identity.certs import CertifiedKey, LocalCA
from ztunnel.identity.rotation import CertificateRotation, RetryPolicy
from ztunnel.identity.spiffe import SpiffeId

__all__ = ["CertificateRotation", "CertifiedKey", "LocalCA", "RetryPolicy", "SpiffeId"]
