"""``ambient lab apply -f`` without a lab: parsing, images, placement, names, errors, plans."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ambient.cli import root as cli_root
from controlplane.model import FrozenMap
from controlplane.sources.documents import parse_text
from lab.manifests import images, parse, planner
from lab.manifests.errors import ManifestError
from lab.manifests.model import ConfigManifest, NamespaceManifest, WorkloadManifest
from lab.manifests.planner import (
    AddNamespace,
    AddPod,
    AddService,
    Applied,
    LabView,
    PodView,
    RemoveFile,
    RemoveNamespace,
    RemovePod,
    RemoveService,
    ServiceView,
    SetNamespaceLabels,
    SetPodLabels,
    SetServiceLabels,
    WriteFile,
)
from lab.model import LabState, ServicePort
from lab.state import StateStore

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "examples" / "demo"
TUTORIAL = REPO / "deploy" / "examples" / "tutorial"
NODES = ("node1", "node2")
EMPTY_LAB = LabView(nodes=NODES, namespaces={"default": {}})

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web, tier: {tier}}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: {image}
        args: ["-text=hi", "-listen=:8080"]
        ports:
        - {{name: http, containerPort: 8080}}
"""
NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {labels}
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: TARGET}
"""


def parsed(text: str, file: str = "m.yaml", namespace: str | None = None) -> parse.Parsed:
    """Manifests from YAML text, as ``load`` would make them from a file."""
    content = parse_text(text, file)
    got = parse.parse_documents(content.documents, namespace=namespace)
    faults = (content.fault,) if content.fault is not None else ()
    return replace(got, errors=(*faults, *got.errors))


def shop(
    replicas: int = 2, tier: str = "front", image: str = "hashicorp/http-echo", target: str = "http"
) -> str:
    """A namespace, a Deployment and a Service, as one multi-document file."""
    return "---\n".join(
        [
            NAMESPACE.format(labels="{istio.io/dataplane-mode: ambient}"),
            DEPLOYMENT.format(replicas=replicas, tier=tier, image=image),
            SERVICE.replace("TARGET", target),
        ]
    )


def view_after(plan: planner.Plan, view: LabView = EMPTY_LAB) -> LabView:
    """The lab view after running ``plan``'s actions (a model of what the lab does)."""
    namespaces = {k: dict(v) for k, v in view.namespaces.items()}
    pods = dict(view.pods)
    services = dict(view.services)
    files = dict(view.files)
    for action in plan.actions:
        if isinstance(action, AddNamespace):
            namespaces[action.name] = dict(action.labels)
        elif isinstance(action, SetNamespaceLabels):
            for key, value in action.changes.items():
                if value is None:
                    namespaces[action.name].pop(key, None)
                else:
                    namespaces[action.name][key] = value
        elif isinstance(action, RemoveNamespace):
            namespaces.pop(action.name)
            pods = {k: p for k, p in pods.items() if p.namespace != action.name}
        elif isinstance(action, WriteFile):
            files[action.filename] = action.text
        elif isinstance(action, RemoveFile):
            files.pop(action.filename, None)
        elif isinstance(action, AddPod):
            key = f"{action.namespace}/{action.name}"
            assert key not in pods, f"pod {key} added twice"
            pods[key] = PodView(action.namespace, action.name, action.node, action.labels)
        elif isinstance(action, RemovePod):
            del pods[f"{action.namespace}/{action.name}"]
        elif isinstance(action, SetPodLabels):
            old = pods[f"{action.namespace}/{action.name}"]
            labels = {k: v for k, v in old.labels.items() if action.changes.get(k, "") is not None}
            labels.update({k: v for k, v in action.changes.items() if v is not None})
            pods[f"{action.namespace}/{action.name}"] = replace(old, labels=FrozenMap(labels))
        elif isinstance(action, AddService):
            services[f"{action.namespace}/{action.name}"] = ServiceView(
                action.namespace,
                action.name,
                action.vip or f"10.96.0.{10 + len(services)}",
                action.selector,
                action.ports,
                action.labels,
            )
        elif isinstance(action, SetServiceLabels):
            old_svc = services[f"{action.namespace}/{action.name}"]
            kept = {
                k: v for k, v in old_svc.labels.items() if action.changes.get(k, "") is not None
            }
            kept.update({k: v for k, v in action.changes.items() if v is not None})
            services[f"{action.namespace}/{action.name}"] = replace(old_svc, labels=FrozenMap(kept))
        elif isinstance(action, RemoveService):
            del services[f"{action.namespace}/{action.name}"]
    return LabView(view.nodes, namespaces, pods, services, files)


