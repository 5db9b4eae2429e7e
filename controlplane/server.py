"""One control-plane process: cluster source -> workload API -> delta xDS, plus the CA.

``ambient controlplane run`` builds a :class:`ControlPlaneConfig` and calls :func:`run`.
:class:`ControlPlane` wires the parts: the source's ``watch()`` feeds a debouncer; each
debounced change is translated (:func:`controlplane.workloadapi.translate`) into a
:class:`~controlplane.xds.core.ServerSnapshot` and published to every stream. One gRPC
server (TLS, a serving certificate signed by the CA) carries delta ADS and
``CreateCertificate`` on 15012; a localhost HTTP endpoint (15014) answers
``/debug/status`` (connected proxies, their acknowledged versions, last NACKs, CA
counters) and ``/metrics`` (the same as Prometheus metrics, istiod's names).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.messages import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from api.xds import (
    Resource,
    WireFormatError,
    decode_certificate_request,
    encode_certificate_response,
)
from controlplane.ca.auth import (
    Authenticator,
    ChainedAuthenticator,
    TokenReviewAuthenticator,
    bearer_token,
)
from controlplane.ca.authority import CaFiles, CaSettings, CertificateAuthority, load_or_create
from controlplane.ca.credentials import NodeTokens
from controlplane.ca.service import CertificateService
from controlplane.errors import (
    AuthenticationError,
    ControlPlaneError,
    CsrRejected,
    ImpersonationDenied,
)
from controlplane.model import ClusterState
from controlplane.workloadapi import MeshConfig, translate
from controlplane.workloadapi.incremental import IncrementalTranslator
from controlplane.xds.core import Debouncer, ServerSnapshot, version_of
from controlplane.xds.envoy import EnvoyServing, ResourcesFn
from controlplane.xds.metrics import metrics_registry, render
from controlplane.xds.server import XdsHub
from ztunnel.admin import Request, Response, serve_http

log = logging.getLogger("controlplane")

CA_SERVICE = "istio.v1.auth.IstioCertificateService"
CA_RPC = "CreateCertificate"
DEFAULT_SERVER_NAMES = ("istiod.istio-system.svc", "istiod", "localhost", "127.0.0.1")


def split_address(address: str, what: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); :class:`ControlPlaneError` when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ControlPlaneError(f"{what} {address!r} is not host:port", hint="e.g. 127.0.0.1:15012")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Everything one control-plane process needs, documented field by field."""

    state_dir: Path
    """CA key and root (``ca-key.pem`` 0600, ``ca-cert.pem``, ``root-cert.pem``) and the
    node-credential secret (``node-token.key``)."""
    config_dir: Path | None = None
    """Standalone: the folder of Kubernetes/Istio YAML to serve."""
    kubernetes: bool = False
    """Read the cluster from the Kubernetes API instead (and accept TokenReview callers)."""
    kubeconfig: str | None = None
    """With ``kubernetes``: a kubeconfig file (else in-cluster configuration)."""
    kube_context: str | None = None
    """With ``kubernetes``: the kubeconfig context."""
    listen: str = "127.0.0.1:15012"
    """gRPC over TLS: delta ADS and the CA (port 0: any free port)."""
    admin_listen: str = "127.0.0.1:15014"
    """Localhost HTTP: ``/debug/status`` (port 0: any free port)."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Cluster id, trust domain, domain suffix, root namespace."""
    ca_files: CaFiles | None = None
    """A user's CA (root or intermediate) instead of the generated one."""
    certificate_ttl: dt.timedelta = dt.timedelta(hours=24)
    """Workload certificate lifetime when a request asks for none."""
    max_certificate_ttl: dt.timedelta = dt.timedelta(days=7)
    """The cap on a requested lifetime."""
    trusted_node_accounts: tuple[str, ...] = ("istio-system/ztunnel",)
    """With ``kubernetes``: service accounts (``ns/sa``) allowed to ask for their node's pods."""
    server_names: tuple[str, ...] = DEFAULT_SERVER_NAMES
    """DNS names and IPs in the serving certificate (the listen host is added)."""
    authenticate_xds: bool = True
    """Whether xDS streams must carry a valid credential, like CA calls."""
    watch_interval: float = 0.05
    """Seconds between polls of the configuration folder (a poll of an unchanged big
    folder is one stat per subfolder; see ``FolderSource.watch``)."""
    debounce_quiet: float = 0.02
    """A push waits this long for more changes..."""
    debounce_max: float = 0.08
    """...but never longer than this after the first change."""

    def __post_init__(self) -> None:
        if self.kubernetes == (self.config_dir is not None):
            raise ControlPlaneError(
                "give the control plane one source: --config-dir DIR or --kubernetes",
                hint="ambient controlplane run --config-dir config/ --state-dir state/",
            )
        split_address(self.listen, "--listen")
        split_address(self.admin_listen, "--admin-listen")
        if (
            self.certificate_ttl <= dt.timedelta(0)
            or self.max_certificate_ttl < self.certificate_ttl
        ):
            raise ControlPlaneError(
                "certificate lifetimes must be positive and the cap at least the default"
            )


