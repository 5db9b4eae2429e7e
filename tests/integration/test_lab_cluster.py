"""A real lab in network namespaces: routing, names, workloads, objects, teardown.

Needs root. Every lab here has a random name and its own run folder, and is removed by
name in a ``finally`` even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab import Lab, LabSpec, ServicePort
from lab.errors import LabExistsError, LabProcessError, NoSuchObjectError
from lab.model import Pod

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
AMBIENT = [sys.executable, "-m", "ambient"]
BULK_BYTES = 50_000_000


def _ambient(*args: str, check: bool) -> subprocess.CompletedProcess[str]:
    """Runs the ``ambient`` CLI in a fresh process, as a user would."""
    return subprocess.run(
        [*AMBIENT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _name() -> str:
    return f"lt{uuid.uuid4().hex[:8]}"


def _netns_with(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in out.stdout.splitlines())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _netns_inodes(prefix: str) -> set[int]:
    return {os.stat(f"/run/netns/{n}").st_ino for n in _netns_with(prefix)}


def _processes_in(inodes: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino in inodes and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _assert_gone(name: str, run_root: Path, pids: list[int], inodes: set[int]) -> None:
    assert _netns_with(f"{name}-") == []
    assert _processes_in(inodes) == []
    etc = Path("/etc/netns")
    assert not etc.is_dir() or not [p for p in etc.iterdir() if p.name.startswith(f"{name}-")]
    assert not (run_root / name).exists()
    assert [pid for pid in pids if _alive(pid)] == []


def _http(lab: Lab, src: Pod | str, url: str, count: int = 1) -> dict[str, object]:
    done = lab.exec(
        src,
        ["python", "-m", "lab.workloads.client", "http", url, "--count", str(count), "--json"],
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """2 nodes, 2 pods per node, an echo server in each pod, a Service over them."""
    run_root = tmp_path_factory.mktemp("labrun")
    name = _name()
    try:
        with Lab.create(LabSpec(name=name, nodes=2, run_root=run_root)) as lab:
            lab.add_namespace("demo", labels={"istio.io/dataplane-mode": "ambient"})
            for node in ("node1", "node2"):
                for i in (1, 2):
                    pod = lab.add_pod(
                        f"{node}-p{i}",
                        namespace="demo",
                        node=node,
                        labels={"app": "echo"},
                        service_account="echo",
                    )
                    # no text given: the lab makes it "Hello from <pod name>"
                    lab.start_workload(pod, "http-echo", ["-listen=:8080"])
            lab.add_service(
                "echo",
                namespace="demo",
                selector={"app": "echo"},
                ports=[ServicePort(port=80, target_port=8080, name="http")],
            )
            yield lab
    finally:
        Lab.destroy_by_name(name, run_root)


def test_topology(cluster: Lab) -> None:
    assert [n.name for n in cluster.nodes] == ["node1", "node2"]
    assert sorted(_netns_with(f"{cluster.name}-")) == sorted(
        [f"{cluster.name}-fabric", f"{cluster.name}-outside"]
        + [n.netns for n in cluster.nodes]
        + [p.netns for p in cluster.pods]
    )
    for pod in cluster.pods:
        node = cluster.node(pod.node)
        assert pod.ip.startswith(node.pod_cidr.rsplit(".", 2)[0] + ".")
        links = subprocess.run(
            ["ip", "-n", node.netns, "-o", "link", "show", pod.host_ifname],
            capture_output=True,
            text=True,
            check=False,
        )
        assert links.returncode == 0, f"{pod.host_ifname} missing in {node.netns}"
        route = subprocess.run(
            ["ip", "-n", node.netns, "route", "get", pod.ip],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"dev {pod.host_ifname}" in route


def test_http_to_a_pod_on_the_other_node_shows_the_real_client(cluster: Lab) -> None:
    src, dst = cluster.pod("demo/node1-p1"), cluster.pod("demo/node2-p1")
    result = _http(cluster, src, f"http://{dst.ip}:8080/", count=3)
    assert result["ok"] == 3
    bodies = list(result["bodies"])  # type: ignore[call-overload]
    assert all(b.startswith(f"Hello from node2-p1\nclient: {src.ip}:") for b in bodies)


def test_http_to_a_pod_on_the_same_node_shows_the_real_client(cluster: Lab) -> None:
    src, dst = cluster.pod("node1-p1"), cluster.pod("node1-p2")
    result = _http(cluster, src, f"http://{dst.ip}:8080/")
    body = next(iter(result["bodies"]))  # type: ignore[call-overload]
    assert body.startswith(f"Hello from node1-p2\nclient: {src.ip}:")


def test_outside_reaches_pods_through_their_node(cluster: Lab) -> None:
    dst = cluster.pod("node2-p2")
    result = _http(cluster, "outside", f"http://{dst.ip}:8080/")
    body = next(iter(result["bodies"]))  # type: ignore[call-overload]
    assert body.startswith(f"Hello from node2-p2\nclient: {cluster.outside.ip}:")


def test_pods_resolve_services_by_name(cluster: Lab) -> None:
    svc = cluster.service("echo", "demo")
    for name in ("echo", "echo.demo", "echo.demo.svc.cluster.local"):
        done = cluster.exec(
            "node1-p1", ["python", "-c", f"import socket; print(socket.gethostbyname({name!r}))"]
        )
        assert done.stdout.strip() == svc.vip, done.stderr
    unknown = cluster.exec("node1-p1", ["getent", "hosts", "nope.demo"], timeout=10)
    assert unknown.returncode != 0


def test_bulk_transfer_of_50_mb_arrives_intact(cluster: Lab) -> None:
    src, dst = cluster.pod("node1-p2"), cluster.pod("node2-p2")
    sink = cluster.start_workload(dst, "tcp-echo", ["--listen", ":9000", "--mode", "sink"])
    try:
        done = cluster.exec(
            src,
            [
                "python",
                "-m",
                "lab.workloads.client",
                "bulk",
                f"{dst.ip}:9000",
                "--bytes",
                str(BULK_BYTES),
                "--mode",
                "sink",
            ],
            timeout=60,
        )
        result = json.loads(done.stdout)
        assert result["match"] is True, result
        assert result["server"]["bytes"] == BULK_BYTES
        assert result["server"]["client"].startswith(f"{src.ip}:")
    finally:
        cluster.stop(sink)
    assert f"sha256={result['sha256_sent']}" in sink.log_text()


def test_node_processes_see_the_host_bpffs_and_the_node_network(cluster: Lab) -> None:
    node = cluster.nodes[0]
    proc = cluster.spawn_in_node(node, ["sleep", "30"], name="probe")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.readlink(f"/proc/{proc.pid}/exe").endswith(
            "nsenter"
        ):
            time.sleep(0.02)
        assert (
            os.stat(f"/proc/{proc.pid}/ns/net").st_ino == os.stat(f"/run/netns/{node.netns}").st_ino
        )
        assert os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    finally:
        cluster.stop(proc)
    fs = cluster.exec(node, ["stat", "-f", "-c", "%T", "/sys/fs/bpf"], check=True)
    assert fs.stdout.strip() == "bpf_fs"
    addr = cluster.exec(node, ["ip", "-o", "-4", "addr", "show", "dev", node.uplink], check=True)
    assert f"inet {node.ip}/24" in addr.stdout


def test_objects_follow_the_cluster(cluster: Lab) -> None:
    config = cluster.config_dir
    pod = cluster.pod("node2-p1")
    obj = yaml.safe_load((config / "pod.demo.node2-p1.yaml").read_text())
    assert obj["status"]["podIP"] == pod.ip
    assert obj["spec"]["nodeName"] == "node2"
    assert obj["spec"]["serviceAccountName"] == "echo"
    ns = yaml.safe_load((config / "namespace.demo.yaml").read_text())
    assert ns["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    svc = yaml.safe_load((config / "service.demo.echo.yaml").read_text())
    assert svc["spec"]["clusterIP"] == cluster.service("echo", "demo").vip

    cluster.set_pod_labels(pod, {"istio.io/dataplane-mode": "none"})
    obj = yaml.safe_load((config / "pod.demo.node2-p1.yaml").read_text())
    assert obj["metadata"]["labels"] == {"app": "echo", "istio.io/dataplane-mode": "none"}
    cluster.set_namespace_labels("demo", {"istio.io/dataplane-mode": None})
    ns = yaml.safe_load((config / "namespace.demo.yaml").read_text())
    assert "istio.io/dataplane-mode" not in ns["metadata"]["labels"]
    cluster.set_namespace_labels("demo", {"istio.io/dataplane-mode": "ambient"})
    vip = cluster.service("echo", "demo").vip
    cluster.set_service_labels("demo/echo", {"istio.io/use-waypoint": "waypoint"})
    svc = yaml.safe_load((config / "service.demo.echo.yaml").read_text())
    assert svc["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"
    assert svc["spec"]["clusterIP"] == vip
    cluster.set_service_labels("demo/echo", {"istio.io/use-waypoint": None})
    svc = yaml.safe_load((config / "service.demo.echo.yaml").read_text())
    assert "istio.io/use-waypoint" not in svc["metadata"].get("labels", {})


def test_failures_are_bounded_and_explained(cluster: Lab) -> None:
    with pytest.raises(LabProcessError, match="did not finish within"):
        cluster.exec("node1-p1", ["sleep", "10"], timeout=0.5)
    with pytest.raises(LabProcessError, match="exited with code") as err:
        cluster.start_workload("node1-p1", "http-echo", ["-listen=:8080"])  # port taken
    assert "address already in use" in (err.value.hint or "").lower()
    assert "Traceback" not in (err.value.hint or "")
    with pytest.raises(NoSuchObjectError):
        cluster.pod("nope")
    with pytest.raises(LabExistsError):
        cluster.add_pod("node1-p1", namespace="demo")


def test_remove_pod_removes_its_namespace_process_and_file(cluster: Lab) -> None:
    extra = cluster.add_pod("extra", namespace="demo", node="node1", labels={"app": "x"})
    proc = cluster.start_workload(extra, "tcp-echo", ["--listen", ":9100"])
    assert (cluster.config_dir / "pod.demo.extra.yaml").exists()
    cluster.remove_pod(extra)
    assert not (cluster.config_dir / "pod.demo.extra.yaml").exists()
    assert extra.netns not in _netns_with(cluster.name)
    assert not Path(f"/etc/netns/{extra.netns}").exists()
    assert not _alive(proc.pid)
    links = subprocess.run(
        ["ip", "-n", cluster.nodes[0].netns, "-o", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert extra.host_ifname not in links


def test_another_process_sees_and_changes_the_lab(cluster: Lab) -> None:
    root = str(Path(cluster.run_dir).parent)
    status = _ambient(
        "lab", "status", "--name", cluster.name, "--run-root", root, "-o", "json", check=True
    )
    data = json.loads(status.stdout)
    assert {p["name"] for p in data["pods"]} >= {"node1-p1", "node2-p2"}
    done = _ambient(
        "lab",
        "exec",
        "--name",
        cluster.name,
        "--run-root",
        root,
        "demo/node1-p1",
        "--",
        "python",
        "-m",
        "lab.workloads.client",
        "http",
        "http://echo.demo/",
        check=False,
    )
    # no mesh yet: the VIP has no route, so the request fails fast, not with a timeout
    assert done.returncode == 1
    added = _ambient(
        "lab",
        "add-service",
        "--name",
        cluster.name,
        "--run-root",
        root,
        "direct",
        "-n",
        "demo",
        "-s",
        "app=echo",
        "-p",
        "8080",
        check=True,
    )
    assert "demo/direct" in added.stdout
    assert cluster.service("direct", "demo").ports[0].target_port == 8080
    resolved = cluster.exec("node2-p1", ["getent", "hosts", "direct.demo"], check=True)
    assert resolved.stdout.split()[0] == cluster.service("direct", "demo").vip


def test_down_removes_everything_and_leaves_the_root_namespace_alone(tmp_path: Path) -> None:
    name = _name()
    links_before = _root_links()
    pids: list[int] = []
    try:
        lab = Lab.create(LabSpec(name=name, nodes=2, run_root=tmp_path))
        a = lab.add_pod("a", node="node1")
        b = lab.add_pod("b", node="node2")
        pids.append(lab.start_workload(a, "http-echo", ["-listen=:8080"]).pid)
        pids.append(lab.start_workload(b, "tcp-echo", ["--listen", ":9000"]).pid)
        pids.append(lab.spawn_in_node("node1", ["sleep", "60"], name="agent").pid)
        pins = Path("/sys/fs/bpf/ambient") / lab.nodes[0].id
        pins.mkdir(parents=True)  # as a node agent would
        assert _root_links() == links_before
        inodes = _netns_inodes(f"{name}-")
        assert len(_processes_in(inodes)) >= 3
        down = _ambient(
            "lab", "down", "--name", name, "--run-root", str(tmp_path), "-o", "json", check=False
        )
        assert down.returncode == 0, down.stderr
        report = json.loads(down.stdout)
        assert report["netns_removed"] == 6  # fabric, 2 nodes, outside, 2 pods
        assert report["processes_killed"] >= 3
        for proc in lab.processes:  # reap our children so they are not zombies
            if proc.popen is not None:
                proc.popen.wait(5)
        _assert_gone(name, tmp_path, pids, inodes)
        assert _root_links() == links_before
        assert not pins.exists()
    finally:
        Lab.destroy_by_name(name, tmp_path)


def test_two_labs_with_different_prefixes_run_at_once(tmp_path: Path) -> None:
    names = [_name(), _name()]
    try:
        labs = [Lab.create(LabSpec(name=n, nodes=1, run_root=tmp_path)) for n in names]
        pods = [lab.add_pod("same", node="node1") for lab in labs]
        assert pods[0].ip == pods[1].ip  # same plan, separate worlds
        for lab, pod in zip(labs, pods, strict=True):
            lab.start_workload(pod, "http-echo", [f"-text=I am {lab.name}", "-listen=:8080"])
        for lab in labs:
            peer = lab.add_pod("peer", node="node1")
            result = _http(lab, peer, f"http://{pods[0].ip}:8080/")
            assert next(iter(result["bodies"])).startswith(f"I am {lab.name}\n")  # type: ignore[call-overload]
        labs[0].destroy()
        assert _netns_with(f"{names[0]}-") == []
        assert len(_netns_with(f"{names[1]}-")) == 5
        result = _http(labs[1], "peer", f"http://{pods[1].ip}:8080/")
        assert result["ok"] == 1
    finally:
        for n in names:
            Lab.destroy_by_name(n, tmp_path)


BUILDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lab import Lab, LabSpec
    lab = Lab.create(LabSpec(name=sys.argv[1], nodes=2, run_root=Path(sys.argv[2])))
    a = lab.add_pod("a", namespace="demo", node="node1")
    b = lab.add_pod("b", namespace="demo", node="node2")
    lab.start_workload(b, "http-echo", ["-listen=:8080"])
    lab.spawn_in_node("node1", ["sleep", "120"], name="agent")
    print("READY", flush=True)
    time.sleep(120)
    """
)