# --- images --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry", "repository", "tag"),
    [
        ("hashicorp/http-echo", "docker.io", "hashicorp/http-echo", "latest"),
        ("docker.io/hashicorp/http-echo:1.0", "docker.io", "hashicorp/http-echo", "1.0"),
        ("docker.io/library/busybox:1.36", "docker.io", "busybox", "1.36"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io", "pause", "3.9"),
        ("localhost:5000/curlimages/curl", "localhost:5000", "curlimages/curl", "latest"),
        ("alpine@sha256:abc", "docker.io", "alpine", "sha256:abc"),
    ],
)
def test_image_references_split_like_a_runtime(
    image: str, registry: str, repository: str, tag: str
) -> None:
    assert images.parse_image(image) == images.ImageRef(registry, repository, tag)


def test_http_echo_keeps_its_arguments_and_default_port() -> None:
    got = images.stand_in("ghcr.io/hashicorp/http-echo:1.0", [], ["-text=Hello from v1"])
    assert got == images.Program("http-echo", ("-text=Hello from v1", "-listen=:5678"), 5678)
    spaced = images.stand_in("hashicorp/http-echo", [], ["--text", "a b", "-listen", ":9000"])
    assert spaced == images.Program("http-echo", ("-text=a b", "-listen=:9000"), 9000)
    from_env = images.stand_in("hashicorp/http-echo", [], [], {"ECHO_TEXT": "env"})
    assert isinstance(from_env, images.Program) and from_env.args[0] == "-text=env"


@pytest.mark.parametrize(
    ("args", "field"),
    [([], "args"), (["-text=x", "-status-code=500"], "args"), (["-text"], "args")],
)
def test_http_echo_refuses_what_it_cannot_do(args: list[str], field: str) -> None:
    got = images.stand_in("hashicorp/http-echo", [], args)
    assert isinstance(got, images.Refused) and got.field == field


@pytest.mark.parametrize(
    ("image", "command", "args"),
    [
        ("curlimages/curl", ["/bin/sleep", "infinity"], []),
        ("docker.io/curlimages/curl:8.10.1", ["sleep", "3650d"], []),
        ("curlimages/curl", [], []),
        ("busybox", ["sh", "-c", "sleep 3600"], []),
        ("alpine:3.20", [], ["sleep", "infinity"]),
        ("registry.k8s.io/pause:3.9", [], []),
        ("ubuntu", ["tail", "-f", "/dev/null"], []),
    ],
)
def test_client_and_sleep_images_keep_the_pod_up(
    image: str, command: list[str], args: list[str]
) -> None:
    assert images.stand_in(image, command, args) == images.Idle()


def test_curl_command_is_not_run_and_says_so() -> None:
    got = images.stand_in("curlimages/curl", ["curl", "-s", "http://backend/"], [])
    assert isinstance(got, images.Idle) and "ambient lab exec" in got.note


@pytest.mark.parametrize(
    ("image", "command"),
    [("nginx:1.25", []), ("busybox", ["httpd", "-f"]), ("redis", ["sleep", "1"])],
)
def test_other_images_are_refused_naming_what_runs(image: str, command: list[str]) -> None:
    got = images.stand_in(image, command, [])
    assert isinstance(got, images.Refused)
    if got.field == "image":
        assert image in got.message and "hashicorp/http-echo" in got.message


# --- parsing -------------------------------------------------------------------------------


