"""The Helm chart and the plain manifests it renders (Helm's own engine, offline).

The manifests must be the chart's render, validate against the newest three Kubernetes
minor versions' schemas, run commands and flags our CLI has, and keep the properties
the design asks of them (host network, pinned bpffs, least privilege, drain time, ...).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

import pytest

from deploy import checks

pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")
pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")


@pytest.fixture(scope="module")
def committed() -> list[dict[str, Any]]:
    return checks.objects_of(checks.MANIFEST.read_text())


@pytest.fixture(scope="module")
def default_render() -> list[dict[str, Any]]:
    return checks.objects_of(checks.manifest_text())


@pytest.fixture(scope="module")
def custom_render() -> list[dict[str, Any]]:
    return checks.objects_of(checks.manifest_text(checks.NON_DEFAULT_VALUES))


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}


def test_committed_manifests_are_the_charts_render() -> None:
    assert checks.MANIFEST.read_text() == checks.manifest_text(checks.manifest_values()), (
        "deploy/manifests/ambient-node.yaml is stale: run 'python -m deploy.checks render'"
    )


def test_last_three_kubernetes_minors() -> None:
    versions = checks.kubernetes_versions()
    assert len(versions) == 3
    minors = [tuple(int(p) for p in v.split(".")[:2]) for v in versions]
    assert minors == sorted(minors) and len(set(minors)) == 3


@pytest.mark.parametrize("render", ["committed", "default_render", "custom_render"])
def test_every_object_validates_strictly(render: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(render)
    assert len(objects) >= 10
    assert checks.schema_problems(objects, checks.kubernetes_versions()) == []


def test_schema_check_catches_a_wrong_field(committed: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(by_kind(committed, "DaemonSet", "ambient-node"))
    broken["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailabel"] = 1
    problems = checks.schema_problems([broken], ["1.37.0"])
    assert any("maxUnavailabel" in p for p in problems), problems
    wrong_type = copy.deepcopy(by_kind(committed, "Service", "ambient-controlplane"))
    wrong_type["spec"]["ports"][0]["port"] = "fifteen"
    assert checks.schema_problems([wrong_type], ["1.37.0"]), "a string port passed"


@pytest.mark.parametrize("render", ["committed", "custom_render"])
def test_manifests_run_commands_and_flags_our_cli_has(
    render: str, request: pytest.FixtureRequest
) -> None:
    commands = list(checks.container_commands(request.getfixturevalue(render)))
    assert {c.container for c in commands} == {"agent", "ztunnel", "controlplane"}
    for command in commands:
        assert checks.flag_problems(command) == []


def test_flag_check_catches_a_flag_that_does_not_exist() -> None:
    bad = checks.ContainerCommand(
        "DaemonSet/x", "ztunnel", ("ambient", "ztunnel", "run", "--nope=1")
    )
    assert checks.flag_problems(bad) == ["DaemonSet/x container ztunnel: run has no option --nope"]
    missing = checks.ContainerCommand("DaemonSet/x", "agent", ("ambient", "agent", "fly"))
    assert "no command 'fly'" in checks.flag_problems(missing)[0]


def test_node_daemonset_shape(committed: list[dict[str, Any]]) -> None:
    ds = by_kind(committed, "DaemonSet", "ambient-node")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert pod["terminationGracePeriodSeconds"] >= 30
    bpffs = next(v for v in pod["volumes"] if v["name"] == "bpffs")
    assert bpffs["hostPath"]["path"] == "/sys/fs/bpf"
    token = next(v for v in pod["volumes"] if v["name"] == "istio-token")
    (source,) = token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "istio-ca"

    agent, ztunnel = containers(ds)["agent"], containers(ds)["ztunnel"]
    assert agent["command"] == ["ambient", "agent", "run"]
    assert ztunnel["command"] == ["ambient", "ztunnel", "run"]
    assert any(m["mountPath"] == "/sys/fs/bpf" for m in agent["volumeMounts"])
    assert not any(m["name"] == "bpffs" for m in ztunnel["volumeMounts"])
    assert any(m["mountPath"] == "/var/run/secrets/tokens" for m in ztunnel["volumeMounts"])
    for container, caps in (
        (agent, {"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"}),
        (ztunnel, {"NET_ADMIN", "NET_RAW"}),
    ):
        sc = container["securityContext"]
        assert sc.get("privileged", False) is False
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"]["add"]) == caps
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["livenessProbe"]
    assert ztunnel["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    # control-plane mode: the Service, the root it trusts, the token it shows
    assert "--xds-address=ambient-controlplane.istio-system.svc:15012" in ztunnel["args"]
    mounted = {m["mountPath"] for m in ztunnel["volumeMounts"]}
    for arg, mount in (
        ("--xds-root-cert=", "/var/run/secrets/ambient/ca-root"),
        ("--auth-token-file=", "/var/run/secrets/tokens"),
    ):
        (path,) = [a.removeprefix(arg) for a in ztunnel["args"] if a.startswith(arg)]
        assert path.startswith(mount + "/") and mount in mounted


def test_control_plane_shape(committed: list[dict[str, Any]]) -> None:
    deploy = by_kind(committed, "Deployment", "ambient-controlplane")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (cp,) = containers(deploy).values()
    assert "--kubernetes" in cp["args"]
    assert "--trusted-node-account=istio-system/ztunnel" in cp["args"]
    svc = by_kind(committed, "Service", "ambient-controlplane")
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [15012, 15014]
    assert by_kind(committed, "PodDisruptionBudget", "ambient-controlplane")
    role = by_kind(committed, "ClusterRole", "ambient-controlplane")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for resource in ("pods", "namespaces", "services", "serviceaccounts"):
        assert ("", resource, "watch") in granted
    assert ("discovery.k8s.io", "endpointslices", "list") in granted
    assert ("security.istio.io", "authorizationpolicies", "watch") in granted
    assert ("networking.istio.io", "virtualservices", "watch") in granted
    assert ("gateway.networking.k8s.io", "httproutes", "watch") in granted
    assert ("authentication.k8s.io", "tokenreviews", "create") in granted
    assert not any(
        verb in {"create", "update", "delete", "patch"}
        for g, r, verb in granted
        if r != "tokenreviews"
    )
    # no private key in the committed manifests: the CA Secret is the operator's
    assert not [o for o in committed if o["kind"] == "Secret"]


def test_values_reach_the_objects(custom_render: list[dict[str, Any]]) -> None:
    ds = by_kind(custom_render, "DaemonSet", "ambient-node")
    agent, ztunnel = containers(ds)["agent"], containers(ds)["ztunnel"]
    assert agent["image"] == "registry.example/mesh/ambient-node@sha256:" + "ab" * 32
    assert "--exclude-cidr=169.254.169.254/32" in agent["args"]
    assert "--exclude-port=9100" in agent["args"]
    assert "--exclude-inbound-port=9100" in agent["args"]
    excluded = [a for a in agent["args"] if a.startswith("--exclude-namespace=")]
    assert excluded == [
        f"--exclude-namespace={ns}" for ns in ("kube-system", "infra", "istio-system")
    ]
    assert "--trust-domain=example.org" in ztunnel["args"]
    assert "--log-level=debug" in ztunnel["args"]
    assert ds["spec"]["template"]["spec"]["nodeSelector"]["mesh"] == "on"
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    deploy = by_kind(custom_render, "Deployment", "ambient-controlplane")
    assert deploy["spec"]["replicas"] == 2
    (cp,) = containers(deploy).values()
    assert "--cluster-id=east-1" in cp["args"]
    ca = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "ca")
    assert ca["secret"]["secretName"] == "corp-intermediate-ca"


def test_the_mesh_namespace_and_kube_system_are_excluded_by_default(
    default_render: list[dict[str, Any]],
) -> None:
    agent = containers(by_kind(default_render, "DaemonSet", "ambient-node"))["agent"]
    excluded = [a for a in agent["args"] if a.startswith("--exclude-namespace=")]
    assert excluded == ["--exclude-namespace=kube-system", "--exclude-namespace=istio-system"]
    # given once, the flag replaces the agent's defaults: the list must be whole
    alone = checks.objects_of(checks.manifest_text({"excludedNamespaces": []}))
    agent = containers(by_kind(alone, "DaemonSet", "ambient-node"))["agent"]
    assert [a for a in agent["args"] if "exclude-namespace" in a] == [
        "--exclude-namespace=istio-system"
    ]


def test_generated_ca_is_one_the_control_plane_accepts(
    default_render: list[dict[str, Any]],
) -> None:
    from controlplane.ca.authority import CertificateAuthority

    secret = by_kind(default_render, "Secret", "ambient-ca")
    key = base64.b64decode(secret["data"]["ca-key.pem"])
    cert = base64.b64decode(secret["data"]["ca-cert.pem"])
    ca = CertificateAuthority.from_pem(key, cert)
    root = by_kind(default_render, "ConfigMap", "ambient-ca-root")["data"]["root-cert.pem"]
    assert ca.root_pem.strip() == root.strip()
    assert ca.root.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)


def test_notes_say_how_to_enroll() -> None:
    text = checks.notes()
    assert "kubectl label namespace <namespace> istio.io/dataplane-mode=ambient" in text
    assert "ambient agent check" in text
    assert "Never captured, even if labelled: kube-system, istio-system" in text


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"trustDomian": "example.org"}, "trustDomian"),
        ({"logLevel": "verbose"}, "/logLevel"),
        ({"capture": {"excludePorts": [70000]}}, "/capture/excludePorts/0"),
        ({"capture": {"excludeCIDRs": ["10.0.0.0"]}}, "/capture/excludeCIDRs/0"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"excludedNamespaces": ["Kube_System"]}, "/excludedNamespaces/0"),
        ({"node": {"ztunnel": {"capabilities": ["net_raw"]}}}, "/node/ztunnel/capabilities/0"),
    ],
)
def test_bad_values_are_refused_naming_the_field(values: dict[str, Any], named: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError) as err:
        checks.render_chart(values)
    assert named in str(err.value)


def test_helm_lint_strict_is_clean_and_catches_bad_values() -> None:
    assert checks.helm_lint_problems() == []
    assert checks.helm_lint_problems(checks.NON_DEFAULT_VALUES) == []
    assert any("/logLevel" in p for p in checks.helm_lint_problems({"logLevel": "loud"}))
