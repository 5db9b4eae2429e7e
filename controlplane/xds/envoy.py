"""Envoy's own xDS for waypoints and gateways: who a proxy is, and what it is served.

An Envoy connects to the same ADS port as the ztunnels, with the same bearer token as
its node's ztunnel. Its node metadata says who it is (:data:`NAMESPACE`,
:data:`SERVICE_ACCOUNT`, :data:`GATEWAY_NAME`, :data:`PROXY_KIND`, :data:`INSTANCE_IPS`);
:func:`proxy_from_node` turns that into a
:class:`~controlplane.envoy.proxy.EnvoyProxy` and :func:`authorize` applies the CA's
impersonation rule (a pod running as that service account on the caller's node).

:class:`EnvoySnapshots` is pure: state + proxy + ``now`` -> a per-proxy
:class:`~controlplane.xds.core.ServerSnapshot` holding LDS, RDS, CDS and EDS from
:func:`controlplane.envoy.proxy.proxy_resources`, and SDS: ``default`` (the proxy's
own key and chain, made by :class:`~controlplane.ca.proxycerts.ProxyCertificates`),
``ROOTCA`` (the mesh root) and, for gateways only, the TLS Secrets of the gateway's own
namespace (:func:`credential_secrets`). :class:`EnvoyServing` is the asyncio part: which
proxies are connected, their current snapshots, rebuilding them on each change and at
certificate half-life.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from controlplane.ca.auth import Caller, check_impersonation
from controlplane.ca.authority import CertificateAuthority
from controlplane.ca.proxycerts import ProxyCertificates
from controlplane.errors import ControlPlaneError
from controlplane.model import ClusterState, Secret
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.xds.core import ServerSnapshot
from controlplane.xds.envoytypes import (
    CLUSTER,
    DEFAULT_SECRET,
    ENDPOINT,
    LISTENER,
    ROOT_SECRET,
    ROUTE,
    SECRET,
)
from ztunnel.errors import IdentityError
from ztunnel.identity.spiffe import SpiffeId

log = logging.getLogger("controlplane.xds.envoy")

NAMESPACE = "NAMESPACE"
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
GATEWAY_NAME = "GATEWAY_NAME"
PROXY_KIND = "PROXY_KIND"
INSTANCE_IPS = "INSTANCE_IPS"
TRACING = "TRACING"
"""``"true"`` when the proxy's bootstrap has the tracing collector's cluster."""
PROXY_KINDS = ("waypoint", "gateway")

ResourcesFn = Callable[[ClusterState, Any, MeshConfig], Any]
"""``proxy_resources(state, proxy, mesh) -> EnvoyResources`` (or a test's stand-in)."""


class EnvoyNodeError(ControlPlaneError):
    """An Envoy's node metadata does not say who it is."""


def is_envoy_node(metadata: Mapping[str, str]) -> bool:
    """Whether node metadata is an Envoy proxy's (it names its kind)."""
    return PROXY_KIND in metadata


def proxy_from_node(node_id: str, metadata: Mapping[str, str]) -> Any:
    """The :class:`~controlplane.envoy.proxy.EnvoyProxy` a node claims to be."""
    from controlplane.envoy.proxy import EnvoyProxy

    missing = [k for k in (NAMESPACE, SERVICE_ACCOUNT, PROXY_KIND) if not metadata.get(k)]
    if missing:
        raise EnvoyNodeError(
            f"Envoy node {node_id!r} lacks node metadata {', '.join(missing)}",
            hint="the bootstrap's node.metadata must name NAMESPACE, SERVICE_ACCOUNT, "
            "GATEWAY_NAME and PROXY_KIND (waypoint|gateway); 'ambient waypoint run' writes them",
        )
    kind = metadata[PROXY_KIND]
    if kind not in PROXY_KINDS:
        raise EnvoyNodeError(
            f"Envoy node {node_id!r}: PROXY_KIND {kind!r} is not waypoint or gateway"
        )
    ips = [ip.strip() for ip in metadata.get(INSTANCE_IPS, "").split(",") if ip.strip()]
    if not ips:
        parts = node_id.split("~")  # Istio's node id: <kind>~<ip>~<pod>.<ns>~<ns>.svc.<domain>
        ips = [parts[1]] if len(parts) >= 2 and parts[1] else []
    return EnvoyProxy(
        node_id=node_id,
        namespace=metadata[NAMESPACE],
        service_account=metadata[SERVICE_ACCOUNT],
        gateway_name=metadata.get(GATEWAY_NAME, ""),
        kind=kind,  # type: ignore[arg-type]  # checked against PROXY_KINDS above
        ip=ips[0] if ips else "",
        tracing=metadata.get(TRACING, "").lower() in ("1", "true", "yes"),
    )


def identity_of(proxy: Any, trust_domain: str) -> SpiffeId:
    """``spiffe://<td>/ns/<namespace>/sa/<service account>`` of a proxy."""
    try:
        return SpiffeId(trust_domain, proxy.namespace, proxy.service_account)
    except IdentityError as err:
        raise EnvoyNodeError(
            f"Envoy node {proxy.node_id!r}: no valid identity from NAMESPACE "
            f"{proxy.namespace!r} and SERVICE_ACCOUNT {proxy.service_account!r}: {err}"
        ) from err


def authorize(caller_node: str, proxy: Any, state: ClusterState, trust_domain: str) -> SpiffeId:
    """The proxy's identity, if a pod with it runs on the caller's node (else
    :class:`~controlplane.errors.ImpersonationDenied`)."""
    identity = identity_of(proxy, trust_domain)
    caller = Caller(node=caller_node, subject=f"Envoy {proxy.node_id}", method="xds")
    check_impersonation(caller, identity, state)
    return identity


def secrets(certificate: Any, root_pem: str) -> dict[str, Any]:
    """SDS ``default`` (chain + key) and ``ROOTCA`` (validation context), as Istio names them."""
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    default = secret_pb2.Secret(name=DEFAULT_SECRET)
    default.tls_certificate.certificate_chain.inline_bytes = (
        certificate.leaf_and_intermediates.encode()
    )
    default.tls_certificate.private_key.inline_bytes = certificate.key_pem
    root = secret_pb2.Secret(name=ROOT_SECRET)
    root.validation_context.trusted_ca.inline_bytes = root_pem.encode()
    return {DEFAULT_SECRET: default, ROOT_SECRET: root}


CREDENTIAL_PREFIX = "kubernetes://"
"""SDS names of gateway certificates from Secrets (istiod's): ``kubernetes://<name>``."""
CA_SUFFIX = "-cacert"
"""Suffix of the SDS name (and optional Secret) holding a credential's client roots."""


def credential_secrets(state: ClusterState, proxy: Any) -> dict[str, Any]:
    """SDS secrets from Kubernetes Secrets, for a gateway proxy only, and only from the
    gateway's own namespace (Istio's rule: ``credentialName`` names a Secret beside the
    gateway deployment; a waypoint, or another namespace, gets nothing).

    Each Secret ``X`` with a certificate and key is served as ``kubernetes://X``, as
    ``kubernetes://<namespace>/X`` and as plain ``X``; its ``ca.crt`` as the validation
    context ``kubernetes://X-cacert`` (and ``X-cacert``), where a Secret actually
    named ``X-cacert`` takes precedence, as in istiod. Plain names never shadow the
    proxy's own ``default`` and ``ROOTCA``.
    """
    if getattr(proxy, "kind", "") != "gateway":
        return {}
    mine = sorted(
        (s for (namespace, _), s in state.secrets.items() if namespace == proxy.namespace),
        key=lambda s: (s.name.endswith(CA_SUFFIX), s.name),  # explicit -cacert Secrets last
    )
    out: dict[str, Any] = {}
    for secret in mine:
        if secret.has_certificate:
            for name in _names(secret.name, proxy.namespace):
                out[name] = _certificate_secret(name, secret)
        if secret.ca_certificates:
            explicit = secret.name.endswith(CA_SUFFIX) and not secret.has_certificate
            ca_name = secret.name if explicit else secret.name + CA_SUFFIX
            for name in _names(ca_name, proxy.namespace):
                out[name] = _validation_secret(name, secret)
    return out


def _names(name: str, namespace: str) -> tuple[str, ...]:
    plain = () if name in (DEFAULT_SECRET, ROOT_SECRET) else (name,)
    return (f"{CREDENTIAL_PREFIX}{name}", f"{CREDENTIAL_PREFIX}{namespace}/{name}", *plain)


def _certificate_secret(name: str, secret: Secret) -> Any:
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    out = secret_pb2.Secret(name=name)
    out.tls_certificate.certificate_chain.inline_bytes = secret.certificate_chain
    out.tls_certificate.private_key.inline_bytes = secret.private_key
    return out


def _validation_secret(name: str, secret: Secret) -> Any:
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    out = secret_pb2.Secret(name=name)
    out.validation_context.trusted_ca.inline_bytes = secret.ca_certificates
    return out


def with_empty_assignments(
    clusters: Mapping[str, Any], endpoints: Mapping[str, Any]
) -> dict[str, Any]:
    """``endpoints`` plus an empty ``ClusterLoadAssignment`` for every EDS cluster without
    one (as istiod sends), so no cluster waits in warming for endpoints that never come."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    out = dict(endpoints)
    for name, cluster in clusters.items():
        if cluster.WhichOneof("cluster_discovery_type") != "type":
            continue
        if cluster.type != cluster_pb2.Cluster.EDS:
            continue
        service = cluster.eds_cluster_config.service_name or name
        if service not in out:
            out[service] = endpoint_pb2.ClusterLoadAssignment(cluster_name=service)
    return out


def assignment_names(clusters: Mapping[str, Any]) -> dict[str, str]:
    """Cluster name -> its EDS ``service_name``, for the EDS clusters where they differ
    (:attr:`~controlplane.xds.core.ServerSnapshot.assignments`)."""
    out = {}
    for name, cluster in clusters.items():
        service = cluster.eds_cluster_config.service_name
        if service and service != name:
            out[name] = service
    return out


_NO_RESOURCES = SimpleNamespace(listeners={}, routes={}, clusters={}, endpoints={}, issues=())
"""What a proxy is served while its translation fails (its secrets still are)."""


def _default_resources(state: ClusterState, proxy: Any, mesh: MeshConfig) -> Any:
    from controlplane.envoy.proxy import proxy_resources

    return proxy_resources(state, proxy, mesh)


class EnvoySnapshots:
    """Per-proxy snapshots: translation (``resources``) plus the proxy's secrets."""

    def __init__(
        self, mesh: MeshConfig, ca: CertificateAuthority, resources: ResourcesFn | None = None
    ) -> None:
        self.mesh = mesh
        self.ca = ca
        self.certificates = ProxyCertificates(ca)
        self._resources = resources or _default_resources
        self._issues: dict[Any, frozenset[str]] = {}

    def build(self, state: ClusterState, proxy: Any, now: dt.datetime) -> ServerSnapshot:
        """Everything ``proxy`` is served, for ``state`` at ``now``."""
        return self._snapshot(self._resources(state, proxy, self.mesh), proxy, now, state)

    def build_first(self, state: ClusterState, proxy: Any, now: dt.datetime) -> ServerSnapshot:
        """:meth:`build` for a proxy that has nothing yet: a translation that fails (a
        bug, logged) leaves it with its secrets only, until a change builds it again."""
        try:
            translated = self._resources(state, proxy, self.mesh)
        except Exception:
            log.exception("cannot translate the resources of Envoy %s", proxy.node_id)
            translated = _NO_RESOURCES
        return self._snapshot(translated, proxy, now, state)

    def _snapshot(
        self, translated: Any, proxy: Any, now: dt.datetime, state: ClusterState
    ) -> ServerSnapshot:
        issues = frozenset(str(issue) for issue in translated.issues)
        if issues != self._issues.get(proxy):
            for issue in sorted(issues - self._issues.get(proxy, frozenset())):
                log.warning("Envoy %s: %s", proxy.node_id, issue)
            self._issues[proxy] = issues
        identity = identity_of(proxy, self.mesh.trust_domain)
        certificate = self.certificates.get(identity, now)
        return ServerSnapshot.build(
            {
                CLUSTER: translated.clusters,
                ENDPOINT: with_empty_assignments(translated.clusters, translated.endpoints),
                LISTENER: translated.listeners,
                ROUTE: translated.routes,
                SECRET: {
                    **credential_secrets(state, proxy),
                    **secrets(certificate, self.ca.root_pem),
                },
            },
            assignment_names(translated.clusters),
        )

    def forget(self, connected: set[Any]) -> None:
        """Drop keys and remembered issues of proxies no longer connected."""
        self.certificates.forget({identity_of(p, self.mesh.trust_domain) for p in connected})
        self._issues = {p: i for p, i in self._issues.items() if p in connected}


@dataclass
class EnvoyStats:
    """Counters of Envoy streams (``controlplane status`` and ``/metrics``)."""

    refused: int = 0
    """Streams refused: bad node metadata or an identity not on the caller's node."""
    last_refusal: str = ""
    rebuilds: int = 0
    rebuild_seconds: float = 0.0


class EnvoyServing:
    """Connected Envoy proxies and their snapshots, kept in step with the cluster."""

    def __init__(
        self,
        mesh: MeshConfig,
        ca: CertificateAuthority,
        cluster: Callable[[], ClusterState],
        *,
        resources: ResourcesFn | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.mesh = mesh
        self.builder = EnvoySnapshots(mesh, ca, resources)
        self._cluster = cluster
        self._clock = clock
        self.connected: dict[Any, int] = {}
        """proxy -> how many streams it has open (a reconnect overlaps the old one)."""
        self.snapshots: dict[Any, ServerSnapshot] = {}
        self.stats = EnvoyStats()
        self._lock = asyncio.Lock()

    async def attach(self, caller_node: str, node_id: str, metadata: Mapping[str, str]) -> Any:
        """Check who a new stream's Envoy is, register it and build its snapshot.

        Raises :class:`EnvoyNodeError` or :class:`~controlplane.errors.ImpersonationDenied`.
        """
        try:
            proxy = proxy_from_node(node_id, metadata)
            async with self._lock:
                state = self._cluster()
                authorize(caller_node, proxy, state, self.mesh.trust_domain)
                if proxy not in self.snapshots:
                    self.snapshots[proxy] = await asyncio.to_thread(
                        self.builder.build_first, state, proxy, self._clock()
                    )
                self.connected[proxy] = self.connected.get(proxy, 0) + 1
        except ControlPlaneError as err:
            self.stats.refused += 1
            self.stats.last_refusal = f"node {caller_node}, Envoy {node_id!r}: {err}"
            raise
        return proxy

    def detach(self, proxy: Any) -> None:
        """A stream of ``proxy`` closed."""
        left = self.connected.get(proxy, 0) - 1
        if left > 0:
            self.connected[proxy] = left
            return
        self.connected.pop(proxy, None)
        self.snapshots.pop(proxy, None)
        self.builder.forget(set(self.connected))

    def snapshot(self, proxy: Any) -> ServerSnapshot:
        """The proxy's current snapshot (empty before :meth:`attach`)."""
        return self.snapshots.get(proxy) or ServerSnapshot()

    async def refresh(self, state: ClusterState | None = None) -> dict[Any, ServerSnapshot]:
        """Rebuild every connected proxy's snapshot; those that changed."""
        changed: dict[Any, ServerSnapshot] = {}
        async with self._lock:
            state = state if state is not None else self._cluster()
            proxies = list(self.connected)
            if not proxies:
                return changed
            started = asyncio.get_running_loop().time()
            built = await asyncio.to_thread(self._build_all, state, proxies)
            self.stats.rebuilds += 1
            self.stats.rebuild_seconds += asyncio.get_running_loop().time() - started
            for proxy, snapshot in built.items():
                if proxy not in self.connected:
                    continue  # gone while we built
                old = self.snapshots.get(proxy)
                if old is None or old.versions != snapshot.versions:
                    self.snapshots[proxy] = changed[proxy] = snapshot
        return changed

    def _build_all(self, state: ClusterState, proxies: list[Any]) -> dict[Any, ServerSnapshot]:
        now = self._clock()
        out = {}
        for proxy in proxies:
            try:
                out[proxy] = self.builder.build(state, proxy, now)
            except Exception:  # one proxy's translation bug must not starve the others
                log.exception("cannot build the resources of Envoy %s (kept)", proxy.node_id)
        return out

    def next_renewal(self) -> dt.datetime | None:
        """When the earliest certificate served reaches half-life."""
        return self.builder.certificates.next_renewal()
