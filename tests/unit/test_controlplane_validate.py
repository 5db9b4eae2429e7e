"""`ambient controlplane validate`: every problem named, warnings, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ambient.cli import main, root

GOOD = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: demo, labels: {app: backend}}
status: {podIP: 10.244.1.5}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/frontend]}}]
    to: [{operation: {ports: ["8080"]}}]
"""

BAD_POLICY = """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: demo}
spec:
  action: PERMIT
  rules:
  - from: [{source: {principals: ["a*b"], ipBlocks: [300.1.1.1/8]}}]
    to: [{operation: {ports: [http]}}]
    when: [{key: request.color, values: [red]}]
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, ["controlplane", "validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_valid_files_exit_zero(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(GOOD)
    code, out = run(str(tmp_path))
    assert code == 0, out
    assert "0 error(s), 0 warning(s); valid: 1 namespaces, 1 pods, 1 authorization policies" in out


def test_every_problem_is_reported_with_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + "---\n" + BAD_POLICY)
    code, out = run(str(path))
    assert code == 1
    prefix = f"{path}:20: AuthorizationPolicy/demo/broken: "
    for expected in (
        "spec.action: 'PERMIT' is not one of ALLOW, DENY, AUDIT, CUSTOM",
        "spec.rules[0].from[0].source.principals[0]: 'a*b': '*' is allowed only alone",
        "spec.rules[0].from[0].source.ipBlocks[0]: '300.1.1.1/8' is not an IP address",
        "spec.rules[0].to[0].operation.ports[0]: must be a port number 1-65535, not 'http'",
        "spec.rules[0].when[0].key: 'request.color' is not a supported condition key",
    ):
        assert prefix + expected in out, out


def test_json_output(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_POLICY)
    code, out = run("-o", "json", str(tmp_path))
    rows = json.loads(out)
    assert code == 1
    assert {r["field"] for r in rows} >= {"spec.action", "spec.rules[0].when[0].key"}
    assert all(r["severity"] == "error" and r["line"] == 1 for r in rows)


def test_ignored_objects_are_warnings_and_do_not_fail(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: ingress, namespace: istio-system}\n"
        "---\napiVersion: v1\nkind: Namespace\n"
        "metadata: {name: legacy, labels: {istio-injection: enabled}}\n"
    )
    code, out = run(str(tmp_path))
    assert code == 0
    assert "gw.yaml:1: warning: ServiceEntry/istio-system/ingress: kind: ServiceEntries" in out
    assert "gw.yaml:5: warning: Namespace/legacy: metadata.labels.istio-injection" in out
    assert "istio.io/dataplane-mode=ambient" in out
    code, out = run("--quiet", str(tmp_path))
    assert (code, out) == (0, "")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        (b"{{ .Values.image }}\n", "invalid YAML"),
        (b"replicas: 3\nimage: nginx\n", "not a Kubernetes object: no apiVersion and kind"),
        (b"just a sentence\n", "not a Kubernetes object: expected a mapping"),
    ],
    ids=["binary", "template", "fragment", "scalar"],
)
def test_garbage_is_a_clear_error_never_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    (tmp_path / "x.yaml").write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["controlplane", "validate", str(tmp_path)])
    captured = capsys.readouterr()
    assert exc.value.code == 1
    assert expected in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_missing_and_empty_paths(tmp_path: Path) -> None:
    code, out = run(str(tmp_path / "missing"), str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'missing'}: does not exist" in out
    assert f"{tmp_path}: warning: holds no .yaml, .yml or .json files" in out


def test_what_ztunnel_ignores_in_policies_is_explained(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: demo}
spec:
  rules:
  - to: [{operation: {methods: [GET]}}]
  - when: [{key: "request.headers[x-a]", values: [b]}]
  - from: [{source: {namespaces: [demo]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-l7, namespace: demo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin], ports: ["80"]}}]
    from: [{source: {principals: ["spiffe://td/ns/a/sa/b"]}}]
  - to: [{operation: {methods: [PUT]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec: {selector: {matchLabels: {app: x}}, mtls: {mode: STRICT}}
"""
    )
    code, out = run(str(tmp_path))
    assert code == 0, out
    for expected in (
        "p.yaml:1: warning: AuthorizationPolicy/demo/l7: spec.rules[0]: uses L7 attributes "
        "(methods) that ztunnel cannot see: ztunnel drops this rule (it allows nothing)",
        "AuthorizationPolicy/demo/l7: spec.rules[1]: uses L7 attributes (request.headers[x-a])",
        "p.yaml:10: warning: AuthorizationPolicy/demo/deny-l7: spec.rules[0]: uses L7 attributes "
        "(paths) that ztunnel cannot see: ztunnel enforces its L4 part only (denies more)",
        "p.yaml:10: warning: AuthorizationPolicy/demo/deny-l7: spec.rules[1]: uses L7 attributes "
        "(methods) that ztunnel cannot see: without them the rule matches nothing",
        "spec.rules[0].from[0].source.principals[0]: 'spiffe://td/ns/a/sa/b' never matches",
        "p.yaml:20: warning: PeerAuthentication/istio-system/root-selector: spec.selector: "
        "a selector policy in the root namespace (istio-system) is ignored",
    ):
        assert expected in out, out
    assert "spec.rules[2]" not in out


CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: be, namespace: demo, labels: {app: be}}
spec: {nodeName: node1, containers: [{name: a, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Service
metadata: {name: be, namespace: demo}
spec: {clusterIP: 10.96.0.3, selector: {app: be}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: demo}
status: {podIP: 999.1.1.1}
"""


def test_resources_command_shows_what_ztunnel_would_get(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(
        root, ["controlplane", "resources", "--cluster-id", "lab", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("note: 1 object(s) rejected")
    assert lines[2].split() == [
        "service",
        "demo/be.demo.svc.cluster.local",
        "10.96.0.3",
        "ports=80->named",
    ]
    assert lines[3].split()[:6] == [
        "workload",
        "lab//Pod/demo/be",
        "10.244.1.5",
        "HBONE",
        "node=node1",
        "sa=default",
    ]
    static = "istio-system/istio_converted_static_strict"
    assert lines[4].split() == ["authorization", static, "WORKLOAD_SELECTOR", "DENY", "rules=1"]

    result = CliRunner().invoke(root, ["controlplane", "resources", "-o", "json", str(tmp_path)])
    data = json.loads(result.output.split("\n", 1)[1])
    wl = data["addresses"]["Kubernetes//Pod/demo/be"]["workload"]
    assert wl["addresses"] == ["10.244.1.5"]
    assert wl["services"]["demo/be.demo.svc.cluster.local"]["ports"] == [
        {"servicePort": 80, "targetPort": 8080}
    ]
    assert list(data["authorizations"]) == ["istio-system/istio_converted_static_strict"]


def test_standard_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(root, ["controlplane", "validate", "-"], input=BAD_POLICY)
    assert result.exit_code == 1
    assert "<stdin>:1: AuthorizationPolicy/demo/broken: spec.action" in result.output


ODD = """\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop, labels: {app: web}}
status: {podIP: 10.244.1.6}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec: {selector: {matchLabels: {app: wbe}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-first, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-second, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"""


def test_cross_object_analysis(tmp_path: Path) -> None:
    (tmp_path / "odd.yaml").write_text(ODD)
    code, out = run(str(tmp_path))
    assert code == 0, out
    for expected in (
        "odd.yaml:12: warning: Service/shop/web: spec.ports[0].targetPort: no container port "
        "named 'http' in pod(s) b; those pods get no traffic on this port",
        "odd.yaml:17: warning: AuthorizationPolicy/shop/typo: spec.selector: selects no pod "
        "in namespace shop (app=wbe)",
        "odd.yaml:27: warning: PeerAuthentication/shop/b-second: another namespace-wide "
        "PeerAuthentication exists in shop; only one applies (here a-first",
        "odd.yaml:1: warning: Pod/shop/a: metadata.namespace: no Namespace object 'shop' here; "
        "its pods (2) are enrolled only by their own istio.io/dataplane-mode label",
    ):
        assert expected in out, out
