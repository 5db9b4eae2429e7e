"""Envoy itself validates the L7 translations of rbac.py (``envoy --mode validate``).

The RBAC filters of policies using every field sit in an HTTP connection manager
before the router; Envoy must accept the result. About a second per run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambient.errors import AmbientError
from bench.envoy.proxy import envoy_argv, envoy_binary
from controlplane.envoy.bootstrap import HCM, ROUTER, as_json
from controlplane.envoy.rbac import PeerIdentity, build_rbac_filters
from controlplane.model import AuthorizationPolicy, Severity
from controlplane.sources.decode import decode

POLICIES = """
- action: DENY
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules:
  - to: [{operation: {methods: [POST, DELETE], notPaths: ['/public/*'], ports: ['80']}}]
    when:
    - {key: 'request.headers[x-debug]', values: ['*'], notValues: [disabled]}
    - {key: destination.ip, values: [10.96.0.0/12]}
    - {key: connection.sni, values: ['*.local']}
- action: ALLOW
  targetRefs: [{kind: Service, name: backend}]
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/demo/sa/frontend, '*/sa/admin', 'cluster.local/*', '*']
        notPrincipals: [cluster.local/ns/demo/sa/bad]
        namespaces: [demo, 'team-*']
        notNamespaces: [kube-system]
        ipBlocks: [10.0.0.0/8, 'fd00::/64']
        notIpBlocks: [10.9.9.9]
        remoteIpBlocks: [192.168.0.0/16]
        notRemoteIpBlocks: [192.168.1.1]
        trustDomains: [cluster.local]
        requestPrincipals: ['*']
    - source: {notRequestPrincipals: ['*'], serviceAccounts: [frontend, other/client]}
    to:
    - operation:
        hosts: [backend, '*.example.com', '*']
        notHosts: [internal.example.com]
        methods: [GET, HEAD]
        paths: [/exact, /api/*, '*.html', '*']
        notPorts: ['9090']
    when:
    - {key: source.ip, values: [10.0.0.1]}
    - {key: remote.ip, notValues: [10.0.0.2]}
    - {key: source.namespace, values: [demo]}
    - {key: source.principal, values: [cluster.local/ns/demo/sa/x]}
    - {key: source.serviceAccount, values: [demo/x]}
    - {key: destination.port, values: ['80', '8080']}
    - {key: 'request.auth.claims[groups]', values: [admins]}
  - {}
- action: AUDIT
  targetRefs: [{kind: Gateway, name: waypoint}]
  rules: [{to: [{operation: {paths: [/audit]}}]}]
- action: ALLOW
  targetRefs: [{kind: Gateway, name: waypoint}]
  metadata: {annotations: {istio.io/dry-run: 'true'}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


def policies() -> list[AuthorizationPolicy]:
    out = []
    for i, spec in enumerate(yaml.safe_load(POLICIES)):
        meta = {"name": f"p{i}", "namespace": "demo", **spec.pop("metadata", {})}
        decoded = decode(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": meta,
                "spec": spec,
            }
        )
        assert not [p for p in decoded.problems if p.severity is Severity.ERROR], decoded.problems
        assert isinstance(decoded.obj, AuthorizationPolicy)
        out.append(decoded.obj)
    return out


def hcm_listener(
    name: str, port: int, http_filters: list[dict[str, Any]], route_config: dict[str, Any]
) -> dict[str, Any]:
    """A listener on 127.0.0.1 with an HTTP connection manager: ``http_filters`` then
    the router."""
    manager = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": route_config,
        "http_filters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


DIRECT_OK = {
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
        }
    ]
}


def envoy_validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` of ``config``; skips when the binary cannot run."""
    try:
        binary = envoy_binary()
        subprocess.run([str(binary), "--version"], capture_output=True, timeout=30, check=True)
    except (AmbientError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the envoy binary cannot run here: {err}")
    path.write_text(json.dumps(config))
    return subprocess.run(
        envoy_argv(path, concurrency=1, mode="validate"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rbac_bootstrap() -> dict[str, Any]:
    listeners = []
    for index, (peer, port) in enumerate(
        [(PeerIdentity.FILTER_STATE, None), (PeerIdentity.TLS, 80)]
    ):
        filters = [as_json(f) for f in build_rbac_filters(policies(), port=port, peer=peer)]
        assert len(filters) == 3
        listeners.append(hcm_listener(f"rbac{index}", 21000 + index, filters, DIRECT_OK))
    return {"static_resources": {"listeners": listeners}}


@pytest.mark.timeout(120)
def test_envoy_accepts_rbac_filters(tmp_path: Path) -> None:
    done = envoy_validate(rbac_bootstrap(), tmp_path / "rbac.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


@pytest.mark.timeout(120)
def test_rbac_validation_can_fail(tmp_path: Path) -> None:
    """The check is real: a principal regex RE2 refuses fails validation."""
    config = rbac_bootstrap()
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    rules = manager["typed_config"]["http_filters"][2]["typed_config"]["rules"]
    rules["policies"]["broken"] = {
        "permissions": [{"any": True}],
        "principals": [
            {"header": {"name": "x", "string_match": {"safe_regex": {"regex": "(?!a)"}}}}
        ],
    }
    done = envoy_validate(config, tmp_path / "broken.json")
    assert done.returncode != 0
