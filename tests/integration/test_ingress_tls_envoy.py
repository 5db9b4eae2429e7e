"""HTTPS ingress with a real Envoy: a gateway terminates TLS with a Secret's certificate.

No root, no lab: the control plane serves a temporary config folder on 127.0.0.1 (the
gateway pod ``istio-ingressgateway`` in ``istio-system`` on node1, an Istio ``Gateway``
with an HTTPS server ``tls.mode: SIMPLE``, ``credentialName: shop-cert``, a
VirtualService answering directly, the Secret ``istio-system/shop-cert`` and a decoy
Secret of the same name in another namespace). Envoy 1.40 runs the gateway's own
bootstrap (``waypoint.bootstrap``, ``PROXY_KIND=gateway``), its listener moved to a free
port on 127.0.0.1. Python's ``ssl`` client, verifying against the test CA with SNI
``shop.example.com``, gets the Secret's certificate (never the decoy's) and the
VirtualService's answer; a rotated Secret is served on new connections without an Envoy
restart; a broken update is reported and the last good certificate keeps serving.
With ``tls.mode: MUTUAL`` the gateway asks for a client certificate and verifies it
against the Secret's ``ca.crt``: a client without one, or with one from another CA, is
refused; one signed by that CA is answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.ca.credentials import NodeTokens
from controlplane.server import ControlPlane, ControlPlaneConfig
from tests.integration.envoy_harness import Envoy, eventually, free_ports, on_loopback
from tests.tls_fixtures import SHOP_HOST, make_ca, make_leaf, shop_gateway_yaml, tls_secret_yaml

pytestmark = pytest.mark.timeout(60)

HOST = SHOP_HOST
CONFIG = """\
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: tutorial, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  uid: uid-gw
  labels: {istio: ingressgateway, istio.io/dataplane-mode: none}
spec: {nodeName: node1, serviceAccountName: istio-ingressgateway, containers: [{name: envoy}]}
status: {phase: Running, podIP: 10.1.0.50, conditions: [{type: Ready, status: "True"}]}
---
""" + shop_gateway_yaml("tutorial")


def bootstrap(xds_port: int, root: Path, token: str, admin: int) -> dict[str, Any]:
    """The ingress gateway's own bootstrap (``waypoint.bootstrap``), delta ADS."""
    from waypoint.bootstrap import WaypointConfig, render_bootstrap

    config = WaypointConfig(
        namespace="istio-system",
        service_account="istio-ingressgateway",
        gateway_name="istio-ingressgateway",
        kind="gateway",
        instance_ips=("10.1.0.50",),
        xds_address=f"127.0.0.1:{xds_port}",
        root_cert=root,
        admin_port=admin,
    )
    return render_bootstrap(config, token)