def test_the_demo_folder_parses_into_the_demo() -> None:
    got = parse.load([DEMO]).check()
    assert not got.warnings
    refs = [m.ref for m in got.manifests]
    for ref in (
        "Namespace/demo",
        "Namespace/legacy",
        "Deployment/demo/frontend",
        "Deployment/demo/backend-v1",
        "Deployment/demo/backend-v2",
        "Deployment/legacy/client",
        "Service/demo/backend",
        "PeerAuthentication.security.istio.io/demo/default",
        "AuthorizationPolicy.security.istio.io/demo/backend-allow-frontend",
    ):
        assert ref in refs
    demo = next(m for m in got.manifests if m.ref == "Namespace/demo")
    assert isinstance(demo, NamespaceManifest)
    assert demo.labels["istio.io/dataplane-mode"] == "ambient"
    v2 = next(m for m in got.manifests if m.ref == "Deployment/demo/backend-v2")
    assert isinstance(v2, WorkloadManifest)
    assert v2.template.labels == {"app": "backend", "version": "v2"}
    assert v2.template.service_account == "backend"
    assert v2.template.programs == (
        images.Program("http-echo", ("-text=Hello from backend v2", "-listen=:5678"), 5678),
    )
    assert v2.template.port_names == {"http": 5678}


def test_the_tutorial_parses_with_the_injection_warning_only_for_the_namespace() -> None:
    got = parse.load([TUTORIAL]).check()
    injection = [w for w in got.warnings if "istio-injection" in w.field]
    assert len(injection) == 1
    text = str(injection[0])
    assert text.startswith(f"{TUTORIAL / 'app.yaml'}:5: warning: Namespace/tutorial: ")
    assert "istio.io/dataplane-mode=ambient" in text
    kinds = {type(m).__name__ for m in got.manifests}
    assert kinds == {"NamespaceManifest", "WorkloadManifest", "ServiceManifest", "ConfigManifest"}


def test_list_kind_comments_and_folders_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "# a comment\n"
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: ServiceAccount, metadata: {name: a}}\n"
        "- {apiVersion: v1, kind: ServiceAccount, metadata: {name: b}}\n"
    )
    (tmp_path / "a.yml").write_text("---\n# only a comment\n---\n" + NAMESPACE.format(labels="{}"))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    got = parse.load([tmp_path]).check()
    assert [m.ref for m in got.manifests] == [
        "Namespace/shop",
        "ServiceAccount/default/a",
        "ServiceAccount/default/b",
    ]


def test_namespace_flag_fills_in_and_conflicts_are_errors() -> None:
    text = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n"
    assert parsed(text, namespace="shop").manifests[0].namespace == "shop"
    clash = parsed(text.replace("{name: a}", "{name: a, namespace: x}"), namespace="shop")
    assert "-n 'shop'" in str(clash.errors[0])


