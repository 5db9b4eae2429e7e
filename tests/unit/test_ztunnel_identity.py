"""SPIFFE ids, CSRs and the local CA, rotation timing, and mTLS between real contexts."""

from __future__ import annotations

import datetime as dt
import random
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ztunnel.errors import CertificateError, InvalidSpiffeIdError, PeerIdentityError
from ztunnel.identity.certs import (
    CertifiedKey,
    LocalCA,
    build_csr,
    certificate_identity,
    csr_identity,
    generate_key,
    key_to_pem,
)
from ztunnel.identity.rotation import (
    CertificateRotation,
    RetryPolicy,
    backoff_delay,
    refresh_time,
)
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.identity.tls import client_context, negotiated_h2, server_context, verify_peer

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
CLIENT = SpiffeId("cluster.local", "demo", "frontend")
SERVER = SpiffeId("cluster.local", "demo", "backend")


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create(dt.datetime.now(dt.UTC))


# --- SPIFFE ids ---------------------------------------------------------------


def test_spiffe_round_trip_and_principal() -> None:
    text = "spiffe://cluster.local/ns/demo/sa/frontend"
    identity = SpiffeId.parse(text)
    assert identity == CLIENT and str(identity) == text
    assert identity.principal == "cluster.local/ns/demo/sa/frontend"
    assert SpiffeId.for_workload("demo") == SpiffeId("cluster.local", "demo", "default")


@pytest.mark.parametrize(
    "text",
    [
        "cluster.local/ns/demo/sa/x",
        "spiffe://cluster.local/ns/demo",
        "spiffe://cluster.local/namespace/demo/sa/x",
        "spiffe://cluster.local/ns/demo/sa/x/extra",
        "spiffe://Cluster.Local/ns/demo/sa/x",
        "spiffe://cluster.local/ns/Demo/sa/x",
        "spiffe:///ns/demo/sa/x",
    ],
)
def test_spiffe_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.parse(text)
    assert info.value.hint


# --- CSRs and the local CA ----------------------------------------------------


def test_csr_carries_one_uri_san_and_p256_key() -> None:
    key = generate_key()
    pem = build_csr(key, CLIENT)
    csr = x509.load_pem_x509_csr(pem)
    assert csr.subject == x509.Name([])
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr_identity(pem) == CLIENT


