"""``ambient lab apply -f`` / ``delete -f`` on a real 2-node lab (needs root).

One lab for the module (built once, removed by name in a ``finally``); the tests run in
order and build on each other: the demo applied, re-applied, relabelled, changed, a bad
file refused, the tutorial applied and deleted.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.sources import FolderSource
from controlplane.workloadapi.workloads import workload_name
from lab import Lab
from lab.manifests.apply import workload_pods
from lab.model import Pod
from tests.integration.meshlab import ambient, two_node_lab

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "examples" / "demo"
TUTORIAL = REPO / "deploy" / "examples" / "tutorial"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 2-node lab with its own run folder, always removed."""
    with two_node_lab("la", tmp_path_factory.mktemp("labrun")) as built:
        yield built


def rows(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Object -> result from ``-o json`` output."""
    assert done.returncode == 0, done.stderr
    return {row["object"]: row["result"] for row in yaml.safe_load(done.stdout)}


def pods_of(lab: Lab, namespace: str, deployment: str) -> list[Pod]:
    """The pods a Deployment made (named ``<deployment>-<hash>-<suffix>``)."""
    found = workload_pods(lab, namespace, deployment)
    assert all(p.name.rsplit("-", 2)[0] == deployment for p in found)
    return found


def curl(lab: Lab, pod: Pod, url: str) -> str:
    """``curl`` inside a pod; the body."""
    done = lab.exec(pod, ["curl", "-s", "-m", "5", url], timeout=15)
    assert done.returncode == 0, done.stderr
    return done.stdout


def snapshot(lab: Lab) -> dict[str, Any]:
    """What a refused apply must leave as it was: pods, Services, namespaces, files."""
    files = {p.name: p.read_text() for p in sorted(lab.config_dir.glob("*.yaml"))}
    return {
        "pods": {p.key: (p.uid, p.node, dict(p.labels)) for p in lab.pods},
        "services": {s.key: (s.vip, s.ports) for s in lab.services},
        "namespaces": lab.namespaces,
        "files": files,
    }


def test_demo_comes_up_across_both_nodes(lab: Lab) -> None:
    done = ambient(lab, "apply", "-f", str(DEMO), "-o", "json")
    results = rows(done)
    assert set(results.values()) == {"created"}
    assert "Deployment/demo/backend-v2" in results
    frontend, v1, v2 = (
        pods_of(lab, "demo", d)[0] for d in ("frontend", "backend-v1", "backend-v2")
    )
    (client,) = pods_of(lab, "legacy", "client")
    assert {p.node for p in (frontend, v1, v2, client)} == {"node1", "node2"}
    assert v1.node != v2.node
    assert v1.labels["app"] == "backend" and v1.labels["version"] == "v1"
    assert v2.service_account == "backend" and frontend.service_account == "frontend"
    assert lab.namespaces["demo"]["istio.io/dataplane-mode"] == "ambient"
    assert "istio.io/dataplane-mode" not in lab.namespaces["legacy"]

    assert curl(lab, frontend, f"http://{v1.ip}:5678/").startswith("Hello from backend v1\n")
    assert curl(lab, frontend, f"http://{v2.ip}:5678/").startswith("Hello from backend v2\n")
    assert f"client: {client.ip}:" in curl(lab, client, f"http://{v2.ip}:5678/")
    by_deployment = ambient(
        lab, "exec", "demo/frontend", "--", "curl", "-s", f"http://{v1.ip}:5678/"
    )
    assert by_deployment.returncode == 0, by_deployment.stderr
    assert (
        by_deployment.stdout
        == f"Hello from backend v1\nclient: {frontend.ip}:"
        + (by_deployment.stdout.rsplit(":", 1)[1])
    )
    vip = lab.service("backend", "demo").vip
    assert lab.service("backend", "demo").ports[0].target_port == 5678
    resolved = lab.exec(frontend, ["getent", "hosts", "backend"], check=True).stdout
    assert resolved.split()[0] == vip

    state = FolderSource(lab.config_dir).load()
    assert not state.errors, state.errors
    seen = state.pods[("demo", v1.name)]
    assert (seen.owner_kind, seen.owner_name) == ("ReplicaSet", v1.name.rsplit("-", 1)[0])
    assert workload_name(seen) == "backend-v1"
    assert seen.ip == v1.ip and seen.node_name == v1.node
    assert ("demo", "default") in state.peer_authentications
    assert ("demo", "backend-allow-frontend") in state.authorization_policies
    written = lab.config_dir / "peerauthentication.security.istio.io.demo.default.yaml"
    source = yaml.safe_load((DEMO / "40-peer-authentication-strict.yaml").read_text())
    assert yaml.safe_load(written.read_text()) == source


def test_reapplying_the_demo_changes_nothing(lab: Lab) -> None:
    before = snapshot(lab)
    pids = {p.name: p.pid for p in lab.processes}
    results = rows(ambient(lab, "apply", "-f", str(DEMO), "-o", "json"))
    assert set(results.values()) == {"unchanged"}
    assert snapshot(lab) == before
    assert {p.name: p.pid for p in lab.processes} == pids


def test_label_change_is_applied_in_place(lab: Lab, tmp_path: Path) -> None:
    before = {p.key: p.uid for p in lab.pods}
    namespaces = yaml.safe_load_all((DEMO / "00-namespaces.yaml").read_text())
    docs = list(namespaces)
    docs[0]["metadata"]["labels"]["team"] = "mesh"
    changed = tmp_path / "namespaces.yaml"
    changed.write_text(yaml.safe_dump_all(docs))
    results = rows(ambient(lab, "apply", "-f", str(changed), "-o", "json"))
    assert results == {"Namespace/demo": "configured", "Namespace/legacy": "unchanged"}
    assert lab.namespaces["demo"] == {"istio.io/dataplane-mode": "ambient", "team": "mesh"}
    assert {p.key: p.uid for p in lab.pods} == before
    rows(ambient(lab, "apply", "-f", str(DEMO / "00-namespaces.yaml"), "-o", "json"))
    assert lab.namespaces["demo"] == {"istio.io/dataplane-mode": "ambient"}


def test_changed_deployment_is_replaced(lab: Lab, tmp_path: Path) -> None:
    (old,) = pods_of(lab, "demo", "backend-v2")
    text = (DEMO / "20-backend.yaml").read_text().replace("backend v2", "backend v2.1")
    (tmp_path / "backend.yaml").write_text(text)
    results = rows(ambient(lab, "apply", "-f", str(tmp_path / "backend.yaml"), "-o", "json"))
    assert results["Deployment/demo/backend-v2"] == "configured"
    assert results["Deployment/demo/backend-v1"] == "unchanged"
    (new,) = pods_of(lab, "demo", "backend-v2")
    assert (
        new.name != old.name and new.labels["pod-template-hash"] != old.labels["pod-template-hash"]
    )
    (frontend,) = pods_of(lab, "demo", "frontend")
    assert curl(lab, frontend, f"http://{new.ip}:5678/").startswith("Hello from backend v2.1\n")
    rows(ambient(lab, "apply", "-f", str(DEMO / "20-backend.yaml"), "-o", "json"))
    (back,) = pods_of(lab, "demo", "backend-v2")
    assert curl(lab, frontend, f"http://{back.ip}:5678/").startswith("Hello from backend v2\n")


def test_a_bad_file_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    shutil.copytree(TUTORIAL, tmp_path / "bad")
    bad = tmp_path / "bad" / "zz-web.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: tutorial}\n"
        "spec:\n  selector: {matchLabels: {app: web}}\n  template:\n"
        "    metadata: {labels: {app: web}}\n"
        "    spec: {containers: [{name: web, image: 'nginx:1.25'}]}\n"
    )
    before = snapshot(lab)
    done = ambient(lab, "apply", "-f", str(tmp_path / "bad"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert (
        f"{bad}:1: Deployment/tutorial/web: spec.template.spec.containers[0].image: "
        "image 'nginx:1.25' cannot run in the lab"
    ) in done.stderr
    assert "nothing was applied" in done.stderr
    assert snapshot(lab) == before


def test_tutorial_comes_up_unchanged_with_the_injection_warning(lab: Lab) -> None:
    before = snapshot(lab)
    planned = rows(ambient(lab, "apply", "--dry-run", "-f", str(TUTORIAL), "-o", "json"))
    assert set(planned.values()) == {"created"}
    assert snapshot(lab) == before
    done = ambient(lab, "apply", "-f", str(TUTORIAL), "-o", "json")
    results = rows(done)
    assert set(results.values()) == {"created"}
    assert "Namespace/tutorial: metadata.labels.istio-injection" in done.stderr
    assert "istio.io/dataplane-mode=ambient" in done.stderr
    assert lab.namespaces["tutorial"] == {"istio-injection": "enabled"}
    assert len(pods_of(lab, "tutorial", "backend-v1")) == 2
    (frontend,) = pods_of(lab, "tutorial", "frontend")
    (v2,) = pods_of(lab, "tutorial", "backend-v2")
    assert curl(lab, frontend, f"http://{v2.ip}:5678/").startswith("Hello from backend v2\n")
    (demo_frontend,) = pods_of(lab, "demo", "frontend")
    answer = curl(lab, demo_frontend, f"http://{frontend.ip}:8080/")
    assert answer.startswith("Hello from frontend\n")
    assert (lab.config_dir / "virtualservice.networking.istio.io.tutorial.backend.yaml").exists()


def test_delete_removes_what_the_files_name(lab: Lab) -> None:
    results = rows(ambient(lab, "delete", "-f", str(TUTORIAL), "-o", "json"))
    assert results["Namespace/tutorial"] == "deleted"
    assert "tutorial" not in lab.namespaces
    assert not [p for p in lab.pods if p.namespace == "tutorial"]
    assert not list(lab.config_dir.glob("*tutorial*"))
    assert not [p for p in lab.processes if ".tutorial-" in p.name and p.alive()]

    policy = DEMO / "50-authorization-policy-backend.yaml"
    results = rows(ambient(lab, "delete", "-f", str(policy), "-o", "json"))
    assert results == {
        "AuthorizationPolicy.security.istio.io/demo/backend-allow-frontend": "deleted"
    }
    assert not FolderSource(lab.config_dir).load().authorization_policies
    again = rows(ambient(lab, "delete", "-f", str(policy), "-o", "json"))
    assert set(again.values()) == {"not found"}
    # frontend, sleep, backend-v1 and backend-v2 stay: the policy file names only itself
    assert len([p for p in lab.pods if p.namespace == "demo"]) == 4