def https_get(port: int, ca_pem: bytes, client: Path | None = None) -> tuple[bytes, bytes]:
    """(the server's leaf certificate, DER; the response) of ``GET /`` with SNI ``HOST``,
    verified against ``ca_pem``; ``client``: a PEM file with a client certificate and key."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    if client is not None:
        context.load_cert_chain(client)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    assert der is not None
    return der, response


def der_of(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def write(path: Path, text: str) -> None:
    """Replace a config file atomically (the folder source never sees half of it)."""
    path.with_suffix(".tmp").write_text(text)
    os.replace(path.with_suffix(".tmp"), path)


async def serve(tmp_path: Path, config: Path, state: Path) -> tuple[ControlPlane, Envoy, int]:
    """The control plane on the folder ``config`` and the gateway's Envoy; the port its
    443 listener is moved to on 127.0.0.1 (``0.0.0.0_443`` sorts first)."""
    token = NodeTokens.load_or_create(state).issue("node1", dt.datetime.now(dt.UTC))
    port = free_ports(4)
    plane = ControlPlane(
        ControlPlaneConfig(
            state_dir=state,
            config_dir=config,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            watch_interval=0.05,
        ),
        envoy_resources=on_loopback(port),
    )
    await plane.start()
    try:
        envoy = Envoy(tmp_path, bootstrap(plane.xds_port, state / "root-cert.pem", token, port + 3))
    except BaseException:
        await plane.stop(0.2)
        raise
    return plane, envoy, port


async def scenario(tmp_path: Path) -> None:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    ca = make_ca()
    ca_pem = ca[1].public_bytes(serialization.Encoding.PEM)
    cert, key = make_leaf(ca, HOST)
    decoy_cert, decoy_key = make_leaf(make_ca("decoy"), HOST)
    (config / "shop.yaml").write_text(CONFIG)
    (config / "secret.yaml").write_text(tls_secret_yaml("shop-cert", "istio-system", cert, key))
    (config / "decoy.yaml").write_text(
        tls_secret_yaml("shop-cert", "tutorial", decoy_cert, decoy_key)
    )
    plane, envoy, port = await serve(tmp_path, config, state)
    log = ""
    try:
        assert not plane.cluster.errors, plane.cluster.errors

        def served() -> tuple[bytes, bytes] | None:
            try:
                return https_get(port, ca_pem)
            except (OSError, ssl.SSLError):
                return None

        der, response = await eventually(served, 20, "an HTTPS answer", envoy)
        assert der == der_of(cert), "not the certificate of istio-system/shop-cert"
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert response.endswith(b"secure shop")
        pid = envoy.process.pid

        # Rotation: a new certificate in the Secret reaches new connections, live.
        new_cert, new_key = make_leaf(ca, HOST)
        write(
            config / "secret.yaml", tls_secret_yaml("shop-cert", "istio-system", new_cert, new_key)
        )
        started = time.monotonic()
        await eventually(
            lambda: (got := served()) is not None and got[0] == der_of(new_cert),
            10,
            "the rotated certificate",
            envoy,
        )
        took = time.monotonic() - started
        assert took < 5, f"rotation took {took:.2f} s"
        assert envoy.process.pid == pid and envoy.process.poll() is None

        # A broken update (key of another certificate) is reported; the last good serves.
        _, wrong_key = make_leaf(ca, HOST)
        write(
            config / "secret.yaml",
            tls_secret_yaml("shop-cert", "istio-system", new_cert, wrong_key),
        )
        await eventually(
            lambda: [
                e for e in plane.cluster.errors if e.object_ref == "Secret/istio-system/shop-cert"
            ],
            10,
            "the broken Secret reported",
            envoy,
        )
        (error,) = plane.cluster.errors
        assert error.field == "data.tls.key" and "PRIVATE KEY" not in str(error)
        der, response = await asyncio.to_thread(https_get, port, ca_pem)
        assert der == der_of(new_cert) and response.endswith(b"secure shop")
        status = str(plane.status())
        assert "PRIVATE KEY" not in status and key.decode()[40:80] not in status
    finally:
        log = envoy.stop()
        await plane.stop(0.2)
    assert "rejected" not in log.lower(), log


def test_gateway_terminates_https_with_the_secret_and_follows_its_rotation(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 50))


async def mutual(tmp_path: Path) -> None:
    config, state = tmp_path / "config", tmp_path / "state"
    config.mkdir()
    ca = make_ca()
    ca_pem = ca[1].public_bytes(serialization.Encoding.PEM)
    clients = make_ca("clients")
    cert, key = make_leaf(ca, HOST)
    (config / "shop.yaml").write_text(CONFIG.replace("mode: SIMPLE", "mode: MUTUAL"))
    (config / "secret.yaml").write_text(
        tls_secret_yaml(
            "shop-cert",
            "istio-system",
            cert,
            key,
            ca=clients[1].public_bytes(serialization.Encoding.PEM),
        )
    )
    good, stranger = tmp_path / "client.pem", tmp_path / "stranger.pem"
    good.write_bytes(b"".join(reversed(make_leaf(clients, "client.example.com"))))
    stranger.write_bytes(b"".join(reversed(make_leaf(make_ca("x"), "client.example.com"))))
    plane, envoy, port = await serve(tmp_path, config, state)
    log = ""
    try:

        def answered(client: Path | None) -> bytes | None:
            try:
                return https_get(port, ca_pem, client)[1]
            except (OSError, ssl.SSLError):
                return None

        response = await eventually(lambda: answered(good), 20, "an mTLS answer", envoy)
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"secure shop")
        assert await asyncio.to_thread(answered, None) is None
        assert await asyncio.to_thread(answered, stranger) is None
    finally:
        log = envoy.stop()
        await plane.stop(0.2)
    assert "rejected" not in log.lower(), log


def test_mutual_tls_verifies_client_certificates_against_the_secrets_ca(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(mutual(tmp_path), 50))