def test_config_objects_keep_the_document_with_its_namespace() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default}
        spec:
          mtls: {mode: STRICT}
        """
    )
    got = parsed(text, namespace="demo").check().manifests[0]
    assert isinstance(got, ConfigManifest)
    assert got.plain() == {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "demo"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    assert got.filename == "peerauthentication.security.istio.io.demo.default.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "m.yaml:1: ConfigMap/default/x: kind: v1 ConfigMap is not a kind the lab applies",
        ),
        (
            "apiVersion: apps/v1beta1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            "m.yaml:1: Deployment/default/x: apiVersion: apps/v1beta1 is not apps/v1",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
            "m.yaml:1: Service/default/x: spec: required field is missing",
        ),
        (
            "a: 1\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: []\n",
            "m.yaml:3: Pod/default/p: spec.containers: must not be an empty list",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: d, namespace: demo}\nspec: {mtls: {mode: SOMETIMES}}\n",
            "m.yaml:1: PeerAuthentication/demo/d: spec.mtls.mode:",
        ),
    ],
)
def test_errors_name_file_line_object_and_field(text: str, expected: str) -> None:
    errors = [str(e) for e in parsed(text).errors]
    assert any(e.startswith(expected) for e in errors), errors


def test_bad_yaml_is_an_error_at_its_line() -> None:
    got = parsed("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [shop\n")
    assert len(got.errors) == 1
    assert str(got.errors[0]).startswith("m.yaml:")
    assert "invalid YAML" in str(got.errors[0])


def test_an_unknown_image_names_file_line_object_and_alternatives() -> None:
    got = parsed(shop(image="nginx:1.25"))
    (error,) = got.errors
    assert str(error).startswith(
        "m.yaml:7: Deployment/shop/web: spec.template.spec.containers[0].image: "
        "image 'nginx:1.25' cannot run in the lab"
    )
    assert "curlimages/curl" in error.message
    with pytest.raises(ManifestError) as caught:
        got.check()
    assert "nothing was applied" in str(caught.value)


def test_deployment_selector_must_match_the_template() -> None:
    text = DEPLOYMENT.format(replicas=1, tier="x", image="hashicorp/http-echo").replace(
        "matchLabels: {app: web}", "matchLabels: {app: other}"
    )
    (error,) = parsed(text).errors
    assert error.field == "spec.template.metadata.labels"


def test_duplicates_are_errors() -> None:
    text = NAMESPACE.format(labels="{}") + "---\n" + NAMESPACE.format(labels="{}")
    (error,) = parsed(text).errors
    assert "defined twice (first at m.yaml:1)" in str(error)


def test_template_hash_is_stable_and_follows_the_template() -> None:
    a = parse.template_hash({"metadata": {"labels": {"app": "a"}}})
    assert a == parse.template_hash({"metadata": {"labels": {"app": "a"}}})
    assert a != parse.template_hash({"metadata": {"labels": {"app": "b"}}})
    assert 1 <= len(a) <= 10 and set(a) <= set("bcdfghjklmnpqrstvwxz2456789")


# --- placement and names -------------------------------------------------------------------


def test_placement_spreads_replicas_then_balances_nodes() -> None:
    assert planner.place(NODES, {}, {}) == "node1"
    assert planner.place(NODES, {"node1": 1}, {}) == "node2"
    assert planner.place(NODES, {"node1": 0, "node2": 5}, {"node1": 1}) == "node2"
    assert planner.place(("node1", "node2", "node3"), {"node1": 2, "node2": 1}, {}) == "node3"


def test_deployment_pods_are_named_and_labelled_like_a_replica_set() -> None:
    plan = planner.plan_apply(parsed(shop(replicas=3)).check().manifests, EMPTY_LAB, {})
    pods = [a for a in plan.actions if isinstance(a, AddPod)]
    assert len(pods) == 3
    template_hash = pods[0].labels["pod-template-hash"]
    for pod in pods:
        rs, _, suffix = pod.name.rpartition("-")
        assert rs == f"web-{template_hash}"
        assert pod.owner == rs
        assert len(suffix) == 5
        assert pod.labels == {"app": "web", "tier": "front", "pod-template-hash": template_hash}
        assert pod.service_account == "web"
        assert pod.programs == (images.Program("http-echo", ("-text=hi", "-listen=:8080"), 8080),)
    assert len({p.name for p in pods}) == 3
    assert sorted(p.node for p in pods) == ["node1", "node1", "node2"]


def test_demo_spreads_over_both_nodes() -> None:
    plan = planner.plan_apply(parse.load([DEMO]).check().manifests, EMPTY_LAB, {})
    nodes = {a.name.rsplit("-", 2)[0]: a.node for a in plan.actions if isinstance(a, AddPod)}
    assert set(nodes) == {"frontend", "sleep", "backend-v1", "backend-v2", "client"}
    # The demo calls whichever backend runs on the other node than the caller, so the
    # two versions must not share a node; and both nodes carry pods.
    assert nodes["backend-v1"] != nodes["backend-v2"]
    assert len(set(nodes.values())) == 2
    (svc,) = [a for a in plan.actions if isinstance(a, AddService)]
    assert svc.ports == (ServicePort(80, 5678, "http"),)


def test_apply_order_puts_namespaces_first_and_config_last() -> None:
    text = "---\n".join(
        [
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
            SERVICE.replace("TARGET", "8080"),
            DEPLOYMENT.format(replicas=1, tier="a", image="hashicorp/http-echo"),
            NAMESPACE.format(labels="{}"),
        ]
    )
    plan = planner.plan_apply(parsed(text).check().manifests, EMPTY_LAB, {})
    kinds = [type(a).__name__ for a in plan.actions]
    assert kinds == ["AddNamespace", "AddPod", "AddService", "WriteFile"]


# --- plan-time errors ----------------------------------------------------------------------


def test_missing_namespace_and_node_are_errors_before_anything_runs() -> None:
    text = DEPLOYMENT.format(replicas=1, tier="a", image="hashicorp/http-echo")
    with pytest.raises(ManifestError) as caught:
        planner.plan_apply(parsed(text).check().manifests, EMPTY_LAB, {})
    assert "m.yaml:1: Deployment/shop/web: metadata.namespace: namespace 'shop'" in str(
        caught.value
    )
    pinned = (
        NAMESPACE.format(labels="{}")
        + "---\n"
        + text.replace("serviceAccountName: web", "serviceAccountName: web\n      nodeName: node7")
    )
    with pytest.raises(ManifestError) as caught:
        planner.plan_apply(parsed(pinned).check().manifests, EMPTY_LAB, {})
    assert "spec.template.spec.nodeName: the lab has no node 'node7'" in str(caught.value)


def test_named_target_port_must_resolve() -> None:
    with pytest.raises(ManifestError) as caught:
        planner.plan_apply(parsed(shop(target="grpc")).check().manifests, EMPTY_LAB, {})
    assert "spec.ports[0].targetPort: 'grpc' names no container port" in str(caught.value)
    plan = planner.plan_apply(parsed(shop(target="http")).check().manifests, EMPTY_LAB, {})
    (svc,) = [a for a in plan.actions if isinstance(a, AddService)]
    assert svc.ports == (ServicePort(80, 8080, "http"),)


# --- idempotency ---------------------------------------------------------------------------


def test_reapplying_the_same_manifests_changes_nothing() -> None:
    manifests = parse.load([DEMO, TUTORIAL]).check().manifests
    first = planner.plan_apply(manifests, EMPTY_LAB, {})
    lab = view_after(first)
    second = planner.plan_apply(manifests, lab, first.record)
    assert second.actions == ()
    assert {o.result for o in second.outcomes} == {"unchanged"}
    assert second.record == first.record


def test_label_changes_are_applied_in_place() -> None:
    first = planner.plan_apply(parsed(shop()).check().manifests, EMPTY_LAB, {})
    lab = view_after(first)
    relabelled = shop().replace("{istio.io/dataplane-mode: ambient}", "{team: a}")
    second = planner.plan_apply(parsed(relabelled).check().manifests, lab, first.record)
    assert second.actions == (
        SetNamespaceLabels("shop", FrozenMap({"team": "a", "istio.io/dataplane-mode": None})),
    )
    assert view_after(second, lab).namespaces["shop"] == {"team": "a"}


def test_labels_set_by_hand_survive_a_reapply() -> None:
    first = planner.plan_apply(parsed(shop()).check().manifests, EMPTY_LAB, {})
    lab = view_after(first)
    by_hand = replace(
        lab, namespaces={**lab.namespaces, "shop": {**lab.namespaces["shop"], "x": "1"}}
    )
    second = planner.plan_apply(parsed(shop()).check().manifests, by_hand, first.record)
    assert second.actions == ()


def test_bare_pod_label_change_is_in_place_and_program_change_replaces() -> None:
    pod = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Pod
        metadata: {name: sleeper, labels: {app: s}}
        spec:
          containers:
          - {name: c, image: hashicorp/http-echo, args: [-text=a]}
        """
    )
    first = planner.plan_apply(parsed(pod).check().manifests, EMPTY_LAB, {})
    lab = view_after(first)
    second = planner.plan_apply(
        parsed(pod.replace("{app: s}", "{app: s, v: '2'}")).check().manifests, lab, first.record
    )
    assert second.actions == (SetPodLabels("default", "sleeper", FrozenMap({"v": "2"})),)
    (added,) = [a for a in first.actions if isinstance(a, AddPod)]
    assert added.name == "sleeper" and added.owner == ""
    third = planner.plan_apply(
        parsed(pod.replace("-text=a", "-text=b")).check().manifests, lab, first.record
    )
    assert [type(a).__name__ for a in third.actions] == ["RemovePod", "AddPod"]
    assert third.outcomes[0].result == "configured"


