"""Workload identity: SPIFFE ids, certificates, rotation and mTLS contexts."""

from ztunnel.identity.spiffe import SpiffeId

__all__ = ["SpiffeId"]
