"""Translation to the workload API, table-driven from YAML to the messages istiod sends."""

# ruff: noqa: E501  (the case tables keep one YAML case per line, which reads best)

from __future__ import annotations

import base64
import ipaddress
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from api.messages import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, security, workload
from controlplane.sources import FolderSource
from controlplane.workloadapi import MeshConfig, Snapshot, diff, translate

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata:
  name: backend-v1
  namespace: demo
  labels: {app: backend, version: v1}
spec:
  nodeName: node1
  serviceAccountName: backend
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status:
  podIP: 10.244.1.5
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: demo, labels: {app: frontend}}
spec: {nodeName: node2, serviceAccountName: frontend}
status: {podIP: 10.244.2.7, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9000}
"""

_BYTE_FIELDS = {"address", "addresses"}


def readable(value: Any, key: str = "") -> Any:
    """A message as a dict with raw address bytes shown as IP text."""
    if isinstance(value, dict):
        return {k: readable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v, key) for v in value]
    if key in _BYTE_FIELDS and isinstance(value, str):
        return str(ipaddress.ip_address(base64.b64decode(value)))
    return value


def as_dict(message: Any) -> Any:
    return readable(json_format.MessageToDict(message, preserving_proto_field_name=True))


def snapshot(tmp_path: Path, extra: str = "", mesh: MeshConfig | None = None) -> Snapshot:
    (tmp_path / "cluster.yaml").write_text(BASE + "---\n" + textwrap.dedent(extra))
    state = FolderSource(tmp_path).load()
    assert state.errors == (), [str(e) for e in state.errors]
    return translate(state, mesh)


def wl_of(snap: Snapshot, namespace: str, name: str, cluster: str = "Kubernetes") -> Any:
    address = snap.addresses.get(f"{cluster}//Pod/{namespace}/{name}")
    return None if address is None else address.workload


def policies_of(snap: Snapshot, namespace: str, name: str) -> list[str]:
    return list(wl_of(snap, namespace, name).authorization_policies)


# --- workloads ------------------------------------------------------------------------------


def test_enrolled_pod_becomes_an_hbone_workload(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    assert as_dict(wl_of(snap, "demo", "backend-v1")) == {
        "uid": "Kubernetes//Pod/demo/backend-v1",
        "name": "backend-v1",
        "namespace": "demo",
        "addresses": ["10.244.1.5"],
        "tunnel_protocol": "HBONE",
        "service_account": "backend",
        "node": "node1",
        "canonical_name": "backend",
        "canonical_revision": "v1",
        "workload_type": "POD",
        "workload_name": "backend-v1",
        "services": {
            "demo/backend.demo.svc.cluster.local": {
                "ports": [
                    {"service_port": 80, "target_port": 8080},
                    {"service_port": 9000, "target_port": 9000},
                ]
            }
        },
        "cluster_id": "Kubernetes",
    }


POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {labels}
{meta}spec: {{nodeName: node1, containers: [{{name: c, ports: {ports}}}]}}
status: {status}
"""


