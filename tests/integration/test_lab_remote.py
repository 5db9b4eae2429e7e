"""A lab spanning two "machines": each builds one node whose uplink is its own interface.

The machines are two network namespaces this test creates (``<id>vm1``, ``<id>vm2``),
joined by a veth pair made inside the first with its peer placed straight into the
second: the "private network" (192.168.56.0/24, as the Vagrantfile's). Each machine's
lab takes its end of that pair as the node's uplink, as ``ambient lab up
--node-index`` takes ``eth1`` on a VM. Nothing is created in the root namespace, and
everything is removed by name in ``finally`` blocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import network
from lab.cluster import Lab
from lab.errors import LabSpecError, NoSuchObjectError
from lab.remote import RemoteLab, RemoteNodeSpec

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
VM_IPS = {1: "192.168.56.11", 2: "192.168.56.12"}


def _ip(*args: str) -> str:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


@pytest.fixture
def machines() -> Iterator[dict[int, str]]:
    """Two "VM" namespaces joined by a veth pair, each end with the VM's address."""
    tag = f"rt{uuid.uuid4().hex[:6]}"
    vms = {1: f"{tag}vm1", 2: f"{tag}vm2"}
    try:
        for vm in vms.values():
            network.create_netns(vm)
        _ip("-n", vms[1], "link", "add", "priv1", "type", "veth", "peer", "name", "priv2",
            "netns", vms[2])  # fmt: skip
        for index, vm in vms.items():
            _ip("-n", vm, "addr", "add", f"{VM_IPS[index]}/24", "dev", f"priv{index}")
            _ip("-n", vm, "link", "set", f"priv{index}", "up")
        yield vms
    finally:
        for vm in vms.values():
            network.delete_netns(vm)


def _spec(vms: dict[int, str], index: int, name: str, run_root: Path) -> RemoteNodeSpec:
    other = 2 if index == 1 else 1
    return RemoteNodeSpec(
        name=name,
        node_index=index,
        uplink_device=f"priv{index}",
        fabric_ip=f"{VM_IPS[index]}/24",
        peers={other: VM_IPS[other]},
        host_netns=vms[index],
        run_root=run_root,
    )


def test_pods_on_two_machines_reach_each_other_over_the_private_network(
    machines: dict[int, str], tmp_path: Path
) -> None:
    names = {1: f"r{uuid.uuid4().hex[:6]}a", 2: f"r{uuid.uuid4().hex[:6]}b"}
    labs: list[RemoteLab] = []
    try:
        for index in (1, 2):
            labs.append(
                RemoteLab.create_remote(
                    _spec(machines, index, names[index], tmp_path / f"vm{index}")
                )
            )
        one, two = labs
        # the uplink left the "machine" for the node namespace, with the VM's address
        assert "priv1" not in _ip("-n", machines[1], "-o", "link")
        assert "192.168.56.11/24" in _ip("-n", one.nodes[0].netns, "-o", "addr", "show", "priv1")
        assert "10.244.2.0/24 via 192.168.56.12" in _ip("-n", one.nodes[0].netns, "route")
        with pytest.raises(NoSuchObjectError):
            one.node("node2")
        client = one.add_pod("client", node="node1")
        server = two.add_pod("server", node="node2")
        assert client.ip.startswith("10.244.1.") and server.ip.startswith("10.244.2.")
        two.start_workload(server, "http-echo", ["--listen", ":8080"])
        got = one.exec(
            client,
            ["python", "-m", "lab.workloads.client", "http", f"http://{server.ip}:8080/"],
            timeout=20,
        )
        assert "Hello from server" in got.stdout
        # a second process sees the remote lab as one (status, exec, down work by name)
        attached = Lab.attach(names[2], tmp_path / "vm2")
        assert isinstance(attached, RemoteLab)
        assert [n.name for n in attached.nodes] == ["node2"]
        assert attached.describe()["remote"]["peers"] == {"node1": "192.168.56.11"}
    finally:
        for lab in labs:
            lab.destroy()
    # each "machine" has its interface back, with its address
    for index, vm in machines.items():
        assert f"{VM_IPS[index]}/24" in _ip("-n", vm, "-o", "addr", "show", f"priv{index}")
    assert not [n for n in network.list_netns() if n.startswith(tuple(names.values()))]


