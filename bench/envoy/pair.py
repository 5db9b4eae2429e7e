"""The sidecar-style reference path: an Envoy in each pod, an mTLS tunnel between them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from bench.case import RunSettings
from bench.datapath import (
    BULK_PORT,
    HTTP_PORT,
    Endpoint,
    LivePath,
    PathFactory,
    PodPair,
    check_http,
)
from bench.envoy import bootstrap, pki
from bench.envoy.admin import handshake_summary
from bench.envoy.proxy import DEFAULT_CONCURRENCY, start_envoy
from bench.procs import NetnsProcess

HTTP_TUNNEL = bootstrap.Tunnel("http", 18080, 15443, HTTP_PORT)
BULK_TUNNEL = bootstrap.Tunnel("bulk", 15201, 15444, BULK_PORT)


@dataclass(frozen=True)
class EnvoyPairSettings:
    """How the sidecar-style Envoy pair is set up."""

    concurrency: int = DEFAULT_CONCURRENCY
    """Worker threads per Envoy (Istio's sidecar default is 2)."""
    http_tunnel: bootstrap.Tunnel = HTTP_TUNNEL
    """Client dials 127.0.0.1:18080; the server sidecar's mTLS port 15443 -> origin."""
    bulk_tunnel: bootstrap.Tunnel = BULK_TUNNEL
    """Client dials 127.0.0.1:15201; the server sidecar's mTLS port 15444 -> iperf3."""


def envoy_pair(options: EnvoyPairSettings | None = None) -> PathFactory:
    """The sidecar-style reference: an Envoy in each pod, mTLS (TLS 1.3) between them.

    The client pod's Envoy listens on 127.0.0.1 (the app dials it, as with a sidecar
    without iptables), presents ``spiffe://cluster.local/ns/<ns>/sa/<client sa>`` and
    accepts only the server's identity; the server pod's Envoy requires a client
    certificate with the client's identity and forwards to the app on 127.0.0.1.
    """
    opts = options or EnvoyPairSettings()

    @contextlib.contextmanager
    def build(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
        work = settings.work_dir / "envoy-pair"
        client, server = pair.client, pair.server
        mesh = pki.make_mesh_pki(
            work / "pki",
            [
                (client.namespace, client.service_account),
                (server.namespace, server.service_account),
            ],
        )
        client_id = pki.spiffe_id(client.namespace, client.service_account)
        server_id = pki.spiffe_id(server.namespace, server.service_account)
        client_cert, server_cert = mesh.workloads[client_id], mesh.workloads[server_id]
        tunnels = [opts.http_tunnel, opts.bulk_tunnel]
        server_config = bootstrap.server_sidecar(
            listen_ip=server.ip,
            tunnels=tunnels,
            tls=bootstrap.TlsFiles(
                server_cert.cert_path, server_cert.key_path, mesh.root_path, client_id
            ),
        )
        client_config = bootstrap.client_sidecar(
            server_ip=server.ip,
            tunnels=tunnels,
            tls=bootstrap.TlsFiles(
                client_cert.cert_path, client_cert.key_path, mesh.root_path, server_id
            ),
            sni=f"{server.service_account}.{server.namespace}",
        )
        with contextlib.ExitStack() as stack:
            proxies: list[NetnsProcess] = []
            for name, pod, config in (
                ("envoy-server-sidecar", server, server_config),
                ("envoy-client-sidecar", client, client_config),
            ):
                proxy = start_envoy(name, pod.netns, config, work, concurrency=opts.concurrency)
                stack.callback(proxy.stop)
                proxies.append(proxy)
            live = LivePath(
                client_netns=client.netns,
                http=Endpoint("127.0.0.1", opts.http_tunnel.client_port),
                bulk=Endpoint("127.0.0.1", opts.bulk_tunnel.client_port),
                proxies=tuple(proxies),
                summary=lambda: handshake_summary(client.netns, bootstrap.ADMIN_PORT),
            )
            # the whole chain, mTLS verified both ways, must work before anything is timed
            check_http(live.client_netns, live.http)
            yield live

    return build
