"""``ambient waypoint apply|list|delete|status|generate`` on a folder the control plane reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from click.testing import CliRunner

from ambient.cli import root
from controlplane.sources import FolderSource
from controlplane.workloadapi.waypoints import TrafficType
from tests.waypoint_envoy_fixtures import WAYPOINT_POD_YAML
from waypoint.cli import WaypointCommandError, waypoint_gateway

APP = (
    """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec: {selector: {app: backend}, clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
"""
    + WAYPOINT_POD_YAML
)


def run(*args: str) -> Any:
    result = CliRunner().invoke(root, ["waypoint", *args], catch_exceptions=False)
    return result


def folder(tmp_path: Path) -> Path:
    (tmp_path / "app.yaml").write_text(APP)
    return tmp_path


def test_generate_prints_what_istioctl_writes() -> None:
    out = run("generate", "-n", "demo", "--for", "workload")
    assert out.exit_code == 0
    assert yaml.safe_load(out.output) == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": "waypoint",
            "namespace": "demo",
            "labels": {"istio.io/waypoint-for": "workload"},
        },
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def test_apply_with_enroll_namespace_binds_the_namespace(tmp_path: Path) -> None:
    root_dir = folder(tmp_path)
    out = run("apply", "-n", "demo", "--enroll-namespace", "--dir", str(root_dir))
    assert out.exit_code == 0, out.output
    assert "waypoint demo/waypoint applied (for service)" in out.output
    state = FolderSource(root_dir).load()
    assert state.errors == ()
    assert state.gateways[("demo", "waypoint")].is_waypoint
    assert state.namespaces["demo"].labels["istio.io/use-waypoint"] == "waypoint"
    assert state.namespaces["demo"].labels["istio.io/dataplane-mode"] == "ambient"
    # applying again (another traffic type) replaces it in place, no duplicate
    assert run("apply", "-n", "demo", "--for", "all", "--dir", str(root_dir)).exit_code == 0
    state = FolderSource(root_dir).load()
    assert state.errors == ()
    assert state.gateways[("demo", "waypoint")].labels["istio.io/waypoint-for"] == "all"


def test_enroll_namespace_writes_a_namespace_when_none_exists(tmp_path: Path) -> None:
    out = run("apply", "-n", "fresh", "--name", "wp", "--enroll-namespace", "--dir", str(tmp_path))
    assert out.exit_code == 0, out.output
    state = FolderSource(tmp_path).load()
    assert state.namespaces["fresh"].labels == {"istio.io/use-waypoint": "wp"}


def test_list_and_status(tmp_path: Path) -> None:
    root_dir = folder(tmp_path)
    run("apply", "-n", "demo", "--enroll-namespace", "--dir", str(root_dir))
    (root_dir / "extra.yaml").write_text(
        "apiVersion: v1\nkind: Service\n"
        "metadata: {name: other, namespace: demo, labels: {istio.io/use-waypoint: nope}}\n"
        "spec: {selector: {app: other}, clusterIP: 10.96.0.11, ports: [{port: 80}]}\n"
    )
    table = run("list", "--dir", str(root_dir))
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "FOR", "ADDRESS", "READY"]
    assert lines[1].split() == ["demo", "waypoint", "service", "10.96.0.99", "1/1"]
    rows = json.loads(run("status", "--dir", str(root_dir), "-o", "json").output)
    (row,) = rows
    assert row["bound"] == ["namespace/demo", "service/demo/backend"]
    assert row["problems"] == []
    assert json.loads(run("list", "-n", "other", "--dir", str(root_dir), "-o", "json").output) == []
    assert yaml.safe_load(run("status", "--dir", str(root_dir), "-o", "yaml").output) == rows


def test_status_shows_problems_of_what_asks_for_a_waypoint(tmp_path: Path) -> None:
    root_dir = folder(tmp_path)
    run("apply", "-n", "demo", "--for", "workload", "--dir", str(root_dir))
    (root_dir / "extra.yaml").write_text(
        "apiVersion: v1\nkind: Service\n"
        "metadata: {name: other, namespace: demo, labels: {istio.io/use-waypoint: waypoint}}\n"
        "spec: {selector: {app: other}, clusterIP: 10.96.0.11, ports: [{port: 80}]}\n"
    )
    (row,) = json.loads(run("status", "--dir", str(root_dir), "-o", "json").output)
    assert row["bound"] == []
    assert row["problems"] == [
        "service/demo/other: waypoint demo/waypoint is for 'workload' traffic, not 'service' "
        "(label istio.io/waypoint-for)"
    ]


def test_delete(tmp_path: Path) -> None:
    root_dir = folder(tmp_path)
    run("apply", "-n", "demo", "--dir", str(root_dir))
    run("apply", "-n", "demo", "--name", "second", "--dir", str(root_dir))
    out = run("delete", "-n", "demo", "--dir", str(root_dir))
    assert out.exit_code == 0 and "waypoint demo/waypoint deleted" in out.output
    assert set(FolderSource(root_dir).load().gateways) == {("demo", "second")}
    missing = CliRunner().invoke(
        root, ["waypoint", "delete", "-n", "demo", "gone", "--dir", str(root_dir)]
    )
    assert isinstance(missing.exception, WaypointCommandError)
    assert "no waypoint demo/gone" in str(missing.exception)
    assert run("delete", "-n", "demo", "--all", "--dir", str(root_dir)).exit_code == 0
    assert FolderSource(root_dir).load().gateways == {}


@pytest.mark.parametrize(
    "args",
    [
        ("apply", "-n", "demo", "--name", "../../escape"),
        ("apply", "-n", "Demo/x"),
        ("generate", "-n", "demo", "--name", "Not_A_Name"),
        ("delete", "-n", "demo", "../gone"),
    ],
)
def test_names_that_are_not_kubernetes_names_are_refused_with_a_hint(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    out = CliRunner().invoke(
        root, ["waypoint", *args, *(["--dir", str(tmp_path)] * (args[0] != "generate"))]
    )
    assert isinstance(out.exception, WaypointCommandError), out.output
    assert "is not a valid" in str(out.exception) and out.exception.hint
    assert list(tmp_path.rglob("*")) == [] and not (tmp_path.parent / "escape.yaml").exists()


def test_enroll_namespace_refuses_a_namespace_with_malformed_labels(tmp_path: Path) -> None:
    (tmp_path / "ns.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: [a]}\n"
    )
    out = CliRunner().invoke(
        root, ["waypoint", "apply", "-n", "demo", "--enroll-namespace", "--dir", str(tmp_path)]
    )
    assert isinstance(out.exception, WaypointCommandError), out.output
    assert "metadata.labels is not a mapping" in str(out.exception) and out.exception.hint


def test_delete_keeps_other_documents_of_a_shared_file(tmp_path: Path) -> None:
    gateway = yaml.safe_dump(waypoint_gateway("demo", "waypoint", TrafficType.ALL))
    (tmp_path / "all.yaml").write_text(APP + "---\n" + gateway)
    assert run("delete", "-n", "demo", "--dir", str(tmp_path)).exit_code == 0
    state = FolderSource(tmp_path).load()
    assert state.gateways == {} and ("demo", "backend") in state.services


class _FakeCustom:
    def __init__(self, store: dict[tuple[str, str], Any]) -> None:
        self.store = store

    def create_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, body: Any
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        assert (group, version, plural) == ("gateway.networking.k8s.io", "v1", "gateways")
        key = (ns, body["metadata"]["name"])
        if key in self.store:
            raise ApiException(status=409, reason="AlreadyExists")
        self.store[key] = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}

    def get_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str
    ) -> Any:
        return self.store[(ns, name)]

    def replace_namespaced_custom_object(self, *args: Any) -> None:
        ns, name, body = args[2], args[4], args[5]
        assert (
            body["metadata"]["resourceVersion"]
            == self.store[(ns, name)]["metadata"]["resourceVersion"]
        )
        self.store[(ns, name)] = body

    def delete_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, name: str
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        if self.store.pop((ns, name), None) is None:
            raise ApiException(status=404, reason="NotFound")


class _FakeCore:
    patches: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, _client: Any) -> None:
        pass

    def patch_namespace(self, name: str, body: Any) -> None:
        if name == "missing":
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=404, reason="Not Found")
        self.patches.append((name, body))


def test_kube_store_creates_replaces_deletes_and_labels(monkeypatch: Any) -> None:
    from kubernetes import client

    from waypoint.cli import KubeStore

    objects: dict[tuple[str, str], Any] = {}
    monkeypatch.setattr(client, "CustomObjectsApi", lambda _c: _FakeCustom(objects))
    monkeypatch.setattr(client, "CoreV1Api", _FakeCore)
    store = KubeStore(None, None, api_client=object())
    store.apply(waypoint_gateway("demo", "waypoint", TrafficType.SERVICE))
    store.apply(waypoint_gateway("demo", "waypoint", TrafficType.ALL))
    assert objects[("demo", "waypoint")]["metadata"]["labels"] == {"istio.io/waypoint-for": "all"}
    store.label_namespace("demo", {"istio.io/use-waypoint": "waypoint"})
    assert _FakeCore.patches[-1] == (
        "demo",
        {"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}},
    )
    assert store.delete("demo", "waypoint") and not store.delete("demo", "waypoint")
    with pytest.raises(WaypointCommandError) as refused:
        store.label_namespace("missing", {"istio.io/use-waypoint": "waypoint"})
    assert "cannot label namespace missing: Not Found" in str(refused.value)
    assert refused.value.hint
