"""Mesh-wide settings the translation needs (Istio's mesh config, reduced)."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane import DEFAULT_EXCLUDED_NAMESPACES


@dataclass(frozen=True)
class MeshConfig:
    """What istiod would take from its mesh config and environment."""

    cluster_id: str = "Kubernetes"
    """Istio's ``CLUSTER_ID``: the first part of every workload uid."""
    trust_domain: str = "cluster.local"
    """SPIFFE trust domain of workload identities."""
    domain_suffix: str = "cluster.local"
    """Cluster DNS domain: services are ``<name>.<namespace>.svc.<domain_suffix>``."""
    root_namespace: str = "istio-system"
    """Policies placed here without a selector apply mesh-wide."""
    network: str = ""
    """The network every workload and VIP belongs to (empty: the default network)."""
    excluded_namespaces: frozenset[str] = frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    """Namespaces whose pods are never in the mesh, labelled or not (istio-cni's
    ``excludeNamespaces``). The node agents take the same list (``--exclude-namespace``),
    so a pod there is neither captured nor announced as an HBONE workload."""

    def service_hostname(self, namespace: str, name: str) -> str:
        """The cluster-local DNS name of a service."""
        return f"{name}.{namespace}.svc.{self.domain_suffix}"

    def workload_uid(self, namespace: str, name: str) -> str:
        """The workload uid istiod gives a pod: ``<cluster>//Pod/<namespace>/<name>``."""
        return f"{self.cluster_id}//Pod/{namespace}/{name}"

    @property
    def sent_trust_domain(self) -> str:
        """The trust domain as sent on the wire: istiod leaves the default one empty."""
        return "" if self.trust_domain == "cluster.local" else self.trust_domain