def snapshot_of(state: ClusterState, mesh: MeshConfig) -> ServerSnapshot:
    """The workload-API resources of a cluster state, serialized and versioned."""
    translated = translate(state, mesh)
    return ServerSnapshot.build(
        {ADDRESS_TYPE_URL: translated.addresses, AUTHORIZATION_TYPE_URL: translated.authorizations}
    )


def type_version(resources: Mapping[str, Resource]) -> str:
    """``system_version_info`` of one type, as ``ServerSnapshot.build`` computes it.

    One digest over the joined lines instead of one ``update`` per resource (the same
    bytes, so the same digest; tested equal), a few ms less per push at 5,000 pods.
    """
    lines = "".join(f"{name}\0{resources[name].version}\n" for name in sorted(resources))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


class SnapshotBuilder:
    """Successive cluster states to :class:`ServerSnapshot` s, equal to :func:`snapshot_of`.

    The translation is incremental (:class:`IncrementalTranslator`: only the workloads a
    change touches are translated again) and a resource whose message object is the
    one of the previous snapshot keeps its bytes and version, so a one-pod change at
    5,000 pods encodes one workload instead of 5,000. Not thread-safe: one caller at a
    time (the control plane applies changes one after another).
    """

    def __init__(self, mesh: MeshConfig) -> None:
        self.translator = IncrementalTranslator(mesh)
        self._messages: dict[str, Mapping[str, Any]] = {}
        self._resources: dict[str, Mapping[str, Resource]] = {}

    def build(self, state: ClusterState) -> ServerSnapshot:
        """The snapshot of ``state``."""
        translated = self.translator.update(state)
        by_type = {
            ADDRESS_TYPE_URL: translated.addresses,
            AUTHORIZATION_TYPE_URL: translated.authorizations,
        }
        resources: dict[str, Mapping[str, Resource]] = {}
        for type_url, messages in by_type.items():
            old_messages = self._messages.get(type_url, {})
            old_resources = self._resources.get(type_url, {})
            table: dict[str, Resource] = {}
            for name, message in messages.items():
                if old_messages.get(name) is message:
                    table[name] = old_resources[name]
                else:
                    data: bytes = message.SerializeToString(deterministic=True)
                    table[name] = Resource(name, version_of(data), data)
            resources[type_url] = table
        self._messages, self._resources = by_type, resources
        return ServerSnapshot(resources, {t: type_version(r) for t, r in resources.items()})


