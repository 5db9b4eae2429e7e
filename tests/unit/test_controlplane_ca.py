"""The control plane's CA: CSR checks, chain order, lifetimes, node credentials,
impersonation refusals, user-provided intermediates, and TokenReview callers.

The TokenReview test uses a PROTOCOL FIXTURE (``TokenReviewFixture``): recorded
``authentication.k8s.io/v1`` TokenReview responses served over HTTP on 127.0.0.1 to
the official ``kubernetes`` client. It is not an API server.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.xds import IMPERSONATED_IDENTITY, CertificateRequest
from controlplane.ca.auth import (
    Caller,
    ChainedAuthenticator,
    TokenReviewAuthenticator,
    bearer_token,
    check_impersonation,
)
from controlplane.ca.authority import (
    CaFiles,
    CaSettings,
    CertificateAuthority,
    load_or_create,
)
from controlplane.ca.credentials import NodeTokens
from controlplane.ca.service import CertificateService
from controlplane.errors import (
    AuthenticationError,
    CaConfigError,
    CsrRejected,
    ImpersonationDenied,
)
from controlplane.model import ClusterState, Pod
from ztunnel.identity.certs import build_csr, generate_key
from ztunnel.identity.spiffe import SpiffeId

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
ALICE = SpiffeId("cluster.local", "demo", "alice")
BOB = SpiffeId("cluster.local", "demo", "bob")


def make_ca(settings: CaSettings | None = None) -> CertificateAuthority:
    key, cert = CertificateAuthority.create_root(NOW)
    return CertificateAuthority(key, cert, (), settings)


def csr_for(identity: SpiffeId | str) -> str:
    if isinstance(identity, str):
        return _csr_with_uris([identity])
    return build_csr(generate_key(), identity).decode()


def _csr_with_uris(uris: list[str], key: Any = None) -> str:
    from cryptography.hazmat.primitives import serialization

    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
    csr = builder.sign(key or generate_key(), hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def cluster(*pods: Pod) -> ClusterState:
    return ClusterState(pods={(p.namespace, p.name): p for p in pods})


ALICE_ON_NODE1 = Pod("demo", "alice-1", node_name="node1", service_account="alice", ip="10.0.0.1")
BOB_ON_NODE2 = Pod("demo", "bob-1", node_name="node2", service_account="bob", ip="10.0.0.2")


# --- signing ----------------------------------------------------------------------


def test_chain_is_leaf_first_root_last_with_one_spiffe_san() -> None:
    ca = make_ca()
    signed = ca.sign(csr_for(ALICE), NOW)
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in signed.pems]
    assert len(chain) == 2 and chain[-1] == ca.root
    leaf = chain[0]
    leaf.verify_directly_issued_by(chain[1])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ALICE)]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.subject == x509.Name([])


def test_default_lifetime_is_24h_and_requests_are_capped() -> None:
    ca = make_ca(CaSettings(max_ttl=dt.timedelta(hours=48)))
    default = ca.sign(csr_for(ALICE), NOW)
    assert default.not_after == NOW + dt.timedelta(hours=24)
    short = ca.sign(csr_for(ALICE), NOW, requested_seconds=3600)
    assert short.not_after == NOW + dt.timedelta(hours=1)
    capped = ca.sign(csr_for(ALICE), NOW, requested_seconds=365 * 86400)
    assert capped.not_after == NOW + dt.timedelta(hours=48)


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("not a csr", "unparsable CSR"),
        (_csr_with_uris([]), "no subjectAltName"),
        (_csr_with_uris([str(ALICE), str(BOB)]), "2 URI SANs"),
        (_csr_with_uris(["https://example.com/x"]), "not a SPIFFE id"),
        (_csr_with_uris(["spiffe://other.td/ns/demo/sa/alice"]), "outside the trust domain"),
        (
            _csr_with_uris(
                [str(ALICE)], rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ),
            "not ECDSA P-256",
        ),
        (
            _csr_with_uris([str(ALICE)], ec.generate_private_key(ec.SECP384R1())),
            "not ECDSA P-256",
        ),
    ],
)
def test_bad_csrs_are_rejected_with_the_reason(csr: str, message: str) -> None:
    with pytest.raises(CsrRejected, match=message):
        make_ca().sign(csr, NOW)


def test_state_dir_root_is_created_once_with_a_private_key(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, NOW)
    key_mode = stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode)
    assert key_mode == 0o600
    again = load_or_create(tmp_path, NOW + dt.timedelta(days=1))
    assert again.root == first.root
    assert (tmp_path / "root-cert.pem").read_text() == first.root_pem


def test_user_intermediate_signs_and_the_chain_reaches_the_users_root(tmp_path: Path) -> None:
    root = make_ca()
    # the user's intermediate, signed by their root
    key = generate_key()
    from cryptography.hazmat.primitives import serialization

    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate")])
    inter = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root._key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "c.pem").write_bytes(inter.public_bytes(pem))
    (tmp_path / "chain.pem").write_bytes(root.cert.public_bytes(pem))
    files = CaFiles(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "chain.pem")
    ca = load_or_create(tmp_path / "state", NOW, user=files)
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in ca.sign(csr_for(ALICE), NOW).pems]
    assert [c.subject for c in chain[1:]] == [inter.subject, root.cert.subject]
    chain[0].verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(chain[2])
    assert (tmp_path / "state" / "root-cert.pem").read_text() == root.root_pem
    # an intermediate without its chain, or a key of another CA, is refused
    with pytest.raises(CaConfigError, match="no chain up to its root"):
        load_or_create(tmp_path / "s2", NOW, user=CaFiles(files.cert, files.key))
    (tmp_path / "other.pem").write_bytes(root.cert.public_bytes(pem))
    with pytest.raises(CaConfigError, match="does not belong"):
        load_or_create(tmp_path / "s3", NOW, user=CaFiles(tmp_path / "other.pem", files.key))


# --- node credentials ---------------------------------------------------------------


def test_node_tokens_verify_and_refuse_tampering_expiry_and_other_secrets(
    tmp_path: Path,
) -> None:
    tokens = NodeTokens.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "node-token.key").stat().st_mode) == 0o600
    token = tokens.issue("node1", NOW, dt.timedelta(hours=1))
    claims = tokens.verify(token, NOW)
    assert claims.node == "node1" and claims.subject == "spiffe://cluster.local/node/node1"
    assert NodeTokens.looks_like_ours(token)
    header, payload, sig = token.split(".")
    forged_payload = payload.replace(payload[:8], payload[:8][::-1])
    for bad in (f"{header}.{forged_payload}.{sig}", token[:-2] + "AA", "abc", ""):
        with pytest.raises(AuthenticationError):
            tokens.verify(bad, NOW)
    with pytest.raises(AuthenticationError, match="expired"):
        tokens.verify(token, NOW + dt.timedelta(hours=2))
    other = NodeTokens(b"x" * 32)
    with pytest.raises(AuthenticationError, match="signature"):
        other.verify(token, NOW)
    with pytest.raises(CaConfigError):
        tokens.issue("Node_1", NOW)


def test_bearer_token_is_required() -> None:
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    for metadata in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        with pytest.raises(AuthenticationError, match="no credential"):
            bearer_token(metadata)


# --- impersonation ------------------------------------------------------------------


def test_impersonation_only_for_pods_on_the_callers_node() -> None:
    state = cluster(ALICE_ON_NODE1, BOB_ON_NODE2)
    node1 = Caller("node1", "spiffe://cluster.local/node/node1", "node-credential")
    check_impersonation(node1, ALICE, state)
    with pytest.raises(ImpersonationDenied, match=r"node node1 .* asked for .*/sa/bob"):
        check_impersonation(node1, BOB, state)
    with pytest.raises(ImpersonationDenied):
        check_impersonation(node1, SpiffeId("cluster.local", "other", "alice"), state)


def service(tmp_path: Path, state: ClusterState) -> tuple[CertificateService, NodeTokens]:
    tokens = NodeTokens.load_or_create(tmp_path)
    svc = CertificateService(
        make_ca(), ChainedAuthenticator(tokens, None), lambda: state, lambda: NOW
    )
    return svc, tokens


def test_service_signs_for_the_node_and_counts_refusals(tmp_path: Path) -> None:
    svc, tokens = service(tmp_path, cluster(ALICE_ON_NODE1, BOB_ON_NODE2))
    auth = {"authorization": f"Bearer {tokens.issue('node1', NOW)}"}
    request = CertificateRequest(csr_for(ALICE), 0, {IMPERSONATED_IDENTITY: str(ALICE)})
    chain = svc.create_certificate(request, auth)
    assert len(chain) == 2
    with pytest.raises(ImpersonationDenied):
        svc.create_certificate(CertificateRequest(csr_for(BOB)), auth)
    with pytest.raises(AuthenticationError):
        svc.create_certificate(request, {})
    with pytest.raises(AuthenticationError):
        svc.create_certificate(request, {"authorization": "Bearer forged.token.here"})
    mismatch = CertificateRequest(csr_for(ALICE), 0, {IMPERSONATED_IDENTITY: str(BOB)})
    with pytest.raises(CsrRejected, match="differs"):
        svc.create_certificate(mismatch, auth)
    stats = svc.stats.as_dict()
    assert stats["issued"] == 1 and stats["refusedImpersonation"] == 1
    assert stats["refusedUnauthenticated"] == 2 and stats["refusedCsr"] == 1
    assert stats["issuedByNode"] == {"node1": 1}


# --- TokenReview (protocol fixture) -----------------------------------------------------


def review_response(authenticated: bool, username: str = "", pod: str = "") -> dict[str, Any]:
    """A recorded TokenReview response body (authentication.k8s.io/v1)."""
    status: dict[str, Any] = {"authenticated": authenticated}
    if authenticated:
        status["user"] = {
            "username": username,
            "uid": "5b7c6f2a-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/pod-name": [pod],
                "authentication.kubernetes.io/pod-uid": ["pod-uid-1"],
            },
        }
        status["audiences"] = ["istio-ca"]
    else:
        status["error"] = "[invalid bearer token, token lookup failed]"
    return {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": {"token": "<redacted>", "audiences": ["istio-ca"]},
        "status": status,
    }


class TokenReviewFixture:
    """PROTOCOL FIXTURE: answers POST /apis/authentication.k8s.io/v1/tokenreviews."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fixture.requests.append({"path": self.path, "body": body})
                answer = fixture.answers.get(body["spec"]["token"], review_response(False))
                data = json.dumps(answer).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TokenReviewFixture:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client(self) -> Any:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)