def test_changed_deployment_is_replaced_and_scaling_keeps_pods() -> None:
    first = planner.plan_apply(parsed(shop(replicas=2)).check().manifests, EMPTY_LAB, {})
    lab = view_after(first)
    old = {k for k in lab.pods}
    scaled = planner.plan_apply(parsed(shop(replicas=3)).check().manifests, lab, first.record)
    assert [type(a).__name__ for a in scaled.actions] == ["AddPod"]
    lab3 = view_after(scaled, lab)
    assert old < set(lab3.pods)
    down = planner.plan_apply(parsed(shop(replicas=1)).check().manifests, lab3, scaled.record)
    assert [type(a).__name__ for a in down.actions] == ["RemovePod", "RemovePod"]
    changed = planner.plan_apply(
        parsed(shop(replicas=2, tier="back")).check().manifests, lab, first.record
    )
    removed = {f"{a.namespace}/{a.name}" for a in changed.actions if isinstance(a, RemovePod)}
    added = [a for a in changed.actions if isinstance(a, AddPod)]
    assert removed == old
    assert len(added) == 2 and all(a.labels["tier"] == "back" for a in added)
    outcome = next(o for o in changed.outcomes if o.ref == "Deployment/shop/web")
    assert outcome.result == "configured"


def test_changed_service_keeps_its_vip() -> None:
    first = planner.plan_apply(parsed(shop()).check().manifests, EMPTY_LAB, {})
    lab = view_after(first)
    vip = lab.services["shop/web"].vip
    moved = planner.plan_apply(
        parsed(shop().replace("port: 80,", "port: 8000,")).check().manifests, lab, first.record
    )
    assert [type(a).__name__ for a in moved.actions] == ["RemoveService", "AddService"]
    assert view_after(moved, lab).services["shop/web"].vip == vip


