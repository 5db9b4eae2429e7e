"""One ztunnel process: state, identities, the proxy listeners, admin, metrics, readiness.

This is the asyncio shell that wires the pure parts together. Local mode: the mesh
state comes from ``config.state_file`` (re-read when it changes; a bad file is
logged and the last good state stays in force) and certificates from a local CA
kept in ``config.ca_dir``. The control-plane issue replaces both with xDS and the
CA client behind the same :class:`~ztunnel.state.proxy_state.ProxyState` and
:class:`~ztunnel.identity.store.IdentityStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec

from ztunnel.admin import Request, Response, config_dump, serve_http
from ztunnel.config import ZtunnelConfig
from ztunnel.errors import StateFileError, XdsResourceError, ZtunnelError
from ztunnel.identity.caclient import CaClient
from ztunnel.identity.certs import LocalCA
from ztunnel.identity.store import IdentityStore, Issuer, local_issuer, utc_now
from ztunnel.logbatch import batch_stream_handlers
from ztunnel.metrics import TcpMetrics, new_registry, render
from ztunnel.proxy.connector import HboneConnector
from ztunnel.proxy.pool import ConnectionPool
from ztunnel.proxy.proxy import Proxy
from ztunnel.proxy.sockets import SocketFactory, accept_loop
from ztunnel.state.local_file import load_state_file
from ztunnel.state.proxy_state import ProxyState
from ztunnel.steering import SteeringError, WorkerSteering
from ztunnel.workers import FOLLOW_INTERVAL_S, SharedLogLevel
from ztunnel.xds.client import ControlPlaneEndpoint, XdsClient, node_id

log = logging.getLogger("ztunnel")

P = ParamSpec("P")

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]

LOG_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
    "off": logging.CRITICAL + 10,
}
LEVEL_NAMES = {level: name for name, level in LOG_LEVELS.items() if name != "trace"}
"""How ``/logging`` names a level: the names it takes (``warn``, not ``warning``)."""


def load_or_create_ca(directory: Path | None, trust_domain: str, now: dt.datetime) -> LocalCA:
    """The local CA kept in ``directory`` (created on first use), or an ephemeral one."""
    if directory is None:
        return LocalCA.create(now, trust_domain=trust_domain)
    key_path, root_path = directory / "ca-key.pem", directory / "root-cert.pem"
    if key_path.exists() and root_path.exists():
        return LocalCA.from_pem(key_path.read_bytes(), root_path.read_bytes())
    directory.mkdir(parents=True, exist_ok=True)
    ca = LocalCA.create(now, trust_domain=trust_domain)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(ca.key_pem)
    root_path.write_bytes(ca.root_pem)
    return ca


class Ztunnel:
    """A running ztunnel: call :meth:`start`, then :meth:`wait`, and :meth:`stop` to drain."""

    def __init__(
        self,
        config: ZtunnelConfig,
        *,
        sockets: SocketFactory | None = None,
        issuer: Issuer | None = None,
        roots_pem: bytes | None = None,
        shared_log_level: SharedLogLevel | None = None,
        steering: WorkerSteering | None = None,
    ) -> None:
        self.config = config
        self.shared_log_level = shared_log_level
        """With several workers: where ``/logging`` changes reach the other workers."""
        self.steering = steering
        """With several workers steered by load: this worker's side of the programs."""
        self._log_generation = 0
        # Listeners take their transparency explicitly (see _listen); the factory's own
        # flag decides only whether upstream connections carry the caller's address.
        self.sockets = sockets or SocketFactory(
            transparent=config.transparent and config.preserve_source_ip,
            connect_timeout=config.connect_timeout,
        )
        self.ca_client: CaClient | None = None
        self.xds: XdsClient | None = None
        if issuer is None or roots_pem is None:
            ca_address = config.ca_address or config.xds_address
            if ca_address:
                endpoint = self._endpoint(ca_address)
                self.ca_client = CaClient(endpoint, config.certificate_ttl)
                issuer, roots_pem = self.ca_client.issue, endpoint.root_cert.read_bytes()
            else:
                ca = load_or_create_ca(config.ca_dir, config.trust_domain, utc_now())
                issuer, roots_pem = local_issuer(ca, ttl=config.certificate_ttl), ca.root_pem
        self.identities = IdentityStore(roots_pem, issuer)
        self.registry = new_registry()
        self.metrics = TcpMetrics(self.registry)
        self.state = ProxyState()
        self.state_loaded = False
        self._state_mtime: float | None = None
        self.connector = HboneConnector(
            self.identities,
            self.sockets,
            ConnectionPool(config.pool_max_streams, config.pool_idle_timeout),
            config.hbone,
            response_timeout=config.connect_timeout,
        )
        self.proxy = Proxy(
            config,
            state=lambda: self.state,
            identities=self.identities,
            metrics=self.metrics,
            sockets=self.sockets,
            connector=self.connector,
            rng=random.Random(),  # noqa: S311 - balancing and trace ids, not secrets
        )
        self._servers: list[asyncio.Server] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._admin_servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        logging.getLogger("ztunnel").setLevel(LOG_LEVELS[config.log_level])

    def _endpoint(self, address: str) -> ControlPlaneEndpoint:
        """How to reach the control plane at ``address`` (TLS root, token, server name)."""
        cfg = self.config
        assert cfg.xds_root_cert is not None  # checked by ZtunnelConfig
        return ControlPlaneEndpoint(
            address=address,
            root_cert=cfg.xds_root_cert,
            token_file=cfg.auth_token_file,
            server_name=cfg.xds_server_name,
            cluster_id=cfg.cluster_id,
        )

    # --- state --------------------------------------------------------------

    def reload_state(self) -> bool:
        """Re-read the state file if it changed; True when a new state took effect."""
        path = self.config.state_file
        if path is None:
            self.state_loaded = True
            return False
        try:
            mtime = path.stat().st_mtime
        except OSError as err:
            log.error("state file %s: %s", path, err)
            return False
        if mtime == self._state_mtime:
            return False
        self._state_mtime = mtime
        try:
            loaded = load_state_file(path)
        except StateFileError as err:
            log.error(
                "%s (keeping the last good state)%s", err, f"; hint: {err.hint}" if err.hint else ""
            )
            return False
        self.apply_state(loaded.to_proxy_state())
        return True

    def apply_state(self, state: ProxyState) -> None:
        """Put a new snapshot in force and follow its local identities."""
        self.state = state
        self.state_loaded = True
        self.identities.track(
            w.identity
            for w in state.workloads.values()
            if not self.config.node_name or w.node == self.config.node_name
        )
        log.info(
            "state: %d workloads, %d services, %d policies",
            len(state.workloads),
            len(state.services),
            len(state.policies),
        )

    def apply_cluster(self, cluster: Any) -> bool:
        """Local mode from cluster YAML: translate as istiod would, then as xDS would arrive."""
        from controlplane.workloadapi import translate
        from ztunnel.xds.translate import state_from_snapshot

        for issue in getattr(cluster, "errors", ()):
            log.warning("cluster source: %s", issue)
        try:
            snapshot = translate(cluster)
            state = state_from_snapshot(snapshot.addresses, snapshot.authorizations)
        except XdsResourceError as err:
            log.error("%s (keeping the last good state)", err)
            return False
        self.apply_state(state)
        return True

    async def _watch_cluster(self, folder: Path) -> None:
        from controlplane.sources import FolderSource

        async for cluster in FolderSource(folder).watch(interval=0.5):
            self.apply_cluster(cluster)

    async def _watch_state(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.reload_state()

    async def _follow_log_level(self, shared: SharedLogLevel) -> None:
        """Apply the log level another worker was given through ``/logging``."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            self._apply_shared_level(shared)

    def _apply_shared_level(self, shared: SharedLogLevel) -> None:
        newer = shared.changed(self._log_generation)
        if newer is not None:
            self._log_generation, level = newer
            logging.getLogger("ztunnel").setLevel(level)

    async def _expire_pool(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.config.pool_idle_timeout))
            self.connector.expire_idle()

    # --- readiness and admin ----------------------------------------------

    def ready(self) -> bool:
        """Ready when the state and every local identity's certificate are loaded."""
        return self.state_loaded and self.identities.ready() and not self.stopping.is_set()

    async def _readiness(self, request: Request) -> Response:
        if request.path != "/healthz/ready":
            return Response(404, b"not found\n")
        return Response(200, b"ready\n") if self.ready() else Response(503, b"not ready\n")

    async def _metrics(self, request: Request) -> Response:
        if request.path not in ("/metrics", "/stats/prometheus"):
            return Response(404, b"not found\n")
        body, content_type = render(self.registry, request.headers.get("accept"))
        return Response(200, body, content_type)

    async def _admin(self, request: Request) -> Response:
        if request.path == "/config_dump":
            return Response.json(
                config_dump(self.state, self.identities.dump(), self.config.describe())
            )
        if request.path == "/logging":
            return self._logging(request)
        if request.path == "/quitquitquit":
            if request.method != "POST":
                return Response(405, b"use POST\n")
            self.stopping.set()
            return Response(200, b"draining\n")
        return Response(404, b"not found\n")

    def _logging(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, b"use POST\n")
        logger = logging.getLogger("ztunnel")
        shared = self.shared_log_level
        if shared is not None:
            self._apply_shared_level(shared)  # a change made on another worker first
        new_level: int | None = None
        if "reset" in request.query:
            new_level = LOG_LEVELS[self.config.log_level]
        elif "level" in request.query:
            level = request.query["level"][0].rsplit(":", 1)[-1]
            if level not in LOG_LEVELS:
                return Response(400, f"unknown level {level!r}\n".encode())
            new_level = LOG_LEVELS[level]
        if new_level is not None:
            logger.setLevel(new_level)
            if shared is not None:
                # The other workers follow within FOLLOW_INTERVAL_S.
                self._log_generation = shared.publish(new_level)
        effective = logger.getEffectiveLevel()
        name = LEVEL_NAMES.get(effective) or logging.getLevelName(effective).lower()
        return Response(200, f"current log level is {name}\n".encode())

    # --- lifecycle ----------------------------------------------------------

    def _tracked(
        self, handler: Callable[P, Coroutine[Any, Any, None]], listener: str
    ) -> Callable[P, Coroutine[Any, Any, None]]:
        """Wrap a connection handler of ``listener`` so that draining can wait for it, and
        the worker steering counts the connection finished when it returns."""
        steering = self.steering

        async def run(*args: P.args, **kwargs: P.kwargs) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await handler(*args, **kwargs)
            finally:
                self._connections.discard(task)
                if steering is not None:
                    steering.finished(listener)

        return run

    def _steer(self, listener: str, sock: socket.socket) -> None:
        """Join ``sock`` to the worker steering; the kernel's hash if that fails."""
        if self.steering is None:
            return
        try:
            self.steering.join(listener, sock)
        except SteeringError as err:
            log.warning("%s; the kernel's hash picks the worker", err)

    async def _listen(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        transparent: bool,
        admin: bool = False,
        steered_as: str | None = None,
    ) -> None:
        sock = self.sockets.listener(host, port, transparent=transparent)
        if steered_as is not None:
            self._steer(steered_as, sock)
        server = await asyncio.start_server(handler, sock=sock)
        (self._admin_servers if admin else self._servers).append(server)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        """Load state, get certificates, open every listener."""
        if self.config.cluster_folder is not None:
            from controlplane.sources import FolderSource

            if not self.apply_cluster(FolderSource(self.config.cluster_folder).load()):
                raise ZtunnelError(
                    f"cannot translate the cluster in {self.config.cluster_folder}",
                    hint="see the error above",
                )
        elif self.config.state_file is not None:
            self.reload_state()
            if not self.state_loaded:
                raise ZtunnelError(
                    f"cannot load the state file {self.config.state_file}",
                    hint="see the error above; ztunnel needs one good state to start",
                )
        elif self.config.xds_address:
            # Readiness waits for the first full state: apply_state sets state_loaded.
            self.xds = XdsClient(
                self._endpoint(self.config.xds_address),
                node_id(pod=f"ztunnel-{self.config.node_name or 'node'}"),
                self.apply_state,
                node_metadata={
                    "NODE_NAME": self.config.node_name,
                    "CLUSTER_ID": self.config.cluster_id,
                },
            )
            self._spawn(self.xds.run())
        else:
            self.state_loaded = True
        await self.identities.refresh_due()
        cfg = self.config
        proxy_host, transparent = cfg.proxy_address, cfg.transparent
        # Outbound tunnels relay the raw socket from the loop's callbacks, and HBONE picks
        # its TLS context per connection (by the pod address reached): both take raw
        # accepted sockets rather than asyncio's ready-made streams.
        outbound = self.sockets.listener(proxy_host, cfg.outbound_port, transparent=transparent)
        self._steer("outbound", outbound)
        self._acceptors.append(
            asyncio.create_task(
                accept_loop(outbound, self._tracked(self.proxy.handle_outbound, "outbound"))
            )
        )
        await self._listen(
            proxy_host,
            cfg.inbound_plaintext_port,
            self._tracked(self.proxy.handle_plaintext, "plaintext"),
            transparent=transparent,
            steered_as="plaintext",
        )
        hbone = self.sockets.listener(proxy_host, cfg.hbone_port, transparent=transparent)
        self._steer("hbone", hbone)
        self._acceptors.append(
            asyncio.create_task(accept_loop(hbone, self._tracked(self.proxy.handle_hbone, "hbone")))
        )
        await self._listen(
            proxy_host, cfg.metrics_port, serve_http(self._metrics), transparent=False, admin=True
        )
        await self._listen(
            proxy_host,
            cfg.readiness_port,
            serve_http(self._readiness),
            transparent=False,
            admin=True,
        )
        await self._listen(
            cfg.admin_address,
            cfg.admin_port,
            serve_http(self._admin),
            transparent=False,
            admin=True,
        )
        self._spawn(self.identities.run())
        self._spawn(self._expire_pool())
        if self.shared_log_level is not None:
            self._spawn(self._follow_log_level(self.shared_log_level))
        if cfg.state_file is not None:
            self._spawn(self._watch_state())
        if cfg.cluster_folder is not None:
            self._spawn(self._watch_cluster(cfg.cluster_folder))
        log.info(
            "ztunnel listening: outbound %d, plaintext %d, hbone %d",
            cfg.outbound_port,
            cfg.inbound_plaintext_port,
            cfg.hbone_port,
        )

    async def wait(self) -> None:
        """Until ``/quitquitquit`` (or :meth:`stop`) asks to stop."""
        await self.stopping.wait()

    async def stop(self) -> None:
        """Drain: stop accepting, let connections finish up to ``drain_timeout``, then close."""
        self.stopping.set()
        for server in self._servers:
            server.close()
        for acceptor in self._acceptors:
            acceptor.cancel()
            with contextlib.suppress(BaseException):
                await acceptor
        # Connections with tunnels in flight get until the deadline; HBONE connections
        # that merely idle in a pool are closed at once (their peers will redial).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while self._connections and loop.time() < deadline:
            self.proxy.close_idle()
            await asyncio.wait(set(self._connections), timeout=0.1)
        for task in list(self._connections):
            task.cancel()
        await self.connector.close()
        if self.ca_client is not None:
            await self.ca_client.close()
        for server in self._admin_servers:
            server.close()
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def run(
    config: ZtunnelConfig,
    *,
    shared_log_level: SharedLogLevel | None = None,
    steering: WorkerSteering | None = None,
) -> None:
    """Run a ztunnel until ``/quitquitquit`` or cancellation, then drain."""
    ztunnel = Ztunnel(config, shared_log_level=shared_log_level, steering=steering)
    loop = asyncio.get_running_loop()
    # SIGTERM (Kubernetes, the lab, the worker supervisor) drains like /quitquitquit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ztunnel.stopping.set)
    unbatch = batch_stream_handlers(loop)  # an access line per connection: one write per batch
    try:
        await ztunnel.start()
        try:
            await ztunnel.wait()
        finally:
            await ztunnel.stop()
    finally:
        unbatch()