def test_csr_with_rsa_key_or_without_san_is_refused() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(CLIENT))]),
            critical=True,
        )
        .sign(rsa_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(CertificateError, match="P-256"):
        csr_identity(rsa_csr.public_bytes(Encoding.PEM))
    bare = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(generate_key(), hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="no subjectAltName"):
        csr_identity(bare.public_bytes(Encoding.PEM))
    with pytest.raises(CertificateError, match="unparsable CSR"):
        csr_identity(
            b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n"
        )


def test_ca_signs_24h_leaves_with_the_requested_identity() -> None:
    ca = LocalCA.create(T0)
    key = generate_key()
    chain = ca.sign_csr(build_csr(key, SERVER), T0)
    assert len(chain) == 2 and chain[1] == ca.root_pem
    leaf = x509.load_pem_x509_certificate(chain[0])
    assert certificate_identity(leaf) == SERVER
    assert leaf.not_valid_after_utc == T0 + dt.timedelta(hours=24)
    assert leaf.not_valid_before_utc <= T0
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.verify(leaf)
    assert not LocalCA.create(T0).verify(leaf)
    cert = CertifiedKey.from_pem(key_to_pem(key), chain[0])
    assert (
        cert.identity == SERVER
        and cert.valid_at(T0)
        and not cert.valid_at(T0 + dt.timedelta(days=1))
    )
    assert int(cert.serial, 16) == leaf.serial_number


def test_certified_key_refuses_a_key_of_another_certificate() -> None:
    ca = LocalCA.create(T0)
    a = ca.issue(CLIENT, T0)
    b = ca.issue(SERVER, T0)
    with pytest.raises(CertificateError, match="does not belong"):
        CertifiedKey.from_pem(a.key_pem, b.chain_pem[0])


# --- rotation -----------------------------------------------------------------


def test_refresh_at_half_life() -> None:
    cert = LocalCA.create(T0).issue(CLIENT, T0)
    half = cert.not_before + (cert.not_after - cert.not_before) / 2
    assert refresh_time(cert) == half
    rotation = CertificateRotation(CLIENT, T0)
    assert rotation.due(T0) and rotation.state(T0) == "Initializing"
    rotation.issued(cert, T0)
    assert rotation.next_attempt() == half
    assert not rotation.due(half - dt.timedelta(seconds=1)) and rotation.due(half)
    assert rotation.state(T0) == "Available"


def test_backoff_grows_exponentially_with_bounded_jitter_and_cap() -> None:
    policy = RetryPolicy(initial=dt.timedelta(seconds=1), jitter=0.2)
    rng = random.Random(1)
    delays = [backoff_delay(n, policy, rng).total_seconds() for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        base = min(2 ** (n - 1), 150)
        assert base * 0.8 <= delay <= min(base * 1.2, 150)
    assert delays[-1] <= 150
    no_jitter = RetryPolicy(jitter=0.0)
    assert [backoff_delay(n, no_jitter, rng).total_seconds() for n in (1, 2, 3, 9, 20)] == [
        1,
        2,
        4,
        150,
        150,
    ]


def test_failures_keep_the_old_certificate_until_it_expires() -> None:
    ca = LocalCA.create(T0)
    rotation = CertificateRotation(CLIENT, T0, RetryPolicy(jitter=0.0), random.Random(0))
    first = ca.issue(CLIENT, T0)
    rotation.issued(first, T0)
    now = refresh_time(first)
    assert rotation.failed(now, "CA unreachable") == dt.timedelta(seconds=1)
    assert rotation.next_attempt() == now + dt.timedelta(seconds=1)
    assert rotation.failed(now, "CA unreachable") == dt.timedelta(seconds=2)
    assert rotation.current(now) is first and rotation.state(now) == "Available"
    after_expiry = first.not_after
    assert rotation.current(after_expiry) is None
    assert rotation.state(after_expiry) == "Unavailable: CA unreachable"
    # Success resets the backoff and the new certificate takes over.
    second = ca.issue(CLIENT, after_expiry)
    rotation.issued(second, after_expiry)
    assert rotation.failures == 0 and rotation.current(after_expiry) is second


def test_renewal_switches_new_connections_and_keeps_the_old_certificate() -> None:
    ca = LocalCA.create(T0)
    rotation = CertificateRotation(CLIENT, T0)
    first = ca.issue(CLIENT, T0)
    rotation.issued(first, T0)
    renew_at = refresh_time(first)
    # A renewal whose validity starts later (CA clock ahead): the old one serves until then.
    second = ca.issue(CLIENT, renew_at + dt.timedelta(minutes=10))
    rotation.issued(second, renew_at)
    assert rotation.current(renew_at) is first
    later = renew_at + dt.timedelta(minutes=10)
    assert rotation.current(later) is second
    assert rotation.certificates(later) == (first, second)
    assert rotation.certificates(first.not_after) == (second,)


# --- mTLS over in-memory TLS --------------------------------------------------


def handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a full TLS handshake between two SSLObjects over memory BIOs."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    # TLS 1.3 lets the client finish first; a server-side rejection of the client
    # certificate reaches the client on its first read.
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    server.write(b"pong")
    c_in.write(s_out.read())
    assert client.read(4) == b"pong"
    return client, server


def test_good_peers_connect_with_tls13_h2_and_identities(ca: LocalCA) -> None:
    now = dt.datetime.now(dt.UTC)
    client, server = handshake(
        client_context(ca.issue(CLIENT, now), ca.root_pem),
        server_context(ca.issue(SERVER, now), ca.root_pem),
    )
    assert client.version() == "TLSv1.3" and negotiated_h2(client) and negotiated_h2(server)
    assert verify_peer(client, expected={SERVER}) == SERVER
    assert verify_peer(server, trust_domain="cluster.local") == CLIENT


def test_client_from_another_root_is_refused(ca: LocalCA) -> None:
    now = dt.datetime.now(dt.UTC)
    stranger = LocalCA.create(now)
    with pytest.raises(ssl.SSLError):
        handshake(
            client_context(stranger.issue(CLIENT, now), ca.root_pem),
            server_context(ca.issue(SERVER, now), ca.root_pem),
        )


def test_server_from_another_root_is_refused(ca: LocalCA) -> None:
    now = dt.datetime.now(dt.UTC)
    stranger = LocalCA.create(now)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            client_context(ca.issue(CLIENT, now), ca.root_pem),
            server_context(stranger.issue(SERVER, now), stranger.root_pem),
        )


def test_expired_certificate_is_refused(ca: LocalCA) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue(SERVER, now - dt.timedelta(days=2))
    assert not expired.valid_at(now)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        handshake(
            client_context(ca.issue(CLIENT, now), ca.root_pem),
            server_context(expired, ca.root_pem),
        )


def test_wrong_trust_domain_is_an_identity_error(ca: LocalCA) -> None:
    now = dt.datetime.now(dt.UTC)
    foreign = SpiffeId("evil.example", "demo", "frontend")
    client, server = handshake(
        client_context(ca.issue(foreign, now), ca.root_pem),
        server_context(ca.issue(SERVER, now), ca.root_pem),
    )
    with pytest.raises(PeerIdentityError, match=r"evil\.example") as info:
        verify_peer(server, trust_domain="cluster.local")
    assert info.value.response_flag == "IDENTITY_ERROR"
    assert verify_peer(client, trust_domain="cluster.local") == SERVER


def test_unexpected_server_identity_is_an_identity_error(ca: LocalCA) -> None:
    now = dt.datetime.now(dt.UTC)
    client, _ = handshake(
        client_context(ca.issue(CLIENT, now), ca.root_pem),
        server_context(ca.issue(SpiffeId("cluster.local", "demo", "impostor"), now), ca.root_pem),
    )
    with pytest.raises(PeerIdentityError, match="expected one of") as info:
        verify_peer(client, expected={SERVER})
    assert info.value.response_flag == "IDENTITY_ERROR"