def test_service_labels_are_applied_in_place_and_hand_set_ones_stay() -> None:
    """`istio.io/use-waypoint` on a Service manifest reaches the lab's Service object."""
    labelled = shop().replace(
        "kind: Service\nmetadata: {name: web, namespace: shop}",
        "kind: Service\nmetadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: w}}",
    )
    assert labelled != shop()
    first = planner.plan_apply(parsed(labelled).check().manifests, EMPTY_LAB, {})
    lab = view_after(first)
    assert lab.services["shop/web"].labels == {"istio.io/use-waypoint": "w"}
    by_hand = replace(
        lab,
        services={
            "shop/web": replace(
                lab.services["shop/web"],
                labels=FrozenMap({**lab.services["shop/web"].labels, "x": "1"}),
            )
        },
    )
    unlabelled = planner.plan_apply(parsed(shop()).check().manifests, by_hand, first.record)
    assert [type(a).__name__ for a in unlabelled.actions] == ["SetServiceLabels"]
    after = view_after(unlabelled, by_hand).services["shop/web"]
    assert after.labels == {"x": "1"}
    assert after.vip == lab.services["shop/web"].vip
    again = planner.plan_apply(
        parsed(shop()).check().manifests, view_after(unlabelled, by_hand), unlabelled.record
    )
    assert again.actions == ()


def test_record_round_trips_through_json() -> None:
    plan = planner.plan_apply(parse.load([DEMO]).check().manifests, EMPTY_LAB, {})
    assert planner.record_from_json(planner.record_to_json(plan.record)) == plan.record


# --- delete --------------------------------------------------------------------------------


def test_delete_removes_what_the_files_name() -> None:
    manifests = parsed(shop()).check().manifests
    first = planner.plan_apply(manifests, EMPTY_LAB, {})
    lab = view_after(first)
    deployment_only = [m for m in manifests if m.kind == "Deployment"]
    plan = planner.plan_delete(deployment_only, lab, first.record)
    assert {type(a) for a in plan.actions} == {RemovePod}
    after = view_after(plan, lab)
    assert not after.pods and "shop/web" in after.services
    again = planner.plan_delete(deployment_only, after, plan.record)
    assert again.actions == () and again.outcomes[0].result == "not found"


def test_delete_of_a_namespace_takes_its_config_files() -> None:
    manifests = parse.load([TUTORIAL]).check().manifests
    first = planner.plan_apply(manifests, EMPTY_LAB, {})
    lab = view_after(first)
    plan = planner.plan_delete(manifests, lab, first.record)
    after = view_after(plan, lab)
    assert "tutorial" not in after.namespaces
    assert not after.files
    assert not plan.record


