"""Decoding Kubernetes ``Secret`` objects that hold TLS credentials for gateways.

Istio's gateways take a server's certificate from the Secret named by
``credentialName`` (Gateway API: ``certificateRefs``): type ``kubernetes.io/tls`` with
``tls.crt`` and ``tls.key``, or a generic (``Opaque``) Secret with ``tls.crt``/``tls.key``
or ``cert``/``key``; client roots for ``tls.mode: MUTUAL`` come from ``ca.crt`` (or
``cacert``) in the same Secret or in one named ``<credentialName>-cacert``. Secrets
holding none of these (service-account tokens, Helm releases, anything else) are
skipped silently.

A bad certificate or key (not PEM, key not matching the certificate, certificate
expired) rejects the Secret with a problem naming the field, so the source keeps the
last good version in force. Messages never quote the data.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
)

from controlplane.model import TLS_SECRET_TYPE, Secret
from controlplane.sources.fields import Fields, labels_of, type_name

CERT_KEYS = ("tls.crt", "cert")
"""Where a certificate chain may be (Istio reads both spellings)."""
KEY_KEYS = ("tls.key", "key")
CA_KEYS = ("ca.crt", "cacert")
OPAQUE_TYPES = ("Opaque", "generic", "")
"""Secret types whose TLS keys we read besides ``kubernetes.io/tls``."""


def decode_secret(top: Fields, ns: str, name: str) -> Secret | None:
    """A TLS Secret, or None (no problem) for a Secret that holds no TLS material."""
    meta = top.mapping("metadata")
    labels, _ = labels_of(meta)  # annotations may carry a copy of the data: dropped
    secret_type = top.string("type")
    values = _values(top)
    if values is None:
        return None
    cert_key = next((k for k in CERT_KEYS if k in values), "")
    key_key = next((k for k in KEY_KEYS if k in values), "")
    ca_key = next((k for k in CA_KEYS if k in values), "")
    if secret_type == TLS_SECRET_TYPE:
        absent = [k for k, found in (("tls.crt", cert_key), ("tls.key", key_key)) if not found]
        for wanted in absent:
            top.error(f"data.{wanted}", f"required in a {TLS_SECRET_TYPE} Secret")
        if absent:
            return None
    elif secret_type not in OPAQUE_TYPES:
        return None
    if not cert_key and not key_key and not ca_key:
        return None
    if bool(cert_key) != bool(key_key):
        missing = "tls.key" if cert_key else "tls.crt"
        top.error(f"data.{missing}", "a certificate needs its key and a key its certificate")
        return None
    chain: list[x509.Certificate] = []
    if cert_key:
        chain = _certificates(top, cert_key, values[cert_key])
    key = _private_key(top, key_key, values[key_key]) if key_key else None
    ca = _certificates(top, ca_key, values[ca_key]) if ca_key else []
    not_after = ""
    if chain and key is not None:
        leaf = chain[0]
        if _public_bytes(leaf.public_key()) != _public_bytes(key.public_key()):
            top.error(f"data.{key_key}", f"the key does not match the certificate in {cert_key}")
        expiry = leaf.not_valid_after_utc
        not_after = expiry.isoformat()
        if expiry <= dt.datetime.now(dt.UTC):
            top.error(
                f"data.{cert_key}",
                f"the certificate ({leaf.subject.rfc4514_string()}) expired at {not_after}",
            )
    return Secret(
        namespace=ns,
        name=name,
        certificate_chain=values[cert_key] if cert_key else b"",
        private_key=values[key_key] if key_key else b"",
        ca_certificates=values[ca_key] if ca and ca_key else b"",
        type=secret_type or "Opaque",
        not_after=not_after,
        labels=labels,
    )


def _values(top: Fields) -> dict[str, bytes] | None:
    """The TLS-relevant keys of ``data`` (base64) and ``stringData`` (plain), decoded;
    None when the Secret's data is not readable at all."""
    out: dict[str, bytes] = {}
    wanted = (*CERT_KEYS, *KEY_KEYS, *CA_KEYS)
    data = top.data.get("data")
    if data is not None and not isinstance(data, Mapping):
        top.error("data", f"must be a mapping, not {type_name(data)}")
        return None
    for key, value in (data or {}).items():
        if key not in wanted:
            continue
        if not isinstance(value, str):
            top.error(f"data.{key}", f"must be a base64 string, not {type_name(value)}")
            continue
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            top.error(f"data.{key}", "is not valid base64")
    string_data = top.data.get("stringData")
    if isinstance(string_data, Mapping):
        for key, value in string_data.items():
            if key in wanted and isinstance(value, str):
                out[key] = value.encode()
    return out


def _certificates(top: Fields, field: str, pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        top.error(f"data.{field}", "is not a PEM certificate (or chain) that can be parsed")
        return []
    return certificates


_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


def _private_key(top: Fields, field: str, pem: bytes) -> Any:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        top.error(f"data.{field}", "is not an unencrypted PEM private key that can be parsed")
        return None
    except Exception:
        top.error(f"data.{field}", "is not a private key Envoy can use")
        return None
    if not isinstance(key, _KEY_TYPES):
        top.error(f"data.{field}", "is not a private key Envoy can use")
        return None
    return key


def _public_bytes(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data