def test_down_after_the_builder_was_killed(tmp_path: Path) -> None:
    name = _name()
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER, name, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert builder.stdout is not None
        line = builder.stdout.readline()
        assert line.strip() == "READY", line
        state = json.loads((tmp_path / name / "state.json").read_text())
        pids = [p["pid"] for p in state["processes"].values()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        builder.send_signal(signal.SIGKILL)
        builder.wait(10)
        assert len(_netns_with(f"{name}-")) == 6
        inodes = _netns_inodes(f"{name}-")
        down = _ambient("lab", "down", "--name", name, "--run-root", str(tmp_path), check=False)
        assert down.returncode == 0, down.stderr
        _assert_gone(name, tmp_path, pids, inodes)
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait(10)
        Lab.destroy_by_name(name, tmp_path)


def test_cli_up_status_exec_down(tmp_path: Path) -> None:
    name = _name()
    root = str(tmp_path)
    try:
        up = _ambient(
            "lab",
            "up",
            "--name",
            name,
            "--run-root",
            root,
            "--pods-per-node",
            "1",
            "--namespace",
            "demo",
            "-o",
            "json",
            check=True,
        )
        built = json.loads(up.stdout)
        assert [p["name"] for p in built["pods"]] == ["pod-node1-1", "pod-node2-1"]
        _ambient(
            "lab",
            "start",
            "--name",
            name,
            "--run-root",
            root,
            "demo/pod-node2-1",
            "tcp-echo",
            "--",
            "--listen",
            ":9000",
            check=True,
        )
        target = f"{built['pods'][1]['ip']}:9000"
        bulk = _ambient(
            "lab",
            "exec",
            "--name",
            name,
            "--run-root",
            root,
            "pod-node1-1",
            "--",
            "python",
            "-m",
            "lab.workloads.client",
            "bulk",
            target,
            "--bytes",
            "1000000",
            "--mode",
            "echo",
            check=True,
        )
        assert json.loads(bulk.stdout)["match"] is True
        status = _ambient("lab", "status", "--name", name, "--run-root", root, check=True)
        assert "pod-node2-1-tcp-echo" in status.stdout and "running" in status.stdout
        inodes = _netns_inodes(f"{name}-")
        pid = json.loads(
            _ambient(
                "lab", "status", "--name", name, "--run-root", root, "-o", "json", check=True
            ).stdout
        )["processes"][0]["pid"]
        _ambient("lab", "down", "--name", name, "--run-root", root, check=True)
        _assert_gone(name, tmp_path, [pid], inodes)
    finally:
        Lab.destroy_by_name(name, tmp_path)