@pytest.fixture
def tokenreview() -> Iterator[TokenReviewFixture]:
    answers = {
        "ztunnel-token": review_response(
            True, "system:serviceaccount:istio-system:ztunnel", "ztunnel-abc"
        ),
        "app-token": review_response(True, "system:serviceaccount:demo:alice", "alice-1"),
    }
    with TokenReviewFixture(answers) as fixture:
        yield fixture


def test_tokenreview_caller_is_the_node_of_its_pod(tokenreview: TokenReviewFixture) -> None:
    ztunnel_pod = Pod(
        "istio-system", "ztunnel-abc", uid="pod-uid-1", node_name="node1", service_account="ztunnel"
    )
    state = cluster(ztunnel_pod, ALICE_ON_NODE1, BOB_ON_NODE2)
    auth = TokenReviewAuthenticator(tokenreview.client(), timeout=5)
    caller = auth.authenticate("ztunnel-token", state, NOW)
    assert caller == Caller("node1", "system:serviceaccount:istio-system:ztunnel", "tokenreview")
    request = tokenreview.requests[0]
    assert request["path"] == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert request["body"]["spec"] == {"token": "ztunnel-token", "audiences": ["istio-ca"]}
    check_impersonation(caller, ALICE, state)
    with pytest.raises(ImpersonationDenied):
        check_impersonation(caller, BOB, state)


