"""The Vagrantfile's ``lab`` provisioner, run as written, in two "VM" namespaces.

No VM boots here, so the provisioning script (``LAB_NODE`` in the Vagrantfile) runs
inside two network namespaces that stand for the VMs: each holds its end of a veth
pair (the private network, with the VM's address) and runs the script under
``nsenter --net`` (the network namespace only, as a VM's shell would see its own).
The script builds that VM's node of the two-node lab and, on node2, fetches node1's
pod from node2's pod. Each "VM" gets its own lab name, since on one machine the two
labs share ``/run/netns`` (on real VMs both are called ``vm``).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import network
from lab.cluster import Lab

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
VMS = {1: "192.168.56.11", 2: "192.168.56.12"}


def provisioner() -> str:
    """The ``LAB_NODE`` heredoc of the Vagrantfile, pointed at this checkout."""
    text = (REPO / "Vagrantfile").read_text()
    found = re.search(r"^LAB_NODE = <<~SHELL\n(.*?)^SHELL$", text, re.S | re.M)
    assert found, "the Vagrantfile has no LAB_NODE provisioner"
    script = "\n".join(line.removeprefix("  ") for line in found.group(1).splitlines())
    assert "cd /ambient-node\n" in script
    return script.replace("cd /ambient-node\n", f"cd {REPO}\n")


@pytest.fixture
def vms() -> Iterator[dict[int, str]]:
    tag = f"vt{uuid.uuid4().hex[:6]}"
    names = {1: f"{tag}vm1", 2: f"{tag}vm2"}
    try:
        for name in names.values():
            network.create_netns(name)
        subprocess.run(
            ["ip", "-n", names[1], "link", "add", "eth1", "type", "veth", "peer", "name",
             "eth1", "netns", names[2]],
            check=True, timeout=10,
        )  # fmt: skip
        for index, name in names.items():
            subprocess.run(["ip", "-n", name, "addr", "add", f"{VMS[index]}/24", "dev", "eth1"],
                           check=True, timeout=10)  # fmt: skip
            subprocess.run(["ip", "-n", name, "link", "set", "eth1", "up"], check=True, timeout=10)
        yield names
    finally:
        for name in names.values():
            network.delete_netns(name)


def test_the_lab_provisioner_builds_a_node_per_vm_and_crosses_between_them(
    vms: dict[int, str], tmp_path: Path
) -> None:
    script = provisioner()
    labs = {1: f"v{uuid.uuid4().hex[:6]}a", 2: f"v{uuid.uuid4().hex[:6]}b"}
    try:
        for index in (1, 2):  # node1 first, as `vagrant up` then `vagrant up node2`
            peer = 2 if index == 1 else 1
            env = {
                **os.environ,
                "LAB": labs[index], "NODE_INDEX": str(index), "NODE_IP": VMS[index],
                "PREFIX": "24", "PEER_INDEX": str(peer), "PEER_IP": VMS[peer],
                "AMBIENT_LAB_RUN_ROOT": str(tmp_path),
            }  # fmt: skip
            done = subprocess.run(
                ["nsenter", f"--net=/run/netns/{vms[index]}", "--", "bash", "-c", script],
                env=env, capture_output=True, text=True, timeout=90, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        assert "Hello from pod-node1-1" in done.stdout
        for index in (1, 2):  # `ambient lab down` on each VM, as a user would
            down = subprocess.run(
                ["nsenter", f"--net=/run/netns/{vms[index]}", "--", ".venv/bin/ambient",
                 "lab", "down", "--name", labs[index], "--run-root", str(tmp_path)],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert down.returncode == 0, down.stdout + down.stderr
    finally:
        for name in labs.values():  # from here (not a VM): never moves a device here
            Lab.destroy_by_name(name, tmp_path)
    for index, name in vms.items():
        out = subprocess.run(
            ["ip", "-n", name, "-o", "addr", "show", "eth1"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        assert f"{VMS[index]}/24" in out  # the interface is back, with its address