def pod_yaml(
    name: str,
    *,
    namespace: str = "demo",
    labels: str = "{app: backend}",
    status: str = '{podIP: 10.244.1.9, conditions: [{type: Ready, status: "True"}]}',
    ports: str = "[{name: http, containerPort: 8080}]",
    meta: str = "",
) -> str:
    return POD.format(
        name=name, namespace=namespace, labels=labels, status=status, ports=ports, meta=meta
    )


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (pod_yaml("opted-out", labels="{app: backend, istio.io/dataplane-mode: none}"),
         {"tunnel_protocol": 0, "status": 0}),
        (pod_yaml("outside", namespace="legacy"), {"tunnel_protocol": 0}),
        (pod_yaml("pod-label", namespace="legacy",
                  labels="{app: x, istio.io/dataplane-mode: ambient}"),
         {"tunnel_protocol": 1}),
        (pod_yaml("not-ready", status='{podIP: 10.244.1.9, conditions: [{type: Ready, status: "False"}]}'),
         {"status": 1}),
        (pod_yaml("running-no-conditions", status="{podIP: 10.244.1.9, phase: Running}"),
         {"status": 0}),
        (pod_yaml("terminating", meta="  deletionTimestamp: '2026-01-01T00:00:00Z'\n"),
         {"status": 1}),
        (pod_yaml("dual", status="{podIP: 10.244.1.9, podIPs: [{ip: 10.244.1.9}, {ip: 'fd00::9'}]}"),
         {"addresses": [bytes([10, 244, 1, 9]), ipaddress.ip_address("fd00::9").packed]}),
        (pod_yaml("web-7d4b9-x2x", labels="{pod-template-hash: 7d4b9}",
                  meta="  ownerReferences: [{kind: ReplicaSet, name: web-7d4b9, controller: true}]\n"),
         {"workload_name": "web", "canonical_name": "web", "canonical_revision": "latest"}),
        (pod_yaml("k8s-labels", labels="{app.kubernetes.io/name: shop, app.kubernetes.io/version: '2'}"),
         {"canonical_name": "shop", "canonical_revision": "2"}),
        (pod_yaml("nightly-28912345-abc", labels="{}",
                  meta="  ownerReferences: [{kind: Job, name: nightly-28912345, controller: true}]\n"),
         {"workload_name": "nightly"}),
        (pod_yaml("no-http-port", ports="[]"),
         {"services": {"demo/backend.demo.svc.cluster.local": [(9000, 9000)]}}),
        (pod_yaml("istio-cni", namespace="legacy", meta="  annotations: {ambient.istio.io/redirection: enabled}\n"),
         {"tunnel_protocol": 1, "native_tunnel": False}),
        (pod_yaml("native", namespace="legacy", labels="{networking.istio.io/tunnel: 'h3,http'}"),
         {"tunnel_protocol": 1, "native_tunnel": True}),
    ],
    ids=[
        "opted-out", "namespace-not-enrolled", "pod-label-enrolls", "not-ready",
        "no-conditions", "terminating", "dual-stack", "deployment-name", "k8s-labels",
        "cronjob-name", "named-port-unresolved", "istio-cni-redirected", "native-tunnel",
    ],
)  # fmt: skip
def test_pod_cases(tmp_path: Path, pod: str, expected: dict[str, Any]) -> None:
    name = pod.split("name: ", 1)[1].split("\n", 1)[0]
    namespace = pod.split("namespace: ", 1)[1].split("\n", 1)[0]
    msg = wl_of(snapshot(tmp_path, pod), namespace, name)
    assert msg is not None
    for field, value in expected.items():
        if field == "services":
            got = {
                k: [(p.service_port, p.target_port) for p in v.ports]
                for k, v in msg.services.items()
            }
            assert got == value
        else:
            assert getattr(msg, field) == value, field


def test_excluded_namespaces_are_never_hbone(tmp_path: Path) -> None:
    """A labelled pod in an excluded namespace stays plain TCP (the agents never capture it)."""
    pod = pod_yaml(
        "coredns", namespace="kube-system", labels="{app: dns, istio.io/dataplane-mode: ambient}"
    )
    default = wl_of(snapshot(tmp_path, pod), "kube-system", "coredns")
    assert default is not None
    assert default.tunnel_protocol == workload.NONE
    opened = snapshot(tmp_path, pod, MeshConfig(excluded_namespaces=frozenset()))
    assert wl_of(opened, "kube-system", "coredns").tunnel_protocol == workload.HBONE
    # The list is the mesh's: any namespace can be excluded, enrolled ones included.
    closed = snapshot(tmp_path, mesh=MeshConfig(excluded_namespaces=frozenset({"demo"})))
    assert wl_of(closed, "demo", "backend-v1").tunnel_protocol == workload.NONE