def test_tokenreview_refusals(tokenreview: TokenReviewFixture) -> None:
    auth = TokenReviewAuthenticator(tokenreview.client(), timeout=5)
    state = cluster(ALICE_ON_NODE1)
    with pytest.raises(AuthenticationError, match="refused"):
        auth.authenticate("garbage", state, NOW)
    with pytest.raises(AuthenticationError, match="may not request other identities"):
        auth.authenticate("app-token", state, NOW)
    # trusted account, but its pod is not in the cluster state
    with pytest.raises(AuthenticationError, match="not bound to a known pod"):
        auth.authenticate("ztunnel-token", state, NOW)


def test_chained_authenticator_routes_node_tokens_and_service_account_tokens(
    tokenreview: TokenReviewFixture, tmp_path: Path
) -> None:
    tokens = NodeTokens.load_or_create(tmp_path)
    ztunnel_pod = Pod(
        "istio-system", "ztunnel-abc", uid="pod-uid-1", node_name="node2", service_account="ztunnel"
    )
    state = cluster(ztunnel_pod)
    chained = ChainedAuthenticator(
        tokens, TokenReviewAuthenticator(tokenreview.client(), timeout=5)
    )
    assert chained.authenticate(tokens.issue("node1", NOW), state, NOW).node == "node1"
    assert chained.authenticate("ztunnel-token", state, NOW).node == "node2"
    assert len(tokenreview.requests) == 1
