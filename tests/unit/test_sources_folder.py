"""The folder cluster source: YAML files to domain objects, bad input named precisely."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane.errors import FolderSourceError
from controlplane.model import ClusterState, MtlsMode, ServicePort, Severity, is_enrolled
from controlplane.sources import FolderSource
from controlplane.sources.documents import parse_text, read_file
from controlplane.sources.folder import FULL_SCAN_INTERVAL

GOOD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata:
  name: backend-v1
  namespace: demo
  uid: '1234'
  labels: {app: backend, version: v1}
spec:
  nodeName: node1
  serviceAccountName: backend
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 9000}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def messages(state: ClusterState) -> list[str]:
    return [str(i) for i in (*state.errors, *state.warnings)]


def test_loads_multi_document_files_recursively(tmp_path: Path) -> None:
    write(tmp_path, "a/cluster.yaml", GOOD)
    write(tmp_path, "b/c/sa.yml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\n")
    write(tmp_path, "notes.txt", "not read")
    write(tmp_path, ".hidden/skip.yaml", "kind: [")
    state = FolderSource(tmp_path).load()
    assert state.errors == () and state.warnings == ()
    assert set(state.namespaces) == {"demo"}
    pod = state.pods[("demo", "backend-v1")]
    assert (pod.uid, pod.node_name, pod.service_account) == ("1234", "node1", "backend")
    assert (pod.ip, pod.ips, pod.phase, pod.ready) == (
        "10.244.1.5",
        ("10.244.1.5",),
        "Running",
        True,
    )
    assert pod.named_port("http") == 8080
    assert is_enrolled(pod, state.namespace_of(pod))
    svc = state.services[("demo", "backend")]
    assert svc.cluster_ips == ("10.96.0.10",)
    assert svc.ports == (
        ServicePort(80, "http", name="http"),
        ServicePort(9000, 9000, name="admin"),
    )
    assert ("default", "x") in state.service_accounts


def test_a_single_file_and_kind_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "list.yaml",
        """\
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Namespace, metadata: {name: one}}
        - {apiVersion: v1, kind: Namespace, metadata: {name: two}}
        """,
    )
    assert set(FolderSource(path).load().namespaces) == {"one", "two"}


def test_pod_without_status_is_not_ready_and_has_no_ip(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n")
    pod = FolderSource(tmp_path).load().pods[("default", "p")]
    assert (pod.ip, pod.ready, pod.phase) == (None, False, "")


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FolderSourceError, match="does not exist"):
        FolderSource(tmp_path / "nope").load()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: [unclosed\n", "x.yaml:2: invalid YAML: did not find expected"),
        ("a: 1\n---\nb: [\n", "x.yaml:4: invalid YAML"),
        ("- just\n- a list\n", "x.yaml:1: not a Kubernetes object: expected a mapping"),
        ("selector: {app: x}\n", "x.yaml:1: not a Kubernetes object: no apiVersion and kind"),
        ("apiVersion: v1\nkind: Pod\n", "x.yaml:1: Pod/?: metadata: required field is missing"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: d}\n",
            "x.yaml:1: Pod/d/?: metadata.name: required field is missing",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n",
            "x.yaml:1: Pod/default/Bad_Name: metadata.name: 'Bad_Name' is not a valid name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {version: 1}}\n",
            "x.yaml:1: Pod/default/p: metadata.labels.version: must be a string, not an integer",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.1.2}\n",
            "x.yaml:1: Pod/default/p: status.podIP: '10.1.2' is not an IP address",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
            "spec: {containers: [{name: a, ports: [{containerPort: 70000}]}]}\n",
            "Pod/default/p: spec.containers[0].ports[0].containerPort: "
            "must be a port number 1-65535, not 70000",
        ),
        (
            "apiVersion: v2\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n",
            "x.yaml:1: Service/default/s: apiVersion: v2 is not a version of Service we read",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
            "spec: {ports: [{port: 80}, {port: 81}]}\n",
            "Service/default/s: spec.ports[0].name: required when a service has more than one",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
            "spec: {ports: [{port: 80, targetPort: Not_A_Name}]}\n",
            "spec.ports[0].targetPort: 'Not_A_Name' is neither a port number nor a port name",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: banana}\n",
            "Service/default/s: spec.clusterIP: 'banana' is not an IP address",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: pa, namespace: demo}\nspec: {mtls: {mode: STRICTEST}}\n",
            "PeerAuthentication/demo/pa: spec.mtls.mode: 'STRICTEST' is not one of",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: pa, namespace: demo}\n"
            "spec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n",
            "spec.portLevelMtls: port-level mTLS needs a workload selector",
        ),
    ],
    ids=[
        "yaml-syntax",
        "yaml-syntax-2nd-doc",
        "not-a-mapping",
        "fragment",
        "no-metadata",
        "no-name",
        "bad-name",
        "label-not-string",
        "bad-pod-ip",
        "bad-container-port",
        "bad-api-version",
        "unnamed-ports",
        "bad-target-port",
        "bad-cluster-ip",
        "bad-mtls-mode",
        "port-level-without-selector",
    ],
)
def test_malformed_input_is_named(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "x.yaml", text)
    state = FolderSource(tmp_path).load()
    errors = [str(e) for e in state.errors]
    assert any(expected in e for e in errors), errors
    assert all(e.startswith(str(tmp_path / "x.yaml")) for e in errors)


def test_bad_objects_are_skipped_and_the_rest_loads(tmp_path: Path) -> None:
    write(
        tmp_path,
        "mixed.yaml",
        """\
        apiVersion: v1
        kind: Namespace
        metadata: {name: good}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: bad}
        status: {podIP: nonsense}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: fine, namespace: good}
        """,
    )
    state = FolderSource(tmp_path).load()
    assert set(state.namespaces) == {"good"} and ("good", "fine") in state.service_accounts
    assert state.pods == {}
    assert [(e.line, e.kind, e.name, e.field) for e in state.errors] == [
        (5, "Pod", "bad", "status.podIP")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: gw}\n",
            "warning: ServiceEntry/gw: kind: ServiceEntries are not served yet",
        ),
        (
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
            "warning: Widget/w: kind: unknown kind example.com/v1 Widget; ignored",
        ),
        (
            "apiVersion: v1\nkind: Namespace\n"
            "metadata: {name: n, labels: {istio-injection: enabled}}\n",
            "enroll the namespace with the label istio.io/dataplane-mode=ambient",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
            "workload controllers are not expanded into pods here; write Pod objects",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
            "spec: {selector: {matchLabels: {}}, mtls: {mode: STRICT}}\n",
            "spec.selector: an empty selector selects the whole namespace",
        ),
    ],
    ids=["service-entry", "unknown-kind", "injection-label", "deployment", "empty-selector"],
)
def test_ignored_things_are_warnings(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "x.yaml", text)
    state = FolderSource(tmp_path).load()
    assert state.errors == ()
    assert any(expected in w for w in messages(state)), messages(state)


def test_duplicates_keep_the_first(tmp_path: Path) -> None:
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {v: '%s'}}\n"
    write(tmp_path, "a.yaml", ns % "a")
    write(tmp_path, "b.yaml", ns % "b")
    state = FolderSource(tmp_path).load()
    assert state.namespaces["n"].labels["v"] == "a"
    assert ["defined again" in e.message and e.file.endswith("b.yaml") for e in state.errors] == [
        True
    ]


def bump(path: Path, text: str) -> None:
    """Rewrites a file so that its stamp surely changes, however coarse the clock."""
    before = path.stat().st_mtime_ns
    path.write_text(textwrap.dedent(text))
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_last_good_object_stays_when_its_file_turns_bad(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", GOOD)
    source = FolderSource(tmp_path)
    first = source.load()
    assert ("demo", "backend-v1") in first.pods

    bump(path, GOOD.replace("podIP: 10.244.1.5", "podIP: 10.244.1.999"))
    second = source.load()
    assert second.pods == first.pods
    assert any(
        "status.podIP" in e.field and "previous version stays in force" in e.message
        for e in second.errors
    )

    bump(path, GOOD + "---\nkind: [broken\n")
    third = source.load()
    assert third.same_objects(first)
    assert any("invalid YAML" in e.message for e in third.errors)

    bump(path, GOOD.split("---", maxsplit=1)[0] + "---\nkind: [broken\n")
    assert source.load().same_objects(first), "a half-written file removes nothing"

    bump(path, GOOD.split("---", maxsplit=1)[0])
    fourth = source.load()
    assert fourth.errors == () and fourth.pods == {} and "demo" in fourth.namespaces

    path.unlink()
    assert FolderSource(tmp_path).load().namespaces == {}
    assert source.load().namespaces == {}


def test_read_file_faults(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00kind")
    assert "not UTF-8" in str(read_file(tmp_path / "bin.yaml").fault)
    assert "cannot read the file" in str(read_file(tmp_path).fault)
    content = parse_text("---\n---\napiVersion: v1\n", "f")
    assert [d.line for d in content.documents] == [3]


NS_TWO = "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n"


def test_watch_yields_on_change(tmp_path: Path) -> None:
    write(tmp_path, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n")

    async def scenario() -> list[set[str]]:
        seen: list[set[str]] = []
        source = FolderSource(tmp_path)
        async for state in source.watch(interval=0.02):
            seen.append(set(state.namespaces))
            if len(seen) == 1:
                write(
                    tmp_path,
                    "more.yaml",
                    "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n",
                )
            elif len(seen) == 2:
                (tmp_path / "ns.yaml").unlink()
            else:
                break
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert seen == [{"one"}, {"one", "two"}, {"two"}]


def test_watch_catches_a_file_rewritten_in_place_without_listing_each_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small folder is polled like a big one: a stat of the folder per poll, its files'
    stamps once per FULL_SCAN_INTERVAL (which finds a file rewritten in place: same
    inode, so the folder's mtime does not move), never a full listing per poll."""
    path = write(tmp_path, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n")
    past = time.time_ns() - 10_000_000_000
    os.utime(tmp_path, ns=(past, past))  # not a folder that may still be changing (racy)
    listings = 0
    real_scandir = os.scandir

    def counting_scandir(folder: Any) -> Any:
        nonlocal listings
        listings += 1
        return real_scandir(folder)

    async def scenario() -> tuple[list[set[str]], float, int]:
        seen: list[set[str]] = []
        started = rewritten = time.monotonic()
        async for state in FolderSource(tmp_path).watch(interval=0.02):
            seen.append(set(state.namespaces))
            if len(seen) == 1:
                monkeypatch.setattr(os, "scandir", counting_scandir)
                inode = path.stat().st_ino
                bump(path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n")
                assert path.stat().st_ino == inode
                rewritten = time.monotonic()
            else:
                return seen, time.monotonic() - rewritten, listings
        return seen, started, listings

    seen, took, listed = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert seen == [{"one"}, {"two"}]
    assert took < FULL_SCAN_INTERVAL + 1.0
    assert listed == 0, "the folder was listed although no file came or went"


def test_peer_authentication_decoding(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pa.yaml",
        """\
        apiVersion: security.istio.io/v1beta1
        kind: PeerAuthentication
        metadata: {name: pa, namespace: demo}
        spec:
          selector: {matchLabels: {app: backend}}
          mtls: {mode: STRICT}
          portLevelMtls:
            8080: {mode: PERMISSIVE}
            "9090": {mode: DISABLE}
        """,
    )
    state = FolderSource(tmp_path).load()
    assert state.errors == ()
    pa = state.peer_authentications[("demo", "pa")]
    assert pa.mode is MtlsMode.STRICT and pa.selector == {"app": "backend"}
    assert dict(pa.port_level_mtls) == {8080: MtlsMode.PERMISSIVE, 9090: MtlsMode.DISABLE}
    assert all(w.severity is Severity.WARNING for w in state.warnings)


def test_watch_keeps_the_last_state_while_the_folder_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cfg"
    write(folder, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n")

    def restore() -> None:
        (tmp_path / "away").rename(folder)
        write(folder, "more.yaml", NS_TWO)

    async def scenario() -> list[set[str]]:
        seen: list[set[str]] = []
        async for state in FolderSource(folder).watch(interval=0.02):
            seen.append(set(state.namespaces))
            if len(seen) == 1:
                folder.rename(tmp_path / "away")  # polls now find nothing for a while
                asyncio.get_running_loop().call_later(0.3, restore)
            else:
                break
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=10)) == [{"one"}, {"one", "two"}]
    assert "does not exist; keeping the last state" in caplog.text

    async def first_of_missing() -> None:
        async for _ in FolderSource(tmp_path / "never").watch():
            break

    with pytest.raises(FolderSourceError):
        asyncio.run(first_of_missing())
