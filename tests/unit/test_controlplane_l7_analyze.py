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
