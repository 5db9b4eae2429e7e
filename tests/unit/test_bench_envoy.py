"""The Envoy reference: certificates and bootstrap configs, validated by Envoy itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bench.envoy import bootstrap, pki
from bench.envoy.proxy import envoy_argv, envoy_binary
from bench.errors import ToolError

CLIENT = pki.spiffe_id("bench", "client")
SERVER = pki.spiffe_id("bench", "server")
TUNNELS = [
    bootstrap.Tunnel("http", 18080, 15443, 8080),
    bootstrap.Tunnel("bulk", 15201, 15444, 5201),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> pki.MeshPki:
    return pki.make_mesh_pki(
        tmp_path_factory.mktemp("pki"), [("bench", "client"), ("bench", "server")]
    )


def configs(mesh: pki.MeshPki) -> dict[str, dict[str, object]]:
    client, server = mesh.workloads[CLIENT], mesh.workloads[SERVER]
    return {
        "origin": bootstrap.origin(port=8080, body="hi\n"),
        "client": bootstrap.client_sidecar(
            server_ip="10.244.2.2",
            tunnels=TUNNELS,
            tls=bootstrap.TlsFiles(client.cert_path, client.key_path, mesh.root_path, SERVER),
            sni="server.bench",
        ),
        "server": bootstrap.server_sidecar(
            listen_ip="10.244.2.2",
            tunnels=TUNNELS,
            tls=bootstrap.TlsFiles(server.cert_path, server.key_path, mesh.root_path, CLIENT),
        ),
    }


def test_workload_certificates_carry_one_spiffe_san_under_the_root(mesh: pki.MeshPki) -> None:
    root = x509.load_pem_x509_certificate(mesh.root_path.read_bytes())
    for uri, files in mesh.workloads.items():
        cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        cert.verify_directly_issued_by(root)
        assert files.key_path.stat().st_mode & 0o077 == 0


def test_sidecars_pin_tls13_and_the_peer_identity(mesh: pki.MeshPki) -> None:
    cfg = configs(mesh)
    server_listener = cfg["server"]["static_resources"]["listeners"][0]  # type: ignore[index]
    tls = server_listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": CLIENT}}
    ]
    client_cluster = cfg["client"]["static_resources"]["clusters"][0]  # type: ignore[index]
    upstream = client_cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert upstream["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": SERVER
    }
    for config in cfg.values():
        admin = config["admin"]["address"]["socket_address"]  # type: ignore[index]
        assert admin["address"] == "127.0.0.1"
    assert bootstrap.listener_ports(cfg["client"]) == [18080, 15201, 15000]


def _runnable_envoy() -> Path:
    try:
        binary = envoy_binary()
        subprocess.run([str(binary), "--version"], capture_output=True, timeout=30, check=True)
    except (ToolError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the envoy binary cannot run here: {err}")
    return binary


def test_envoy_validates_every_generated_bootstrap(mesh: pki.MeshPki, tmp_path: Path) -> None:
    _runnable_envoy()
    for name, config in configs(mesh).items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        done = subprocess.run(
            envoy_argv(path, concurrency=1, mode="validate"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stdout[-800:]}{done.stderr[-800:]}"


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """The validation above can fail: a listener without filters is refused."""
    _runnable_envoy()
    config = bootstrap.origin(port=8080, body="x")
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][  # type: ignore[index]
        "typed_config"
    ]["route_config"] = {"virtual_hosts": [{"name": "v"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    done = subprocess.run(
        envoy_argv(path, concurrency=1, mode="validate"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
