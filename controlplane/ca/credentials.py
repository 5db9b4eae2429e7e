"""Standalone node credentials: bearer tokens the control plane signs for each node.

Design: a node proves who it is with ``authorization: Bearer <token>``, the same gRPC
metadata Istio's ztunnel sends with its Kubernetes service-account token. Here the
token is a compact JWT (``HS256``) made by ``ambient controlplane node-credential NODE``
with a 256-bit secret kept in the control plane's state folder (``node-token.key``,
0600). Claims: ``iss`` (this control plane), ``aud`` (``istio-ca``), ``sub``
(``spiffe://<td>/node/<node>``), ``node``, ``iat``, ``exp``, ``jti``.

Why a token and not a client certificate: the same header path serves both modes
(TokenReview in a cluster, this signature standalone), Istio's ztunnel can present it
unchanged (``AUTH_TOKEN`` file), and the xDS stream stays server-authenticated TLS as in
Istio. Stealing the token is the same risk as stealing a service-account token: it
travels only inside TLS to the control plane, expires, and all tokens are revoked at
once by replacing the secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from controlplane.ca.authority import write_private
from controlplane.errors import AuthenticationError, CaConfigError

TOKEN_KEY_FILE = "node-token.key"  # noqa: S105 - a file name, not a secret
ISSUER = "ambient-controlplane"
AUDIENCE = "istio-ca"
DEFAULT_TOKEN_TTL = dt.timedelta(days=365)
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class NodeClaims:
    """What a verified node token says."""

    node: str
    """The Kubernetes node name the holder may act for."""
    subject: str
    """``spiffe://<td>/node/<node>``."""
    expires: dt.datetime
    token_id: str


def check_node_name(node: str) -> str:
    """``node`` if it is a valid Kubernetes node name; else :class:`CaConfigError`."""
    if not _NODE_NAME.match(node):
        raise CaConfigError(
            f"{node!r} is not a valid node name",
            hint="node names are lower-case DNS names, as in 'kubectl get nodes'",
        )
    return node


class NodeTokens:
    """Issues and verifies node tokens with one secret (pure: callers pass ``now``)."""

    def __init__(self, secret: bytes, trust_domain: str = "cluster.local") -> None:
        if len(secret) < 32:
            raise CaConfigError("the node-token secret is shorter than 32 bytes")
        self._secret = secret
        self.trust_domain = trust_domain

    @classmethod
    def load_or_create(cls, state_dir: Path, trust_domain: str = "cluster.local") -> NodeTokens:
        """The secret in ``state_dir/node-token.key`` (made on first use, 0600)."""
        path = state_dir / TOKEN_KEY_FILE
        if not path.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            write_private(path, secrets.token_bytes(32))
        try:
            return cls(path.read_bytes(), trust_domain)
        except OSError as err:
            raise CaConfigError(f"cannot read {path}: {err}") from err

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()

    def issue(self, node: str, now: dt.datetime, ttl: dt.timedelta = DEFAULT_TOKEN_TTL) -> str:
        """A token for ``node`` valid from ``now`` for ``ttl``."""
        check_node_name(node)
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"spiffe://{self.trust_domain}/node/{node}",
            "node": node,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": secrets.token_hex(8),
        }
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        return f"{signing_input}.{_b64(self._sign(signing_input))}"

    @staticmethod
    def looks_like_ours(token: str) -> bool:
        """Whether ``token`` is a JWT whose issuer is this control plane (unverified)."""
        parts = token.split(".")
        if len(parts) != 3:
            return False
        try:
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(claims, dict) and claims.get("iss") == ISSUER

    def verify(self, token: str, now: dt.datetime) -> NodeClaims:
        """The claims of a valid token; :class:`AuthenticationError` otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthenticationError("the bearer token is not a node credential (not a JWT)")
        signing_input = f"{parts[0]}.{parts[1]}"
        try:
            signature = _unb64(parts[2])
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, UnicodeDecodeError) as err:
            raise AuthenticationError("the node credential is malformed") from err
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise AuthenticationError("the node credential is not signed with HS256")
        if not hmac.compare_digest(signature, self._sign(signing_input)):
            raise AuthenticationError(
                "the node credential's signature does not verify",
                hint="it was issued by another control plane or altered; "
                "issue a new one with 'ambient controlplane node-credential NODE'",
            )
        if not isinstance(claims, dict):
            raise AuthenticationError("the node credential's claims are not an object")
        node, exp = claims.get("node"), claims.get("exp")
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE:
            raise AuthenticationError("the node credential has the wrong issuer or audience")
        if not isinstance(node, str) or not isinstance(exp, int):
            raise AuthenticationError("the node credential lacks its node or expiry")
        expires = dt.datetime.fromtimestamp(exp, dt.UTC)
        if now >= expires:
            raise AuthenticationError(
                f"the node credential of {node} expired at {expires.isoformat()}",
                hint="issue a new one with 'ambient controlplane node-credential NODE'",
            )
        return NodeClaims(node, str(claims.get("sub", "")), expires, str(claims.get("jti", "")))