class ControlPlane:
    """A running control plane: :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        *,
        kube_api_client: Any = None,
        envoy_resources: ResourcesFn | None = None,
    ) -> None:
        self.config = config
        self._envoy_resources = envoy_resources
        """Tests: a stand-in for ``proxy_resources`` (None: the real translation)."""
        self.envoy: EnvoyServing | None = None
        self.cluster = ClusterState()
        self.snapshot_at: float | None = None
        self._kube_api_client = kube_api_client
        self._server: Any = None
        self._admin: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._envoys_stale = asyncio.Event()
        """Set when the cluster changed after the Envoys' snapshots were last built."""
        self.xds_port = 0
        self.admin_port = 0
        self.ca: CertificateAuthority | None = None
        self.certificates: CertificateService | None = None
        self.hub = XdsHub()
        self.snapshots = SnapshotBuilder(config.mesh)
        self.started = time.monotonic()
        self._registry = metrics_registry(self.status)

    # --- the parts ----------------------------------------------------------

    def _source(self) -> Any:
        if self.config.config_dir is not None:
            from controlplane.sources import FolderSource

            return FolderSource(self.config.config_dir)
        from controlplane.sources import KubernetesSource

        return KubernetesSource(
            self._kube_api_client,
            kubeconfig=self.config.kubeconfig,
            context=self.config.kube_context,
        )

    def _authenticator(self, tokens: NodeTokens, source: Any) -> Authenticator:
        fallback = None
        if self.config.kubernetes:
            # The source's configured client (in-cluster or kubeconfig) also reviews tokens.
            client = self._kube_api_client or source._client()
            fallback = TokenReviewAuthenticator(client, self.config.trusted_node_accounts)
        return ChainedAuthenticator(tokens, fallback)

    def _authenticate_stream(self, metadata: Mapping[str, str]) -> str:
        assert self.certificates is not None
        caller = self.certificates.authenticator.authenticate(
            bearer_token(metadata), self.cluster, dt.datetime.now(dt.UTC)
        )
        return caller.node

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Load the CA and the cluster, then serve gRPC and the admin endpoint."""
        import grpc

        cfg = self.config
        now = dt.datetime.now(dt.UTC)
        settings = CaSettings(cfg.mesh.trust_domain, cfg.certificate_ttl, cfg.max_certificate_ttl)
        self.ca = load_or_create(cfg.state_dir, now, settings=settings, user=cfg.ca_files)
        tokens = NodeTokens.load_or_create(cfg.state_dir, cfg.mesh.trust_domain)
        source = self._source()
        self.certificates = CertificateService(
            self.ca,
            self._authenticator(tokens, source),
            lambda: self.cluster,
            lambda: dt.datetime.now(dt.UTC),
        )
        self.envoy = EnvoyServing(
            cfg.mesh, self.ca, lambda: self.cluster, resources=self._envoy_resources
        )
        self.hub = XdsHub(self._authenticate_stream if cfg.authenticate_xds else None, self.envoy)
        await self._apply(await asyncio.to_thread(source.load))

        host, port = split_address(cfg.listen, "--listen")
        key_pem, chain = self.ca.serving_certificate((*cfg.server_names, host), now)
        credentials = grpc.ssl_server_credentials([(key_pem, "".join(chain).encode())])
        self._server = grpc.aio.server(
            handlers=[self.hub.handler(), self._ca_handler()],
            options=[
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                # Clients ping every 30 s to detect a vanished control plane; accept it.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        self.xds_port = self._server.add_secure_port(f"{host}:{port}", credentials)
        if self.xds_port == 0:
            raise ControlPlaneError(
                f"cannot listen on {cfg.listen}", hint="is another control plane running there?"
            )
        await self._server.start()
        admin_host, admin_port = split_address(cfg.admin_listen, "--admin-listen")
        self._admin = await asyncio.start_server(serve_http(self._debug), admin_host, admin_port)
        self.admin_port = self._admin.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self._follow(source)))
        self._tasks.append(asyncio.create_task(self._renew_certificates()))
        self._tasks.append(asyncio.create_task(self._follow_envoys()))
        log.info(
            "control plane serving xDS and CA on %s:%d, status on %s:%d; CA root in %s",
            host,
            self.xds_port,
            admin_host,
            self.admin_port,
            cfg.state_dir,
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving: close streams (clients keep their state), end the watch."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.stop(grace)
        if self._admin is not None:
            self._admin.close()

    # --- following the cluster ----------------------------------------------

    async def _apply(self, state: ClusterState) -> None:
        """Translate ``state`` (in a thread: 5,000 pods take a while) and publish it."""
        for issue in state.errors:
            log.warning("cluster source: %s", issue)
        started = time.perf_counter()
        snapshot = await asyncio.to_thread(self.snapshots.build, state)
        self.cluster = state
        self._envoys_stale.set()
        if self.snapshot_at is not None and snapshot.versions == self.hub.snapshot.versions:
            return  # e.g. a change the workload API does not show (a label nobody selects)
        self.hub.publish(snapshot)
        self.snapshot_at = time.time()
        log.info(
            "snapshot: %d addresses, %d authorizations in %.1f ms, pushed to %d proxies",
            len(snapshot.of(ADDRESS_TYPE_URL)),
            len(snapshot.of(AUTHORIZATION_TYPE_URL)),
            (time.perf_counter() - started) * 1000,
            len(self.hub.connections),
        )

    async def _refresh_envoys(self, state: ClusterState | None = None) -> None:
        """Rebuild the connected Envoys' resources; push to those whose resources changed."""
        if self.envoy is None or not self.envoy.connected:
            return
        started = time.perf_counter()
        changed = await self.envoy.refresh(state)
        self.hub.publish_envoy(changed)
        if changed:
            log.info(
                "Envoy resources rebuilt for %d proxies in %.1f ms, pushed to %d",
                len(self.envoy.connected),
                (time.perf_counter() - started) * 1000,
                len(changed),
            )

    async def _follow_envoys(self) -> None:
        """Rebuild the Envoys' snapshots after each change, apart from the ztunnels' pushes
        (a waypoint of 1,000 services must not delay the workload API); changes that come
        during a rebuild are coalesced into the next one."""
        while True:
            await self._envoys_stale.wait()
            self._envoys_stale.clear()
            try:
                await self._refresh_envoys(self.cluster)
            except Exception:  # a translation bug must not stop the control plane
                log.exception("cannot build the Envoys' resources (last snapshots kept)")

    async def _renew_certificates(self) -> None:
        """Serve each Envoy a new certificate when its current one reaches half-life."""
        while True:
            due = self.envoy.next_renewal() if self.envoy is not None else None
            wait = 1.0  # a proxy that connects meanwhile may bring an earlier half-life
            if due is not None:
                wait = min(wait, max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
            await asyncio.sleep(wait + 0.01)
            if due is not None and dt.datetime.now(dt.UTC) >= due:
                try:
                    await self._refresh_envoys()
                except Exception:  # keep renewing; the old certificates stay served
                    log.exception("cannot renew Envoy certificates (retrying)")

    async def _follow(self, source: Any) -> None:
        """Debounce the source's changes into snapshots; survive a failing source or bug."""
        debouncer = Debouncer(self.config.debounce_quiet, self.config.debounce_max)
        latest: list[ClusterState] = []
        changed = asyncio.Event()

        async def watch() -> None:
            while True:
                try:
                    states: AsyncIterator[ClusterState] = source.watch(
                        interval=self.config.watch_interval
                    )
                    async for state in states:
                        latest[:] = [state]
                        debouncer.changed(time.monotonic())
                        changed.set()
                except asyncio.CancelledError:
                    raise
                except Exception:  # the source failed: keep serving, watch again
                    log.exception("cluster source failed (last snapshot kept); retrying in 1 s")
                await asyncio.sleep(1.0)

        watcher = asyncio.create_task(watch())
        try:
            while True:
                deadline = debouncer.deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                if debouncer.fire(time.monotonic()) and latest:
                    try:
                        await self._apply(latest[0])
                    except Exception:  # a translation bug must not stop the control plane
                        log.exception("cannot translate the cluster (last snapshot kept)")
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher

    # --- CA over gRPC --------------------------------------------------------

    def _ca_handler(self) -> Any:
        import grpc

        method = grpc.unary_unary_rpc_method_handler(self._create_certificate)
        return grpc.method_handlers_generic_handler(CA_SERVICE, {CA_RPC: method})

    async def _create_certificate(self, data: bytes, context: Any) -> bytes:
        import grpc

        assert self.certificates is not None
        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        try:
            request = decode_certificate_request(data)
            chain = await asyncio.to_thread(
                self.certificates.create_certificate, request, metadata, str(context.peer())
            )
        except (AuthenticationError, ImpersonationDenied) as err:
            # Istio answers every refusal of the caller's right with Unauthenticated.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
            raise  # abort raises; this line is for the type checker
        except (CsrRejected, WireFormatError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise
        return encode_certificate_response(chain)

    # --- status -------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Connected proxies, acknowledged versions, last NACKs, CA counters."""
        snapshot = self.hub.snapshot
        return {
            "xdsAddress": f"{split_address(self.config.listen, 'listen')[0]}:{self.xds_port}",
            "uptimeSeconds": round(time.monotonic() - self.started, 1),
            "snapshot": {
                type_url: {"version": snapshot.versions.get(type_url, ""), "resources": len(r)}
                for type_url, r in sorted(snapshot.resources.items())
            },
            "sourceErrors": len(self.cluster.errors),
            "proxies": self.hub.status(),
            "envoyProxies": self.hub.envoy_status(),
            "envoy": self._envoy_status(),
            "recentlyDisconnected": self.hub.disconnected,
            "pushes": self.hub.pushes,
            "ca": self.certificates.stats.as_dict() if self.certificates else {},
        }

    def _envoy_status(self) -> dict[str, object]:
        stats = self.hub.envoy_stats
        serving = self.envoy
        return {
            "connected": len(self.hub.envoy_status()),
            "pushes": dict(sorted(stats.pushes.items())),
            "nacks": dict(sorted(stats.nacks.items())),
            "pushToAck": stats.push_to_ack.as_dict(),
            "refused": serving.stats.refused if serving else 0,
            "lastRefusal": serving.stats.last_refusal if serving else "",
            "certificatesIssued": serving.builder.certificates.issued if serving else 0,
        }

    async def _debug(self, request: Request) -> Response:
        if request.path in ("/debug/status", "/debug/connections"):
            return Response.json(self.status())
        if request.path in ("/metrics", "/stats/prometheus"):
            body, content_type = render(self._registry, request.headers.get("accept"))
            return Response(200, body, content_type)
        if request.path == "/healthz/ready":
            return Response(200, b"ready\n")
        return Response(404, b"not found\n")


async def run(config: ControlPlaneConfig) -> None:
    """Run until cancelled (Ctrl-C), then stop."""
    plane = ControlPlane(config)
    await plane.start()
    # The cluster and its snapshot (5,000 pods: ~10^6 objects) live as long as the
    # process; keeping them out of the cyclic collector spares every later change a
    # full-heap collection pause.
    gc.freeze()
    try:
        await asyncio.Event().wait()
    finally:
        await plane.stop()
