"""SPIFFE identities as Istio uses them: ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ztunnel.errors import InvalidSpiffeIdError

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"

# Trust domains are DNS-like names (SPIFFE spec: lower-case letters, digits, '.', '-', '_').
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
# Kubernetes namespace and service-account names (DNS-1123 subdomain, kept simple).
_K8S_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A workload identity: trust domain, namespace and service account."""

    trust_domain: str
    """The mesh's trust domain, ``cluster.local`` by default."""
    namespace: str
    """The Kubernetes namespace of the workload."""
    service_account: str
    """The Kubernetes service account the workload runs as."""

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain):
            raise InvalidSpiffeIdError(
                f"invalid trust domain {self.trust_domain!r}",
                hint="a trust domain holds only lower-case letters, digits, '.', '-' and '_'",
            )
        for what, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not _K8S_NAME.match(value):
                raise InvalidSpiffeIdError(
                    f"invalid {what} {value!r} in a SPIFFE identity",
                    hint="namespaces and service accounts are lower-case DNS-1123 names",
                )

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://td/ns/<ns>/sa/<sa>``; raise :class:`InvalidSpiffeIdError`."""
        if not text.startswith(SCHEME):
            raise InvalidSpiffeIdError(
                f"{text!r} is not a SPIFFE id: it does not start with {SCHEME!r}",
                hint="Istio identities look like spiffe://cluster.local/ns/<ns>/sa/<sa>",
            )
        parts = text[len(SCHEME) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidSpiffeIdError(
                f"{text!r} is not an Istio workload identity",
                hint="expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
            )
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    @classmethod
    def for_workload(
        cls, namespace: str, service_account: str = "", trust_domain: str = ""
    ) -> SpiffeId:
        """The identity of a workload, applying Istio's defaults for empty fields."""
        return cls(
            trust_domain=trust_domain or DEFAULT_TRUST_DOMAIN,
            namespace=namespace,
            service_account=service_account or DEFAULT_SERVICE_ACCOUNT,
        )

    @property
    def principal(self) -> str:
        """The identity without ``spiffe://``, the form authorization policies match."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return SCHEME + self.principal
