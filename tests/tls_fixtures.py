"""Certificates and the ``shop.example.com`` HTTPS ingress, shared by the ingress TLS tests.

A test CA, leaf certificates signed by it, ``kubernetes.io/tls`` Secret manifests, and the
Istio ``Gateway`` (443, HTTPS, ``credentialName: shop-cert``) with a VirtualService that
answers ``secure shop`` directly, as Istio's Secure Gateways task applies them.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)
SHOP_HOST = "shop.example.com"


def pem_key(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(name: str = "test root") -> tuple[Any, x509.Certificate]:
    """A self-signed CA key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca: tuple[Any, x509.Certificate],
    host: str,
    *,
    not_after: dt.datetime | None = None,
    serial: int | None = None,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``host``, signed by ``ca``."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    after = not_after or NOW + dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(min(NOW - dt.timedelta(hours=1), after - dt.timedelta(hours=1)))
        .not_valid_after(after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret_yaml(
    name: str, namespace: str, cert: bytes, key: bytes, *, ca: bytes = b"", kind: str = ""
) -> str:
    """A ``kubernetes.io/tls`` Secret manifest (``kind="Opaque"``: generic, cert/key)."""
    keys = ("cert", "key", "cacert") if kind == "Opaque" else ("tls.crt", "tls.key", "ca.crt")
    data = {keys[0]: cert, keys[1]: key, keys[2]: ca}
    lines = "".join(f"  {k}: {b64(v)}\n" for k, v in data.items() if v)
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"type: {kind or 'kubernetes.io/tls'}\ndata:\n{lines}"
    )


def shop_gateway_yaml(namespace: str, mode: str = "SIMPLE") -> str:
    """The Istio ``Gateway`` ``shop-gateway`` (443 HTTPS for :data:`SHOP_HOST`, TLS
    ``mode``, certificate from the Secret ``shop-cert``) and the VirtualService ``shop``
    bound to it, answering ``200 secure shop`` directly, both in ``namespace``."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway, namespace: {namespace}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{SHOP_HOST}"]
    tls: {{mode: {mode}, credentialName: shop-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: {namespace}}}
spec:
  hosts: ["{SHOP_HOST}"]
  gateways: [shop-gateway]
  http:
  - directResponse: {{status: 200, body: {{string: "secure shop"}}}}
"""
