"""HTTPS ingress in a real lab: ``outside`` reaches the ingress gateway over HTTPS.

A 2-node lab with its control plane on the fabric (no agents or ztunnels: the answer is
the VirtualService's ``directResponse``, so only the gateway's Envoy is on the path).
``ambient lab apply -f`` of an Istio ``Gateway`` (443, HTTPS, ``tls.mode: SIMPLE``,
``credentialName: shop-cert``) brings up the lab's ``istio-ingressgateway`` pod; the
Secret ``istio-system/shop-cert`` goes into the lab's config folder (the folder the
control plane reads; ``lab apply`` takes no Secrets). Then ``curl --cacert <test CA>
https://shop.example.com/`` from ``outside`` to the gateway's address is answered over
TLS with the Secret's certificate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from lab import Lab, mesh
from lab.demo import DemoConfig, DemoWorld
from lab.manifests.apply import apply_manifests
from tests.integration.meshlab import two_node_lab
from tests.tls_fixtures import SHOP_HOST, make_ca, make_leaf, shop_gateway_yaml, tls_secret_yaml

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

HOST = SHOP_HOST
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
""" + shop_gateway_yaml("shop")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with two_node_lab("tl", tmp_path) as built:
        yield built


def test_outside_gets_https_from_the_gateway_with_the_secrets_certificate(
    lab: Lab, tmp_path: Path
) -> None:
    world = DemoWorld(lab, DemoConfig(name=lab.name), lab.run_dir / "controlplane")
    world.start_controlplane()
    mesh.register(
        lab.run_dir,
        mesh.MeshEndpoint(
            xds_address=world.xds_address,
            xds_server_name="istiod.istio-system.svc",
            root_cert=str(world.state_dir / "root-cert.pem"),
            tokens={n.name: str(world.node_token(n)) for n in lab.nodes},
        ),
    )
    ca = make_ca()
    ca_file = lab.run_dir / "shop-ca.pem"
    ca_file.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    cert, key = make_leaf(ca, HOST)
    (lab.config_dir / "shop-cert.yaml").write_text(
        tls_secret_yaml("shop-cert", "istio-system", cert, key)
    )
    manifests = tmp_path / "shop.yaml"
    manifests.write_text(MANIFESTS)
    apply_manifests(lab, [manifests])
    gateway = lab.pod("istio-system/istio-ingressgateway")
    curl = [
        "curl", "-sS", "-m", "3", "--cacert", str(ca_file),
        "--resolve", f"{HOST}:443:{gateway.ip}", "-w", " %{http_code} %{ssl_verify_result}",
        f"https://{HOST}/",
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    done = lab.exec("outside", curl)
    while done.stdout != "secure shop 200 0" and time.monotonic() < deadline:
        time.sleep(0.5)
        done = lab.exec("outside", curl)
    assert done.stdout == "secure shop 200 0", (done.stdout, done.stderr)
    # Without the CA (or with another name) the certificate is not accepted.
    refused = lab.exec("outside", [c for c in curl if c not in ("--cacert", str(ca_file))])
    assert refused.returncode != 0