def test_deployment_replicas_are_recognised_by_name_and_label() -> None:
    pod = PodView("shop", "web-5d8f7c9b4b-x2k4q", "node1", FrozenMap({"pod-template-hash": "5"}))
    assert planner.is_replica_of(pod, "web")
    assert not planner.is_replica_of(pod, "we")
    assert not planner.is_replica_of(replace(pod, labels=FrozenMap()), "web")


def test_record_applied_defaults() -> None:
    assert Applied.from_json({}) == Applied()
    assert yaml.safe_load(planner.object_text({"a": {"b": 1}})) == {"a": {"b": 1}}


def test_plan_time_checks_refuse_what_the_lab_would_fail_on_midway() -> None:
    long_name = shop().replace(
        "name: web\n  namespace: shop", f"name: {'w' * 50}\n  namespace: shop"
    )
    with pytest.raises(ManifestError) as caught:
        planner.plan_apply(parsed(long_name).check().manifests, EMPTY_LAB, {})
    assert "metadata.name: pod name" in str(caught.value)
    taken = LabView(
        nodes=NODES,
        namespaces={"default": {}, "shop": {}},
        services={"default/other": ServiceView("default", "other", "10.96.0.20")},
    )
    fixed = shop().replace(
        "selector: {app: web}\n  ports", "selector: {app: web}\n  clusterIP: 10.96.0.20\n  ports"
    )
    with pytest.raises(ManifestError) as caught:
        planner.plan_apply(parsed(fixed).check().manifests, taken, {})
    assert "spec.clusterIP: 10.96.0.20 is taken by Service default/other" in str(caught.value)
    default = parsed("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n").check()
    with pytest.raises(ManifestError, match="'default' cannot be deleted"):
        planner.plan_delete(default.manifests, EMPTY_LAB, {})


def test_standard_input_is_read_for_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(NAMESPACE.format(labels="{a: b}")))
    got = parse.load([Path("-")]).check()
    assert [m.ref for m in got.manifests] == ["Namespace/shop"]
    assert got.manifests[0].origin.file == "<stdin>"


def test_missing_paths_are_errors(tmp_path: Path) -> None:
    got = parse.load([tmp_path / "nope.yaml", tmp_path])
    assert [str(e) for e in got.errors] == [
        f"{tmp_path / 'nope.yaml'}: no such file or folder",
        f"{tmp_path}: no .yaml, .yml or .json file in it",
    ]


# --- the command ---------------------------------------------------------------------------


def _saved_lab(run_root: Path, name: str) -> None:
    """A lab's saved state with two nodes and no pods (what a dry run reads)."""
    run_dir = run_root / name
    (run_dir / "config").mkdir(parents=True)
    StateStore(run_dir).save(
        LabState(
            name=name,
            octet=7,
            node_count=2,
            run_dir=str(run_dir),
            config_dir=str(run_dir / "config"),
            namespaces={"default": {}},
            phase="ready",
        )
    )


def test_dry_run_plans_from_the_saved_state_and_changes_nothing(tmp_path: Path) -> None:
    _saved_lab(tmp_path, "t1")
    args = ["lab", "apply", "--dry-run", "--run-root", str(tmp_path), "-f", str(DEMO)]
    done = CliRunner().invoke(cli_root, [*args, "-o", "json"])
    assert done.exit_code == 0, done.output
    results = {r["object"]: (r["result"], r["detail"]) for r in json.loads(done.output)}
    assert results["Deployment/demo/backend-v1"][0] == "created"
    assert results["Deployment/demo/backend-v1"][1].startswith("backend-v1-")
    assert sorted((tmp_path / "t1").iterdir()) == [
        tmp_path / "t1" / "config",
        tmp_path / "t1" / "state.json",
    ]
    assert not list((tmp_path / "t1" / "config").iterdir())


