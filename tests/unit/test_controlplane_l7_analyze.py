"""`ambient controlplane validate` on L7 objects: what waypoints and gateways do not do."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ambient.cli import root

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: backend}, {kind: ServiceEntry, name: ext}]
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, ["controlplane", "validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_custom_is_not_supported_and_fails_validation(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    code, out = run(str(tmp_path))
    assert code != 0, out
    assert "ext-authz" in out and "spec.action" in out
    assert "CUSTOM (external authorizer 'opa') is not supported" in out


def test_jwt_and_unknown_targets_are_warnings(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    _, out = run(str(tmp_path))
    assert "requestPrincipals: not supported at waypoints" in out
    assert "no Service demo/backend here" in out
    assert "no Gateway demo/waypoint here" in out
    assert "'ServiceEntry' targets are not supported" in out


ROUTING = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: demo}
spec:
  hosts: [backend]
  gateways: [mesh, missing-gateway]
  http:
  - route: [{destination: {host: backend}}]
    retries: {attempts: many}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: demo}
spec:
  host: backend
  trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hr, namespace: demo}
spec:
  parentRefs: [{kind: Service, group: '', name: backend}]
  rules: [{filters: [{type: ExtensionRef}], backendRefs: [{name: backend, port: 80}]}]
"""


def test_l7_translation_problems_are_reported(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(ROUTING)
    code, out = run(str(tmp_path))
    assert code != 0, out  # the VirtualService is skipped by waypoints: an error
    assert "spec.http[0].retries.attempts: must be an integer" in out
    assert "no Istio Gateway demo/missing-gateway here" in out
    assert "MUTUAL (client certificates from files or a Secret) is not supported" in out
    assert "ExtensionRef filters are not supported" in out
    assert "no Service demo/backend here" in out


def test_https_certificates_without_their_secret_are_warned_about(tmp_path: Path) -> None:
    from tests.unit.test_controlplane_l7_ingress import API, GATEWAY

    (tmp_path / "g.yaml").write_text(GATEWAY + "---" + API)
    _, out = run(str(tmp_path))
    assert "no TLS Secret shop-cert here" in out  # no gateway pod: any namespace would do
    assert "no TLS Secret web/secure-cert here" in out