def _ambient(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ambient", *args],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_up_and_down_from_the_command_line_give_the_uplink_back(
    machines: dict[int, str], tmp_path: Path
) -> None:
    name = f"r{uuid.uuid4().hex[:6]}d"
    try:
        up = _ambient(
            "lab", "up", "--name", name, "--run-root", str(tmp_path), "--node-index", "1",
            "--uplink-device", "priv1", "--fabric-ip", "192.168.56.11/24",
            "--peer", "2=192.168.56.12", "--host-netns", machines[1], "--pods-per-node", "1",
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert "pod-node1-1" in up.stdout
        done = subprocess.run(
            [sys.executable, "-m", "ambient", "lab", "down", "--name", name,
             "--run-root", str(tmp_path)],
            check=False, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        Lab.destroy_by_name(name, tmp_path)
    assert "192.168.56.11/24" in _ip("-n", machines[1], "-o", "addr", "show", "priv1")


def test_refuses_the_default_route_interface(machines: dict[int, str], tmp_path: Path) -> None:
    _ip("-n", machines[1], "route", "add", "default", "via", "192.168.56.12")
    with pytest.raises(LabSpecError, match="default route"):
        RemoteLab.create_remote(_spec(machines, 1, f"r{uuid.uuid4().hex[:6]}x", tmp_path))
    assert "priv1" in _ip("-n", machines[1], "-o", "link")


METRICS = """
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:15020/metrics", timeout=3).read().decode())
"""
READY = """
import sys, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:15021/healthz/ready", timeout=2).status)
except Exception as err:
    print("no", err)
"""


def test_the_mesh_runs_across_the_machines(machines: dict[int, str], tmp_path: Path) -> None:
    """Agents and ztunnels on both remote nodes: capture on the real uplink, HBONE over it.

    Each machine's agent reads its own lab's folder (its own pods); the ztunnels share a
    CA and a folder holding both labs' objects, standing in for what the Kubernetes API
    (or a control plane both reach) gives them on real machines.
    """
    import datetime as dt
    import shutil

    from agent.pinned import BPFFS_ROOT, pin_dir_for
    from tests.integration.meshlab import (
        AMBIENT,
        start_agent,
        teardown_nodes,
        wait_for,
        wait_for_enrollment,
    )
    from ztunnel.app import load_or_create_ca

    names = {1: f"r{uuid.uuid4().hex[:6]}m", 2: f"r{uuid.uuid4().hex[:6]}n"}
    ca_dir, merged = tmp_path / "ca", tmp_path / "cluster"
    ca_dir.mkdir()
    merged.mkdir()
    load_or_create_ca(ca_dir, "cluster.local", dt.datetime.now(dt.UTC))
    labs: list[RemoteLab] = []
    pin_dirs: list[Path] = []
    try:
        for index in (1, 2):
            lab = RemoteLab.create_remote(
                _spec(machines, index, names[index], tmp_path / f"vm{index}")
            )
            labs.append(lab)
            pin_dirs.append(pin_dir_for(lab.nodes[0].id, BPFFS_ROOT))
            lab.add_namespace("mesh", labels=AMBIENT)
        one, two = labs
        client = one.add_pod("client", namespace="mesh", node="node1", service_account="client")
        server = two.add_pod("server", namespace="mesh", node="node2", service_account="server")
        two.start_workload(server, "http-echo", ["--listen", ":8080"])
        for lab in labs:
            for entry in sorted(lab.config_dir.iterdir()):
                shutil.copy(entry, merged / entry.name)
        for lab in labs:
            node = lab.nodes[0]
            start_agent(lab, node)
            lab.spawn_in_node(
                node,
                ["python", "-m", "ambient", "ztunnel", "run", "--node", node.name,
                 "--cluster-folder", str(merged), "--ca-dir", str(ca_dir)],
                name=f"ztunnel-{node.name}",
            )  # fmt: skip
        for lab, pod, pin_dir in zip(labs, (client, server), pin_dirs, strict=True):
            node = lab.nodes[0]
            wait_for_enrollment(node, pin_dir, {pod.name: pod})
            wait_for(
                lambda lab=lab, node=node: (
                    lab.exec(node, ["python", "-c", READY]).stdout.strip() == "200"
                ),
                60,
                f"ztunnel on {node.name}",
            )
        got = one.exec(
            client,
            ["python", "-m", "lab.workloads.client", "http", f"http://{server.ip}:8080/"],
            timeout=30,
        )
        assert "Hello from server" in got.stdout, got.stdout + got.stderr
        metrics = one.exec(one.nodes[0], ["python", "-c", METRICS]).stdout
        opened = [
            line
            for line in metrics.splitlines()
            if line.startswith("istio_tcp_connections_opened_total") and 'reporter="source"' in line
        ]
        assert opened and float(opened[0].rsplit(" ", 1)[1]) >= 1, metrics[-2000:]
    finally:
        for lab, pin_dir in zip(labs, pin_dirs, strict=False):
            teardown_nodes(lab, [pin_dir])
        for lab in labs:
            lab.destroy()