def test_bad_manifests_exit_2_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    _saved_lab(tmp_path, "t1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        shop(image="nginx") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n"
    )
    args = ["lab", "apply", "--dry-run", "--run-root", str(tmp_path), "-f", str(bad)]
    done = subprocess.run(
        [sys.executable, "-m", "ambient", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: 2 problems in the manifests; nothing was applied\n")
    assert f"  {bad}:7: Deployment/shop/web: spec.template.spec.containers[0].image:" in done.stderr
    line = bad.read_text().splitlines().index("kind: ConfigMap")  # 1-based line of apiVersion
    assert f"  {bad}:{line}: ConfigMap/default/s: kind: v1 ConfigMap is not a kind" in done.stderr


@pytest.mark.parametrize("command", ["apply", "delete"])
def test_apply_and_delete_have_help(command: str) -> None:
    done = CliRunner().invoke(cli_root, ["lab", command, "--help"])
    assert done.exit_code == 0, done.output
    for option in ("--filename", "--namespace", "--dry-run", "--name", "--output"):
        assert option in done.output


def test_deleting_a_deployment_leaves_a_pod_of_the_same_name() -> None:
    manifests = parsed(shop()).check().manifests
    first = planner.plan_apply(manifests, EMPTY_LAB, {})
    lab = view_after(first)
    lone = PodView("shop", "web", "node1", FrozenMap({"app": "other"}))
    lab = replace(lab, pods={**lab.pods, "shop/web": lone})
    deployment = [m for m in manifests if m.kind == "Deployment"]
    for record in (first.record, {}):
        plan = planner.plan_delete(deployment, lab, record)
        removed = {a.name for a in plan.actions if isinstance(a, RemovePod)}
        assert len(removed) == 2 and "web" not in removed


def test_a_deployment_name_stands_for_its_first_pod(tmp_path: Path) -> None:
    from lab.cluster import Lab
    from lab.errors import NoSuchObjectError
    from lab.model import Pod

    def pod(namespace: str, name: str, hashed: bool = True) -> Pod:
        labels = {"pod-template-hash": "5d8f7c9b4b"} if hashed else {}
        return Pod(
            name,
            namespace,
            "node1",
            f"t1-pod-{name}.{namespace}",
            "10.244.1.9",
            "v",
            "u",
            "d",
            labels,
        )

    pods = [
        pod("demo", "web-5d8f7c9b4b-x2k4q"),
        pod("demo", "web-5d8f7c9b4b-b2k4q"),
        pod("demo", "api"),
        pod("other", "api-5d8f7c9b4b-zzzzz"),
        pod("demo", "db-5d8f7c9b4b-x2k4q", hashed=False),
    ]
    _saved_lab(tmp_path, "t1")
    store = StateStore(tmp_path / "t1")
    state = store.load()
    state.pods = {p.key: p for p in pods}
    store.save(state)
    lab = Lab(state)
    assert lab.pod("demo/web").name == "web-5d8f7c9b4b-b2k4q"
    assert lab.pod("web").name == "web-5d8f7c9b4b-b2k4q"
    assert lab.pod("demo/api").name == "api"
    assert lab.pod("other/api").name == "api-5d8f7c9b4b-zzzzz"
    with pytest.raises(NoSuchObjectError):
        lab.pod("demo/db")
    with pytest.raises(NoSuchObjectError, match="no pod 'demo/we'"):
        lab.pod("demo/we")


def test_gateway_certificate_secrets_are_applied_and_checked() -> None:
    """`kubectl create secret tls` output applies (Istio's Secure Gateways task); a
    Secret whose key does not match its certificate is an error naming it."""
    from tests.tls_fixtures import SHOP_HOST, make_ca, make_leaf, tls_secret_yaml

    ca = make_ca()
    cert, key = make_leaf(ca, SHOP_HOST)
    good = parsed(tls_secret_yaml("shop-cert", "istio-system", cert, key)).check().manifests[0]
    assert isinstance(good, ConfigManifest)
    assert good.filename == "secret.istio-system.shop-cert.yaml"
    _, other_key = make_leaf(ca, SHOP_HOST)
    with pytest.raises(ManifestError) as err:
        parsed(tls_secret_yaml("shop-cert", "istio-system", cert, other_key)).check()
    assert "Secret/istio-system/shop-cert" in str(err.value)
