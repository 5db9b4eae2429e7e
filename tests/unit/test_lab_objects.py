"""Objects the lab writes (Kubernetes YAML, DNS files) and its saved state: no root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lab import dns, objects
from lab.cluster import LabSpec, _merge_labels
from lab.errors import LabSpecError
from lab.model import LabState, Node, Pod, ProcessRecord, Service, ServicePort
from lab.state import StateStore

NODE = Node(
    name="node1",
    index=1,
    netns="t1-node1",
    uplink="eth0",
    ip="172.30.9.11",
    pod_cidr="10.244.1.0/24",
    pod_gateway="10.244.1.1",
)
POD = Pod(
    name="backend-v1",
    namespace="demo",
    node="node1",
    netns="t1-pod-backend-v1.demo",
    ip="10.244.1.2",
    host_ifname="veth0123456789",
    uid="3b0f3e4c-0000-4000-8000-000000000001",
    service_account="backend",
    labels={"app": "backend", "version": "v1"},
)
SVC = Service(
    name="backend",
    namespace="demo",
    vip="10.96.0.10",
    selector={"app": "backend"},
    ports=(ServicePort(port=80, target_port=8080, name="http"),),
)


def test_pod_object_has_what_a_control_plane_reads(tmp_path: Path) -> None:
    path = objects.write_object(tmp_path, objects.pod_object(POD, NODE))
    assert path.name == "pod.demo.backend-v1.yaml"
    obj = yaml.safe_load(path.read_text())
    assert obj["kind"] == "Pod"
    assert obj["metadata"] == {
        "name": "backend-v1",
        "namespace": "demo",
        "uid": POD.uid,
        "labels": {"app": "backend", "version": "v1"},
        "creationTimestamp": objects.CREATED,
    }
    assert obj["spec"]["nodeName"] == "node1"
    assert obj["spec"]["serviceAccountName"] == "backend"
    assert obj["status"]["podIP"] == "10.244.1.2"
    assert obj["status"]["podIPs"] == [{"ip": "10.244.1.2"}]
    assert obj["status"]["hostIP"] == "172.30.9.11"
    assert obj["status"]["phase"] == "Running"
    assert {"type": "Ready", "status": "True"} in obj["status"]["conditions"]


def test_namespace_object_carries_labels(tmp_path: Path) -> None:
    obj = objects.namespace_object("demo", {"istio.io/dataplane-mode": "ambient"})
    path = objects.write_object(tmp_path, obj)
    assert path.name == "namespace.demo.yaml"
    back = yaml.safe_load(path.read_text())
    assert back == obj
    assert back["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "demo",
        "istio.io/dataplane-mode": "ambient",
    }


def test_service_object(tmp_path: Path) -> None:
    back = yaml.safe_load(objects.write_object(tmp_path, objects.service_object(SVC)).read_text())
    assert back["kind"] == "Service"
    assert back["spec"]["clusterIP"] == "10.96.0.10"
    assert back["spec"]["selector"] == {"app": "backend"}
    assert back["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    ]


def test_unnamed_port_gets_a_name() -> None:
    svc = Service(name="s", namespace="d", vip="10.96.0.11", ports=(ServicePort(9000, 9000),))
    assert objects.service_object(svc)["spec"]["ports"][0]["name"] == "tcp-9000"


def test_rewrite_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    objects.write_object(tmp_path, objects.pod_object(POD, NODE))
    relabelled = Pod(**{**POD.__dict__, "labels": {"app": "backend", "version": "v2"}})
    path = objects.write_object(tmp_path, objects.pod_object(relabelled, NODE))
    assert yaml.safe_load(path.read_text())["metadata"]["labels"]["version"] == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["pod.demo.backend-v1.yaml"]


def test_remove_object(tmp_path: Path) -> None:
    objects.write_object(tmp_path, objects.pod_object(POD, NODE))
    objects.remove_object(tmp_path, "Pod", "backend-v1", "demo")
    assert list(tmp_path.iterdir()) == []
    objects.remove_object(tmp_path, "Pod", "backend-v1", "demo")  # absent is fine


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = objects.write_object(tmp_path, objects.pod_object(POD, NODE))
    before = path.read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    relabelled = Pod(**{**POD.__dict__, "labels": {"app": "other"}})
    with pytest.raises(OSError, match="disk full"):
        objects.write_object(tmp_path, objects.pod_object(relabelled, NODE))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pod.demo.backend-v1.yaml"]


def test_hosts_file_resolves_services_as_a_cluster_would() -> None:
    other = Service(name="db", namespace="data", vip="10.96.0.12", ports=(ServicePort(5432, 5432),))
    text = dns.hosts_file(POD, [SVC, other])
    lines = text.splitlines()
    assert "10.96.0.10\tbackend backend.demo backend.demo.svc.cluster.local" in lines
    assert "10.96.0.12\tdb.data db.data.svc.cluster.local" in lines
    assert any(line.startswith("10.244.1.2\tbackend-v1 ") for line in lines)
    assert lines[0] == "127.0.0.1\tlocalhost"


def test_resolv_conf_searches_the_pods_namespace() -> None:
    text = dns.resolv_conf("demo")
    assert text.startswith("search demo.svc.cluster.local svc.cluster.local cluster.local\n")
    assert "nameserver 127.0.0.1" in text


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = LabState(
        name="t1",
        octet=9,
        node_count=2,
        run_dir=str(tmp_path),
        config_dir=str(tmp_path / "config"),
        netns=["t1-fabric", "t1-node1"],
        etc_netns=[POD.netns],
        namespaces={"demo": {"istio.io/dataplane-mode": "ambient"}},
        pods={POD.key: POD},
        services={SVC.key: SVC},
        processes={"echo": ProcessRecord("echo", 42, POD.netns, ("python", "-m", "x"), "/l", 7)},
        phase="ready",
    )
    store = StateStore(tmp_path)
    with store.locked():
        store.save(state)
    assert store.load() == state
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


def test_label_merge_sets_and_removes() -> None:
    assert _merge_labels({"a": "1", "b": "2"}, {"b": None, "c": "3"}) == {"a": "1", "c": "3"}


def test_spec_is_validated() -> None:
    with pytest.raises(LabSpecError):
        LabSpec(name="bad-name")
    with pytest.raises(LabSpecError):
        LabSpec(name="ok", nodes=0)
    with pytest.raises(LabSpecError):
        LabSpec(name="ok", octet=300)
    assert LabSpec(name="ok", nodes=3).nodes == 3
