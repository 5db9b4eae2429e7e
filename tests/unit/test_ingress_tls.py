"""HTTPS ingress: TLS Secrets decoded into the model, served over SDS to gateways of their
own namespace only, rotated live, checked by ``controlplane validate``."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from controlplane.analyze import analyze
from controlplane.ca.authority import CertificateAuthority
from controlplane.envoy.bootstrap import as_json
from controlplane.envoy.proxy import EnvoyProxy, EnvoyResources
from controlplane.model import ClusterState, Pod, Secret, Severity
from controlplane.sources.decode import decode
from controlplane.sources.documents import parse_text
from controlplane.sources.folder import decode_file, merge_files
from controlplane.sources.kube import DEFAULT_KINDS, KindTable, KubernetesSource
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.xds.envoy import EnvoyServing, credential_secrets
from controlplane.xds.envoytypes import SECRET
from tests.tls_fixtures import NOW, b64, make_ca, make_leaf, tls_secret_yaml
from tests.unit.test_sources_kube import Json, serve  # noqa: F401 - serve: a fixture

CA = make_ca()
CERT, KEY = make_leaf(CA, "shop.example.com")
CA_PEM = CA[1].public_bytes(serialization.Encoding.PEM)


def load(*texts: str, previous: ClusterState | None = None) -> ClusterState:
    results = [
        decode_file(f"f{i}.yaml", parse_text(t, f"f{i}.yaml"), _previous(previous))
        for i, t in enumerate(texts)
    ]
    return merge_files(results)


def _previous(state: ClusterState | None) -> dict[Any, Any]:
    if state is None:
        return {}
    return {("Secret", ns, name): s for (ns, name), s in state.secrets.items()}


# --- decoding ---------------------------------------------------------------------------------


def test_tls_secret_is_decoded_and_its_key_never_printed() -> None:
    state = load(tls_secret_yaml("shop-cert", "istio-system", CERT, KEY, ca=CA_PEM))
    assert not state.errors and not state.warnings, (state.errors, state.warnings)
    secret = state.secrets[("istio-system", "shop-cert")]
    assert secret.certificate_chain == CERT and secret.private_key == KEY
    assert secret.ca_certificates == CA_PEM and secret.has_certificate
    assert secret.not_after.startswith(str((NOW + dt.timedelta(days=1)).year))
    for text in (repr(secret), str(secret), repr(state)):
        assert "PRIVATE KEY" not in text and b64(KEY)[:40] not in text
    assert "holds=[tls.crt, tls.key, ca.crt]" in repr(secret)


def test_opaque_secret_with_cert_and_key_and_a_ca_only_secret() -> None:
    state = load(
        tls_secret_yaml("shop-cert", "gw", CERT, KEY, kind="Opaque")
        + "---\n"
        + tls_secret_yaml("shop-cert-cacert", "gw", b"", b"", ca=CA_PEM, kind="Opaque")
    )
    assert not state.errors, state.errors
    assert state.secrets[("gw", "shop-cert")].has_certificate
    ca_only = state.secrets[("gw", "shop-cert-cacert")]
    assert not ca_only.has_certificate and ca_only.ca_certificates == CA_PEM


def test_secrets_without_tls_material_are_skipped_silently() -> None:
    token = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tok, namespace: a}\n"
        "type: kubernetes.io/service-account-token\ndata: {token: " + b64(b"x") + "}\n"
    )
    opaque = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: a}\n"
        "stringData: {password: hunter2}\n"
    )
    state = load(token + "---\n" + opaque)
    assert not state.secrets and not state.errors and not state.warnings


def _errors(text: str) -> list[str]:
    result = decode(next(iter(parse_text(text, "s.yaml").documents)).data)
    assert result.obj is None
    return [f"{p.field}: {p.message}" for p in result.problems if p.severity is Severity.ERROR]


def test_bad_certificate_key_mismatch_expiry_and_missing_key_name_the_field() -> None:
    assert _errors(tls_secret_yaml("s", "a", b"not a cert", KEY)) == [
        "data.tls.crt: is not a PEM certificate (or chain) that can be parsed"
    ]
    assert _errors(tls_secret_yaml("s", "a", CERT, b"-----BEGIN PRIVATE KEY-----\nxx")) == [
        "data.tls.key: is not an unencrypted PEM private key that can be parsed"
    ]
    _, other_key = make_leaf(CA, "other")
    assert _errors(tls_secret_yaml("s", "a", CERT, other_key)) == [
        "data.tls.key: the key does not match the certificate in tls.crt"
    ]
    old_cert, old_key = make_leaf(CA, "old", not_after=NOW - dt.timedelta(minutes=5))
    (expired,) = _errors(tls_secret_yaml("s", "a", old_cert, old_key))
    assert expired.startswith("data.tls.crt: the certificate (CN=old) expired at ")
    assert _errors(tls_secret_yaml("s", "a", CERT, b"")) == [
        "data.tls.key: required in a kubernetes.io/tls Secret"
    ]
    bad_b64 = tls_secret_yaml("s", "a", CERT, KEY).replace("tls.key: ", "tls.key: '%%'\n  x: ")
    assert "data.tls.key: is not valid base64" in _errors(bad_b64)


def test_a_bad_update_is_an_issue_naming_the_secret_and_the_last_good_one_stays() -> None:
    good = load(tls_secret_yaml("shop-cert", "gw", CERT, KEY))
    _, wrong_key = make_leaf(CA, "x")
    bad = load(tls_secret_yaml("shop-cert", "gw", CERT, wrong_key), previous=good)
    assert bad.secrets[("gw", "shop-cert")] == good.secrets[("gw", "shop-cert")]
    (issue,) = bad.errors
    assert issue.object_ref == "Secret/gw/shop-cert" and issue.field == "data.tls.key"
    assert "previous version stays in force" in issue.message
    assert "PRIVATE KEY" not in str(issue)


def test_kubernetes_source_lists_secrets_and_keeps_the_last_good_on_a_bad_watch_event() -> None:
    (kind,) = [k for k in DEFAULT_KINDS if k.kind == "Secret"]
    assert kind.path == "/api/v1/secrets"
    table = KindTable(kind)
    raw = {
        "metadata": {"name": "shop-cert", "namespace": "gw", "resourceVersion": "1"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(CERT), "tls.key": b64(KEY)},
    }
    table.replace([raw], "1")
    first = table.objects[("gw", "shop-cert")]
    assert isinstance(first, Secret) and first.private_key == KEY
    table.apply("MODIFIED", {**raw, "data": {"tls.crt": b64(b"garbage"), "tls.key": b64(KEY)}})
    assert table.objects[("gw", "shop-cert")] is first
    (issue,) = table.all_issues()
    assert issue.object_ref == "Secret/gw/shop-cert" and issue.field == "data.tls.crt"
    table.apply("DELETED", raw)
    assert not table.objects and not table.all_issues()


# --- SDS ----------------------------------------------------------------------------------------

GATEWAY = EnvoyProxy(
    node_id="router~10.1.0.50~gw.istio-system~istio-system.svc.cluster.local",
    namespace="istio-system",
    service_account="istio-ingressgateway",
    gateway_name="istio-ingressgateway",
    kind="gateway",
    ip="10.1.0.50",
)
WAYPOINT = EnvoyProxy(
    node_id="waypoint~10.1.0.9~wp.istio-system~istio-system.svc.cluster.local",
    namespace="istio-system",
    service_account="wp",
    gateway_name="wp",
    kind="waypoint",
    ip="10.1.0.9",
)


def secrets_state(*extra: str) -> ClusterState:
    state = load(
        tls_secret_yaml("shop-cert", "istio-system", CERT, KEY, ca=CA_PEM),
        tls_secret_yaml("elsewhere", "tutorial", CERT, KEY),
        *extra,
    )
    assert not state.errors, state.errors
    return state


def test_sds_serves_a_gateway_the_secrets_of_its_own_namespace_by_istios_names() -> None:
    served = credential_secrets(secrets_state(), GATEWAY)
    assert sorted(served) == [
        "kubernetes://istio-system/shop-cert",
        "kubernetes://istio-system/shop-cert-cacert",
        "kubernetes://shop-cert",
        "kubernetes://shop-cert-cacert",
        "shop-cert",
        "shop-cert-cacert",
    ]
    cert = served["kubernetes://shop-cert"]
    assert cert.name == "kubernetes://shop-cert"
    assert cert.tls_certificate.certificate_chain.inline_bytes == CERT
    assert cert.tls_certificate.private_key.inline_bytes == KEY
    ca = served["kubernetes://shop-cert-cacert"]
    assert ca.validation_context.trusted_ca.inline_bytes == CA_PEM


def test_sds_refuses_other_namespaces_and_waypoints() -> None:
    state = secrets_state()
    assert not [n for n in credential_secrets(state, GATEWAY) if "elsewhere" in n]
    assert credential_secrets(state, WAYPOINT) == {}


def test_an_explicit_cacert_secret_wins_and_plain_names_never_shadow_the_proxys_own() -> None:
    other_ca = make_ca("other")[1].public_bytes(serialization.Encoding.PEM)
    state = secrets_state(
        tls_secret_yaml("shop-cert-cacert", "istio-system", b"", b"", ca=other_ca, kind="Opaque"),
        tls_secret_yaml("default", "istio-system", CERT, KEY),
    )
    served = credential_secrets(state, GATEWAY)
    ca = served["kubernetes://shop-cert-cacert"].validation_context.trusted_ca.inline_bytes
    assert ca == other_ca
    assert "kubernetes://default" in served and "default" not in served


def _serving(state: list[ClusterState]) -> EnvoyServing:
    key, cert = CertificateAuthority.create_root(NOW)
    pods = {
        ("istio-system", "gw"): Pod(
            "istio-system", "gw", node_name="node1", service_account="istio-ingressgateway"
        )
    }

    def current() -> ClusterState:
        return ClusterState(**{**state[0].__dict__, "pods": pods})

    return EnvoyServing(
        MeshConfig(),
        CertificateAuthority(key, cert),
        current,
        resources=lambda s, p, m: EnvoyResources(),
        clock=lambda: NOW,
    )


def _sds(snapshot: Any) -> dict[str, Any]:
    return {n: secret_pb2.Secret.FromString(r.value) for n, r in snapshot.of(SECRET).items()}


def test_rotating_the_secret_pushes_the_new_certificate() -> None:
    state = [secrets_state()]
    envoy = _serving(state)
    meta = {
        "NAMESPACE": "istio-system",
        "SERVICE_ACCOUNT": "istio-ingressgateway",
        "GATEWAY_NAME": "istio-ingressgateway",
        "PROXY_KIND": "gateway",
    }
    proxy = asyncio.run(envoy.attach("node1", GATEWAY.node_id, meta))
    before = _sds(envoy.snapshot(proxy))
    assert {"default", "ROOTCA", "kubernetes://shop-cert"} <= set(before)
    version = envoy.snapshot(proxy).of(SECRET)["kubernetes://shop-cert"].version
    new_cert, new_key = make_leaf(CA, "shop.example.com")
    state[0] = secrets_state().__class__(
        **{
            **secrets_state().__dict__,
            "secrets": load(
                tls_secret_yaml("shop-cert", "istio-system", new_cert, new_key, ca=CA_PEM)
            ).secrets,
        }
    )
    changed = asyncio.run(envoy.refresh())
    assert set(changed) == {proxy}
    after = changed[proxy].of(SECRET)["kubernetes://shop-cert"]
    assert after.version != version
    pushed = secret_pb2.Secret.FromString(after.value)
    assert pushed.tls_certificate.certificate_chain.inline_bytes == new_cert
    # The proxy's own certificate is untouched by a Secret's rotation.
    assert _sds(changed[proxy])["default"] == before["default"]


# --- ingress translation (MUTUAL) and validate ----------------------------------------------------

ISTIO_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: tutorial}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: MODE, credentialName: shop-cert}
"""
GATEWAY_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels: {istio: ingressgateway}
spec: {serviceAccountName: istio-ingressgateway, nodeName: node1}
status: {podIP: 10.1.0.50, phase: Running}
"""


def test_mutual_tls_asks_for_the_credentials_client_roots() -> None:
    from controlplane.envoy.ingress import translate_ingress

    state = load(GATEWAY_POD, ISTIO_GATEWAY.replace("MODE", "MUTUAL"))
    out = translate_ingress(state, GATEWAY)
    assert not [i for i in out.issues if "tls" in i.field], out.issues
    chain = as_json(out.listeners["0.0.0.0_443"])["filter_chains"][0]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    context = tls["common_tls_context"]
    assert context["tls_certificate_sds_secret_configs"][0]["name"] == "kubernetes://shop-cert"
    assert context["validation_context_sds_secret_config"]["name"] == (
        "kubernetes://shop-cert-cacert"
    )
    simple = translate_ingress(load(GATEWAY_POD, ISTIO_GATEWAY.replace("MODE", "SIMPLE")), GATEWAY)
    simple_tls = as_json(simple.listeners["0.0.0.0_443"])["filter_chains"][0]["transport_socket"]
    assert "validation_context_sds_secret_config" not in str(simple_tls)


def _warnings(*texts: str) -> list[str]:
    state = load(*texts)
    return [f"{i.field}: {i.message}" for i in analyze(state, {}, "istio-system")]


def test_validate_is_quiet_when_the_secret_is_beside_the_gateway() -> None:
    gateway = ISTIO_GATEWAY.replace("MODE", "SIMPLE")
    secret = tls_secret_yaml("shop-cert", "istio-system", CERT, KEY)
    assert not [w for w in _warnings(GATEWAY_POD, gateway, secret) if "credential" in w]
    assert not [w for w in _warnings(GATEWAY_POD, gateway, secret) if "SDS" in w]


def test_validate_warns_about_a_secret_in_the_wrong_namespace_or_without_client_roots() -> None:
    in_tutorial = tls_secret_yaml("shop-cert", "tutorial", CERT, KEY)
    (missing,) = [
        w
        for w in _warnings(GATEWAY_POD, ISTIO_GATEWAY.replace("MODE", "SIMPLE"), in_tutorial)
        if "credentialName" in w
    ]
    assert "no TLS Secret istio-system/shop-cert here" in missing
    no_ca = tls_secret_yaml("shop-cert", "istio-system", CERT, KEY)
    (mutual,) = [
        w
        for w in _warnings(GATEWAY_POD, ISTIO_GATEWAY.replace("MODE", "MUTUAL"), no_ca)
        if "credentialName" in w
    ]
    assert "tls.mode MUTUAL needs client roots" in mutual


def test_docs_show_how_to_create_the_secret() -> None:
    text = (Path(__file__).parents[2] / "docs" / "l7.md").read_text()
    assert "kubectl create -n istio-system secret tls" in text
    assert "credentialName" in text


def test_a_large_folder_keeps_secrets_through_an_incremental_update(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from controlplane.sources import FolderSource

    monkeypatch.setenv("AMBIENT_FOLDER_THREAD_THRESHOLD", "0")  # the incremental path
    (tmp_path / "secret.yaml").write_text(tls_secret_yaml("shop-cert", "gw", CERT, KEY))
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: gw}\n")
    source = FolderSource(tmp_path)
    assert ("gw", "shop-cert") in source.load().secrets
    new_cert, new_key = make_leaf(CA, "shop.example.com")
    (tmp_path / "new.tmp").write_text(tls_secret_yaml("shop-cert", "gw", new_cert, new_key))
    (tmp_path / "new.tmp").replace(tmp_path / "secret.yaml")
    (tmp_path / "other.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    state = source._poll()
    assert state.secrets[("gw", "shop-cert")].certificate_chain == new_cert


def test_annotations_are_not_kept_they_may_copy_the_key() -> None:
    text = tls_secret_yaml("shop-cert", "gw", CERT, KEY).replace(
        "metadata: {name: shop-cert, namespace: gw}",
        "metadata:\n  name: shop-cert\n  namespace: gw\n  labels: {app: shop}\n"
        "  annotations: {kubectl.kubernetes.io/last-applied-configuration: '" + b64(KEY) + "'}",
    )
    secret = load(text).secrets[("gw", "shop-cert")]
    assert secret.labels == {"app": "shop"} and not hasattr(secret, "annotations")
    assert b64(KEY) not in repr(secret)


def test_a_gateway_api_gateway_gets_the_secrets_of_the_gateways_namespace() -> None:
    web = EnvoyProxy(
        node_id="router~10.1.0.51~web-istio.web~web.svc.cluster.local",
        namespace="web",
        service_account="web-istio",
        gateway_name="web",
        kind="gateway",
        ip="10.1.0.51",
    )
    state = secrets_state(tls_secret_yaml("secure-cert", "web", CERT, KEY))
    assert sorted(credential_secrets(state, web)) == [
        "kubernetes://secure-cert",
        "kubernetes://web/secure-cert",
        "secure-cert",
    ]


def test_the_kubernetes_source_asks_for_secrets_without_tokens_and_helm_releases(
    serve: Any,  # noqa: F811 - the fixture imported above
) -> None:
    secrets_path = "/api/v1/secrets"
    body = {
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "7"},
        "items": [
            {
                "metadata": {"name": "shop-cert", "namespace": "gw", "resourceVersion": "5"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": b64(CERT), "tls.key": b64(KEY)},
            },
            {"metadata": {"name": "db", "namespace": "gw"}, "data": {"password": b64(b"x")}},
        ],
    }
    (kind,) = [k for k in DEFAULT_KINDS if k.kind == "Secret"]
    fixture, api = serve({(secrets_path, "list"): [Json(body)]})
    state = KubernetesSource(api, kinds=(kind,)).load()
    assert list(state.secrets) == [("gw", "shop-cert")] and not state.errors
    ((_, _, query),) = [r for r in fixture.requests if r[1] == secrets_path]
    assert query["fieldSelector"] == (
        "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"
    )
