"""The Envoy reference really is mutual TLS: the server sidecar admits only the client's
identity, verified against the mesh root, over TLS 1.3."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

from bench.case import RunSettings
from bench.datapath import PodPair, start_apps
from bench.envoy.pair import HTTP_TUNNEL, envoy_pair
from bench.procs import run_in_netns

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

# Runs inside the client pod: a TLS 1.3 client straight to the server sidecar's port.
PROBE = """
import socket, ssl, sys
host, port, root, cert, key = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.check_hostname = False
ctx.load_verify_locations(root)
if cert:
    ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            version = tls.version()
            tls.sendall(b"GET / HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n")
            data = tls.recv(4096)
except (OSError, ssl.SSLError) as err:
    print("REFUSED", type(err).__name__, err)
    sys.exit(0)
print("ANSWERED" if data.startswith(b"HTTP/1.1 200") else "CLOSED", version)
"""


def test_server_sidecar_admits_only_the_client_identity(tmp_path: Path) -> None:
    from lab import Lab, LabSpec

    settings = RunSettings(
        rounds=1,
        duration_s=1.0,
        quick=True,
        work_dir=tmp_path,
        lab_prefix=f"bnmt{os.getpid() % 10000}",
    )
    name = f"bm{os.getpid() % 10000}tls"  # unique per process: suites may run concurrently
    with Lab.create(LabSpec(name=name, nodes=2, outside=False)) as lab:
        client = lab.add_pod("client", namespace="bench", node="node1", service_account="client")
        server = lab.add_pod("server", namespace="bench", node="node2", service_account="server")
        with contextlib.ExitStack() as stack:
            for app in start_apps(server, tmp_path):
                stack.callback(app.stop)
            stack.enter_context(envoy_pair()(PodPair(lab, client, server), settings))
            pki_dir = tmp_path / "envoy-pair" / "pki"
            root = pki_dir / "root-cert.pem"

            def attempt(identity: str | None) -> str:
                cert = key = ""
                if identity is not None:
                    cert = str(pki_dir / f"bench.{identity}-cert.pem")
                    key = str(pki_dir / f"bench.{identity}-key.pem")
                argv = [sys.executable, "-c", PROBE, server.ip, str(HTTP_TUNNEL.tunnel_port)]
                run = run_in_netns(client.netns, [*argv, str(root), cert, key], timeout_s=20)
                assert run.returncode == 0, run.stderr
                return run.stdout.strip()

            assert attempt("client") == "ANSWERED TLSv1.3"
            # the same root, but the server's own identity: not the one the server expects
            wrong_identity = attempt("server")
            assert wrong_identity.split()[0] in {"REFUSED", "CLOSED"}, wrong_identity
            no_certificate = attempt(None)
            assert no_certificate.split()[0] in {"REFUSED", "CLOSED"}, no_certificate