@pytest.mark.parametrize(
    "status",
    ["{}", "{phase: Pending}", "{podIP: 10.244.1.9, phase: Succeeded}", "{podIP: 10.244.1.9, phase: Failed}"],
    ids=["no-ip", "pending-no-ip", "succeeded", "failed"],
)  # fmt: skip
def test_pods_without_ip_or_finished_are_not_sent(tmp_path: Path, status: str) -> None:
    snap = snapshot(tmp_path, pod_yaml("gone", status=status))
    assert wl_of(snap, "demo", "gone") is None
    assert wl_of(snap, "demo", "backend-v1") is not None


def test_mesh_config_shapes_uid_trust_domain_and_hostnames(tmp_path: Path) -> None:
    mesh = MeshConfig(cluster_id="lab1", trust_domain="example.org", domain_suffix="corp")
    snap = snapshot(tmp_path, mesh=mesh)
    msg = wl_of(snap, "demo", "backend-v1", cluster="lab1")
    assert msg.trust_domain == "example.org"
    assert list(msg.services) == ["demo/backend.demo.svc.corp"]
    assert "demo/backend.demo.svc.corp" in snap.addresses
    assert wl_of(snapshot(tmp_path), "demo", "backend-v1").trust_domain == ""


# --- services --------------------------------------------------------------------------------


