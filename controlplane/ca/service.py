"""``CreateCertificate`` as a plain object: authenticate, check the CSR and the caller's
right to the identity, sign, count. The gRPC shell (:mod:`controlplane.server`) only
moves bytes and maps the errors raised here onto status codes.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from api.xds import IMPERSONATED_IDENTITY, CertificateRequest
from controlplane.ca.auth import Authenticator, bearer_token, check_impersonation
from controlplane.ca.authority import CertificateAuthority
from controlplane.errors import AuthenticationError, CsrRejected, ImpersonationDenied
from controlplane.model import ClusterState

log = logging.getLogger("controlplane.ca")


@dataclass
class SigningStats:
    """Counters of the CA (``controlplane status`` and the signing-rate benchmark)."""

    issued: int = 0
    refused_unauthenticated: int = 0
    refused_impersonation: int = 0
    refused_csr: int = 0
    signing_seconds: float = 0.0
    """Total time spent in signing (CSR checks and the signature), for the rate."""
    last_refusal: str = ""
    by_node: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready counters, with the mean signing rate."""
        rate = self.issued / self.signing_seconds if self.signing_seconds else 0.0
        return {
            "issued": self.issued,
            "refusedUnauthenticated": self.refused_unauthenticated,
            "refusedImpersonation": self.refused_impersonation,
            "refusedCsr": self.refused_csr,
            "signingRatePerSecond": round(rate, 1),
            "lastRefusal": self.last_refusal,
            "issuedByNode": dict(sorted(self.by_node.items())),
        }


class CertificateService:
    """Signs workload CSRs for authenticated nodes, for their own workloads only."""

    def __init__(
        self,
        ca: CertificateAuthority,
        authenticator: Authenticator,
        cluster: Callable[[], ClusterState],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.ca = ca
        self.authenticator = authenticator
        self._cluster = cluster
        self._clock = clock
        self.stats = SigningStats()

    def create_certificate(
        self, request: CertificateRequest, metadata: Mapping[str, str], peer: str = ""
    ) -> tuple[str, ...]:
        """The signed chain (leaf first, root last), or an error saying why not.

        Raises :class:`AuthenticationError` (no or bad credential),
        :class:`ImpersonationDenied` (identity not on the caller's node) or
        :class:`CsrRejected` (malformed CSR); every refusal is logged.
        """
        state, now = self._cluster(), self._clock()
        try:
            caller = self.authenticator.authenticate(bearer_token(metadata), state, now)
        except AuthenticationError as err:
            self._refused("unauthenticated", f"{peer}: {err}")
            raise
        started = time.perf_counter()
        try:
            _, identity = self.ca.check_csr(request.csr)
            wanted = request.metadata.get(IMPERSONATED_IDENTITY)
            if wanted and wanted != str(identity):
                raise CsrRejected(
                    f"metadata ImpersonatedIdentity {wanted!r} differs from the CSR's {identity}",
                    hint="the CSR's URI SAN must be the identity asked for",
                )
            check_impersonation(caller, identity, state)
            signed = self.ca.sign(request.csr, now, request.validity_seconds, identity=identity)
        except CsrRejected as err:
            self._refused("csr", f"node {caller.node}: {err}")
            raise
        except ImpersonationDenied as err:
            self._refused("impersonation", str(err))
            raise
        self.stats.signing_seconds += time.perf_counter() - started
        self.stats.issued += 1
        self.stats.by_node[caller.node] = self.stats.by_node.get(caller.node, 0) + 1
        log.info(
            "issued %s to node %s (%s) until %s",
            signed.identity,
            caller.node,
            caller.method,
            signed.not_after.isoformat(),
        )
        return signed.pems

    def _refused(self, kind: str, message: str) -> None:
        if kind == "unauthenticated":
            self.stats.refused_unauthenticated += 1
        elif kind == "impersonation":
            self.stats.refused_impersonation += 1
        else:
            self.stats.refused_csr += 1
        self.stats.last_refusal = message
        log.warning("certificate refused (%s): %s", kind, message)