def test_service_message(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    assert as_dict(snap.addresses["demo/backend.demo.svc.cluster.local"].service) == {
        "name": "backend",
        "namespace": "demo",
        "hostname": "backend.demo.svc.cluster.local",
        "addresses": [{"address": "10.96.0.10"}],
        "ports": [
            {"service_port": 80, "app_protocol": "HTTP11"},
            {"service_port": 9000, "target_port": 9000},
        ],
    }


SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, selector: {app: backend}, ports: [{port: 7000, targetPort: 7070, name: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: demo}
spec: {type: ExternalName}
---
apiVersion: v1
kind: Service
metadata: {name: elsewhere, namespace: legacy}
spec: {clusterIP: 10.96.0.12, selector: {app: backend}, ports: [{port: 80}]}
"""


def test_service_variants(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, SERVICES)
    headless = snap.addresses["demo/headless.demo.svc.cluster.local"].service
    assert list(headless.addresses) == []
    assert headless.ports[0].app_protocol == workload.GRPC
    assert "demo/manual.demo.svc.cluster.local" in snap.addresses
    assert not any("external" in k for k in snap.addresses)
    services = wl_of(snap, "demo", "backend-v1").services
    assert sorted(services) == [
        "demo/backend.demo.svc.cluster.local",
        "demo/headless.demo.svc.cluster.local",
    ]
    assert [(p.service_port, p.target_port) for p in services[
        "demo/headless.demo.svc.cluster.local"].ports] == [(7000, 7070)]  # fmt: skip
    assert list(wl_of(snap, "demo", "frontend").services) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("trafficDistribution: PreferClose",
         {"load_balancing": {"routing_preference": ["NETWORK", "REGION", "ZONE", "SUBZONE"], "mode": "FAILOVER"}}),
        ("internalTrafficPolicy: Local",
         {"load_balancing": {"routing_preference": ["NODE"], "mode": "STRICT"}}),
        ("publishNotReadyAddresses: true", {"load_balancing": {"health_policy": "ALLOW_ALL"}}),
        ("ipFamilies: [IPv4, IPv6]", {"ip_families": "DUAL"}),
        ("ipFamilies: [IPv6]", {"ip_families": "IPV6_ONLY"}),
    ],
    ids=["prefer-close", "node-local", "publish-not-ready", "dual-stack", "ipv6-only"],
)  # fmt: skip
def test_service_traffic_settings(tmp_path: Path, spec: str, expected: dict[str, Any]) -> None:
    extra = f"""\
apiVersion: v1
kind: Service
metadata: {{name: tuned, namespace: demo}}
spec:
  clusterIP: 10.96.0.20
  ports: [{{name: dns, port: 53, protocol: UDP}}]
  {spec}
"""
    got = as_dict(snapshot(tmp_path, extra).addresses["demo/tuned.demo.svc.cluster.local"].service)
    assert got["ports"] == [{"service_port": 53, "target_port": 53}]
    assert {k: got[k] for k in expected} == expected
    assert not set(got) - {"name", "namespace", "hostname", "addresses", "ports", *expected}


def test_traffic_distribution_annotation(tmp_path: Path) -> None:
    extra = """\
apiVersion: v1
kind: Service
metadata: {name: tuned, namespace: demo, annotations: {networking.istio.io/traffic-distribution: PreferClose}}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
"""
    svc = snapshot(tmp_path, extra).addresses["demo/tuned.demo.svc.cluster.local"].service
    assert svc.load_balancing.mode == workload.LoadBalancing.FAILOVER


# --- authorization policies ----------------------------------------------------------------


def policy(name: str, spec: str, namespace: str = "demo", meta: str = "") -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}{meta}}}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec), "  ")
    )


AP_CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    (
        "principals-and-wildcards",
        """\
        selector: {matchLabels: {app: backend}}
        rules:
        - from:
          - source:
              principals: [cluster.local/ns/demo/sa/frontend, "spiffe://cluster.local/ns/x/sa/y", "cluster.local/ns/ops/*", "*/sa/admin", "*"]
              notNamespaces: [kube-*]
          to:
          - operation: {ports: ["8080", "9090"], notPorts: ["9091"]}
        """,
        {
            "name": "p", "namespace": "demo", "scope": "WORKLOAD_SELECTOR",
            "rules": [{"clauses": [
                {"matches": [{"destination_ports": [8080, 9090], "not_destination_ports": [9091]}]},
                {"matches": [{
                    "principals": [
                        {"exact": "cluster.local/ns/demo/sa/frontend"},
                        {"exact": "spiffe://cluster.local/ns/x/sa/y"},
                        {"prefix": "cluster.local/ns/ops/"},
                        {"suffix": "/sa/admin"},
                        {"presence": {}},
                    ],
                    "not_namespaces": [{"prefix": "kube-"}],
                }]},
            ]}],
        },
    ),
    (
        "namespace-scope-deny-ip-blocks",
        """\
        action: DENY
        rules:
        - from: [{source: {ipBlocks: [10.0.0.0/8, 192.168.1.7]}}, {source: {notIpBlocks: ["fd00::/64"]}}]
        """,
        {
            "name": "p", "namespace": "demo", "scope": "NAMESPACE", "action": "DENY",
            "rules": [{"clauses": [{"matches": [
                {"source_ips": [{"address": "10.0.0.0", "length": 8},
                                {"address": "192.168.1.7", "length": 32}]},
                {"not_source_ips": [{"address": "fd00::", "length": 64}]},
            ]}]}],
        },
    ),
    (
        "service-accounts",
        """\
        rules:
        - from: [{source: {serviceAccounts: [frontend, other/robot], notServiceAccounts: [demo/bad]}}]
        """,
        {
            "name": "p", "namespace": "demo", "scope": "NAMESPACE",
            "rules": [{"clauses": [{"matches": [{
                "service_accounts": [{"namespace": "demo", "serviceAccount": "frontend"},
                                     {"namespace": "other", "serviceAccount": "robot"}],
                "not_service_accounts": [{"namespace": "demo", "serviceAccount": "bad"}],
            }]}]}],
        },
    ),
    (
        "when-conditions",
        """\
        rules:
        - when:
          - {key: source.ip, values: [10.244.0.0/16]}
          - {key: source.namespace, notValues: [legacy]}
          - {key: source.principal, values: ["*"]}
          - {key: destination.port, values: ["8080"]}
          - {key: destination.ip, notValues: [10.96.0.10]}
        """,
        {
            "name": "p", "namespace": "demo", "scope": "NAMESPACE",
            "rules": [{"clauses": [
                {"matches": [{"source_ips": [{"address": "10.244.0.0", "length": 16}]}]},
                {"matches": [{"not_namespaces": [{"exact": "legacy"}]}]},
                {"matches": [{"principals": [{"presence": {}}]}]},
                {"matches": [{"destination_ports": [8080]}]},
                {"matches": [{"not_destination_ips": [{"address": "10.96.0.10", "length": 32}]}]},
            ]}],
        },
    ),
    (
        "allow-l7-rule-dropped",
        """\
        rules:
        - to: [{operation: {methods: [GET], ports: ["80"]}}]
        - from: [{source: {requestPrincipals: ["*"]}}]
        - when: [{key: "request.headers[x-user]", values: [a]}]
        - from: [{source: {namespaces: [demo]}}]
        """,
        {
            "name": "p", "namespace": "demo", "scope": "NAMESPACE",
            "rules": [{"clauses": [{"matches": [{"namespaces": [{"exact": "demo"}]}]}]}],
        },
    ),
    (
        "allow-only-l7-allows-nothing",
        """\
        rules:
        - to: [{operation: {paths: [/admin]}}]
        """,
        {"name": "p", "namespace": "demo", "scope": "NAMESPACE"},
    ),
    (
        "deny-l7-reduced-to-l4",
        """\
        action: DENY
        rules:
        - to: [{operation: {methods: [POST], ports: ["8080"]}}]
          from: [{source: {namespaces: [legacy], requestPrincipals: ["*"]}}]
        - to: [{operation: {paths: [/admin]}}]
          from: [{source: {principals: ["*/sa/intruder"]}}]
          when: [{key: "request.headers[x-evil]", values: ["1"]}]
        """,
        {
            "name": "p", "namespace": "demo", "scope": "NAMESPACE", "action": "DENY",
            "rules": [
                {"clauses": [
                    {"matches": [{"destination_ports": [8080]}]},
                    {"matches": [{"namespaces": [{"exact": "legacy"}]}]},
                ]},
                # L7-only parts become empty matches, which ztunnel skips: no effect.
                {"clauses": [
                    {"matches": [{}]},
                    {"matches": [{"principals": [{"suffix": "/sa/intruder"}]}]},
                    {"matches": [{}]},
                ]},
            ],
        },
    ),
    ("allow-all", "rules: [{}]\n", {"name": "p", "namespace": "demo", "scope": "NAMESPACE", "rules": [{}]}),
    ("allow-nothing", "{}\n", {"name": "p", "namespace": "demo", "scope": "NAMESPACE"}),
    ("audit-not-sent", "action: AUDIT\nrules: [{}]\n", None),
    ("custom-not-sent", "action: CUSTOM\nprovider: {name: ext}\nrules: [{}]\n", None),
    ("target-ref-not-sent", "targetRefs: [{kind: Service, group: '', name: backend}]\n", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in AP_CASES], ids=[c[0] for c in AP_CASES]
)
def test_authorization_policy_cases(
    tmp_path: Path, spec: str, expected: dict[str, Any] | None
) -> None:
    snap = snapshot(tmp_path, policy("p", spec))
    got = snap.authorizations.get("demo/p")
    assert (None if got is None else as_dict(got)) == expected


def test_authorization_scopes_and_workload_binding(tmp_path: Path) -> None:
    snap = snapshot(
        tmp_path,
        policy("mesh", "rules: [{}]\n", namespace="istio-system")
        + "---\n"
        + policy("ns", "rules: [{}]\n")
        + "---\n"
        + policy("b", "selector: {matchLabels: {app: backend}}\nrules: [{}]\n")
        + "---\n"
        + policy("b2", "selector: {matchLabels: {version: v1}}\naction: DENY\nrules: [{}]\n")
        + "---\n"
        + policy("audit", "selector: {matchLabels: {app: backend}}\naction: AUDIT\n")
        + "---\n"
        + policy("other-ns", "selector: {matchLabels: {app: backend}}\n", namespace="legacy")
        + "---\n"
        # Istio: a selector policy in the root namespace applies in every namespace
        + policy("root-sel", "selector: {matchLabels: {version: v1}}\n", namespace="istio-system"),
    )
    assert snap.authorizations["istio-system/mesh"].scope == security.GLOBAL
    assert snap.authorizations["demo/ns"].scope == security.NAMESPACE
    assert snap.authorizations["demo/b"].scope == security.WORKLOAD_SELECTOR
    assert policies_of(snap, "demo", "backend-v1") == [
        "demo/b",
        "demo/b2",
        "istio-system/root-sel",
    ]
    assert policies_of(snap, "demo", "frontend") == []


def test_dry_run_annotation(tmp_path: Path) -> None:
    meta = ", annotations: {istio.io/dry-run: 'true'}"
    snap = snapshot(tmp_path, policy("p", "action: DENY\nrules: [{}]\n", meta=meta))
    assert snap.authorizations["demo/p"].dry_run is True


# --- peer authentication -----------------------------------------------------------------


def peer(name: str, spec: str, namespace: str = "demo") -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )


MESH_STRICT = peer("default", "{mtls: {mode: STRICT}}", namespace="istio-system")
STATIC = "istio-system/istio_converted_static_strict"
BACKEND = "selector: {matchLabels: {app: backend}}"

PA_CASES: list[tuple[str, str, list[str], list[str]]] = [
    # (id, policies, backend-v1 lists, frontend lists)
    ("none", "", [], []),
    ("mesh-strict", MESH_STRICT, [STATIC], [STATIC]),
    ("mesh-permissive", peer("default", "{mtls: {mode: PERMISSIVE}}", "istio-system"), [], []),
    ("mesh-unset", peer("default", "{}", "istio-system"), [], []),
    ("namespace-strict", peer("ns", "{mtls: {mode: STRICT}}"), [STATIC], [STATIC]),
    ("namespace-permissive-over-mesh-strict",
     MESH_STRICT + peer("ns", "{mtls: {mode: PERMISSIVE}}"), [], []),
    ("namespace-unset-inherits-mesh", MESH_STRICT + peer("ns", "{}"), [STATIC], [STATIC]),
    ("other-namespace-strict", peer("ns", "{mtls: {mode: STRICT}}", "legacy"), [], []),
    ("workload-disable-over-namespace-strict",
     peer("ns", "{mtls: {mode: STRICT}}") + peer("be", f"{{{BACKEND}, mtls: {{mode: DISABLE}}}}"),
     [], [STATIC]),
    ("workload-strict", peer("be", f"{{{BACKEND}, mtls: {{mode: STRICT}}}}"), [STATIC], []),
    ("workload-strict-port-permissive",
     peer("be", f"{{{BACKEND}, mtls: {{mode: STRICT}}, portLevelMtls: {{8080: {{mode: PERMISSIVE}}}}}}"),
     ["demo/converted_peer_authentication_be"], []),
    ("workload-permissive-port-strict",
     peer("be", f"{{{BACKEND}, mtls: {{mode: PERMISSIVE}}, portLevelMtls: {{9000: {{mode: STRICT}}}}}}"),
     ["demo/converted_peer_authentication_be"], []),
    ("workload-unset-inherits-strict-port-disable",
     MESH_STRICT + peer("be", f"{{{BACKEND}, portLevelMtls: {{8080: {{mode: DISABLE}}}}}}"),
     ["demo/converted_peer_authentication_be"], [STATIC]),
    ("workload-strict-ports-strict",
     peer("be", f"{{{BACKEND}, mtls: {{mode: STRICT}}, portLevelMtls: {{8080: {{mode: STRICT}}}}}}"),
     [STATIC], []),
    ("selector-in-root-namespace-ignored",
     peer("be", f"{{{BACKEND}, mtls: {{mode: STRICT}}}}", "istio-system"), [], []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policies", "backend", "frontend"), [c[1:] for c in PA_CASES], ids=[c[0] for c in PA_CASES]
)
def test_peer_authentication_modes_and_scopes(
    tmp_path: Path, policies: str, backend: list[str], frontend: list[str]
) -> None:
    snap = snapshot(tmp_path, policies)
    assert policies_of(snap, "demo", "backend-v1") == backend
    assert policies_of(snap, "demo", "frontend") == frontend
    assert (STATIC in snap.authorizations) == bool(policies)


STATIC_DICT = {
    "name": "istio_converted_static_strict",
    "namespace": "istio-system",
    "scope": "WORKLOAD_SELECTOR",
    "action": "DENY",
    "rules": [{"clauses": [{"matches": [{"not_principals": [{"presence": {}}]}]}]}],
}


def test_static_strict_policy_message(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, MESH_STRICT)
    assert as_dict(snap.authorizations[STATIC]) == STATIC_DICT


NO_PRINCIPAL: dict[str, Any] = {"not_principals": [{"presence": {}}]}


@pytest.mark.parametrize(
    ("policies", "rules"),
    [
        (peer("be", f"{{{BACKEND}, mtls: {{mode: STRICT}}, portLevelMtls: {{8443: {{mode: DISABLE}}, 8080: {{mode: PERMISSIVE}}}}}}"),
         [{"clauses": [{"matches": [NO_PRINCIPAL]},
                       {"matches": [{"not_destination_ports": [8080]}]},
                       {"matches": [{"not_destination_ports": [8443]}]}]}]),
        (peer("be", f"{{{BACKEND}, mtls: {{mode: PERMISSIVE}}, portLevelMtls: {{9000: {{mode: STRICT}}, 9001: {{mode: STRICT}}, 8080: {{mode: DISABLE}}}}}}"),
         [{"clauses": [{"matches": [{**NO_PRINCIPAL, "destination_ports": [9000]}]}]},
          {"clauses": [{"matches": [{**NO_PRINCIPAL, "destination_ports": [9001]}]}]}]),
        (MESH_STRICT + peer("be", f"{{{BACKEND}, portLevelMtls: {{8080: {{mode: DISABLE}}, 9000: {{mode: STRICT}}}}}}"),
         [{"clauses": [{"matches": [{"not_destination_ports": [8080]}]},
                       {"matches": [NO_PRINCIPAL]}]}]),
        (MESH_STRICT + peer("be", f"{{{BACKEND}, mtls: {{mode: PERMISSIVE}}, portLevelMtls: {{9000: {{mode: STRICT}}}}}}"),
         [{"clauses": [{"matches": [{**NO_PRINCIPAL, "destination_ports": [9000]}]}]}]),
    ],
    ids=["strict-with-exceptions", "permissive-with-strict-ports", "unset-under-strict-mesh",
         "permissive-under-strict-mesh"],
)  # fmt: skip
def test_converted_port_level_policy(tmp_path: Path, policies: str, rules: list[Any]) -> None:
    snap = snapshot(tmp_path, policies)
    assert as_dict(snap.authorizations["demo/converted_peer_authentication_be"]) == {
        "name": "converted_peer_authentication_be",
        "namespace": "demo",
        "scope": "WORKLOAD_SELECTOR",
        "action": "DENY",
        "rules": rules,
    }
    assert policies_of(snap, "demo", "backend-v1") == ["demo/converted_peer_authentication_be"]


def test_versions_are_stable_and_diff_names_changes(tmp_path: Path) -> None:
    first = snapshot(tmp_path)
    again = snapshot(tmp_path)
    assert first.versions(ADDRESS_TYPE_URL) == again.versions(ADDRESS_TYPE_URL)
    assert diff(first.versions(ADDRESS_TYPE_URL), again.versions(ADDRESS_TYPE_URL)).updated == ()

    changed = snapshot(tmp_path, pod_yaml("new-pod") + "---\n" + policy("p", "rules: [{}]\n"))
    change = diff(first.versions(ADDRESS_TYPE_URL), changed.versions(ADDRESS_TYPE_URL))
    # The new pod is selected by the backend service, whose own message is unchanged.
    assert change.updated == ("Kubernetes//Pod/demo/new-pod",)
    assert change.removed == ()
    auth = diff(first.versions(AUTHORIZATION_TYPE_URL), changed.versions(AUTHORIZATION_TYPE_URL))
    assert auth.updated == ("demo/p",)

    back = diff(changed.versions(ADDRESS_TYPE_URL), first.versions(ADDRESS_TYPE_URL))
    assert (back.updated, back.removed) == ((), ("Kubernetes//Pod/demo/new-pod",))
