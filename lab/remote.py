"""One node of a lab that spans machines: a lab node whose uplink is a real interface.

The ordinary lab builds every node as a namespace of one machine, joined by a bridge
in a fabric namespace. Across machines (two VMs on a private network, as the
``Vagrantfile`` makes them), each machine builds *one* node of the lab:

- the node is a namespace ``<name>-node<k>`` of that machine, as in the ordinary lab,
  so pods, the agent and ztunnel work there exactly as they do in one machine's lab;
- its uplink is an existing interface of the machine (``eth1`` on the VM's private
  network), *moved* into the node's namespace with the node's address on that network
  (the interface's own address, normally), instead of a veth to a fabric bridge;
- it routes every other node's pod CIDR (``10.244.<j>.0/24``) via that node's address
  on the same network (``--peer j=ADDR``), as the lab routes them via fabric addresses.

No fabric namespace, no ``outside`` host: the private network is the fabric. Lab names
may differ between machines (each machine's lab is its own); node indexes must not.

Taking the interface away from the machine is what keeps the machine's own network
untouched (nothing is added to its namespace), but it does take the interface: the
machine must reach the world (and ``vagrant ssh``) through another one. The builder
refuses the interface of the machine's default route, and refuses to work in the
process's own namespace unless told (``--allow-host-namespace``) or given a named
namespace that stands for the machine (``--host-netns``, what the tests use). On
teardown the interface goes back to that namespace with the addresses it had.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import network, plan
from lab.cluster import DEFAULT_RUN_ROOT, NODE_SYSCTLS, Lab
from lab.errors import LabExistsError, LabNetworkError, LabSpecError, NoSuchObjectError
from lab.model import Host, LabState, Node

REMOTE_FILE = "remote.json"
"""In the lab's run folder: what makes it one node of a multi-machine lab."""
FABRIC_IP_HINT = (
    "pass this node's address on the uplink's network with its prefix: 192.168.56.12/24"
)


@dataclass(frozen=True)
class RemoteNodeSpec:
    """What one machine builds of a lab spanning machines (``ambient lab up --node-index``)."""

    name: str
    """The lab's name on this machine (prefix of its namespaces)."""
    node_index: int
    """This node's index ``k``: node ``node<k>``, pod CIDR ``10.244.<k>.0/24``."""
    uplink_device: str
    """The machine's interface on the network between the machines (``eth1``)."""
    fabric_ip: str
    """This node's address with prefix on that network (``192.168.56.12/24``)."""
    peers: Mapping[int, str] = field(default_factory=dict)
    """Every other node's index -> its address on that network."""
    host_netns: str | None = None
    """Named namespace that holds ``uplink_device`` (stands for the machine in tests);
    None: this process's own namespace (the machine's), which needs
    ``allow_host_namespace``."""
    allow_host_namespace: bool = False
    """Allow taking ``uplink_device`` from this process's own namespace (a VM's)."""
    run_root: Path = DEFAULT_RUN_ROOT
    keep_logs: bool = False
    python: str = sys.executable

    def __post_init__(self) -> None:
        plan.validate_lab_name(self.name)
        for index in (self.node_index, *self.peers):
            if not 1 <= index <= plan.MAX_NODES:
                raise LabSpecError(
                    f"node index must be 1..{plan.MAX_NODES}, not {index}",
                    hint="--node-index and --peer INDEX number the nodes from 1 (node1)",
                )
        if not self.uplink_device or len(self.uplink_device) > plan.IFNAME_MAX:
            raise LabSpecError(
                f"uplink device {self.uplink_device!r} is not an interface name",
                hint="name the machine's interface on the private network (ip -br link): eth1",
            )
        interface = self.interface
        for index, address in self.peers.items():
            if index == self.node_index:
                raise LabSpecError(
                    f"--peer {index}={address}: that is this node's own index",
                    hint="--peer names the other nodes (this one is --node-index)",
                )
            try:
                peer = ipaddress.IPv4Address(address)
            except ValueError as err:
                raise LabSpecError(
                    f"--peer {index}={address}: not an IPv4 address",
                    hint="pass --peer INDEX=ADDRESS, e.g. --peer 1=192.168.56.11",
                ) from err
            if peer not in interface.network or peer == interface.ip:
                raise LabSpecError(
                    f"--peer {index}={address} is not another address of {interface.network}",
                    hint="peers are the other nodes' addresses on the uplink's network",
                )
        if self.host_netns is None and not self.allow_host_namespace:
            raise LabSpecError(
                f"a remote node takes {self.uplink_device} away from this machine's namespace",
                hint="pass --allow-host-namespace on a machine (VM) meant for it, or "
                "--host-netns NS for a namespace that stands for the machine",
            )

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        """``fabric_ip`` parsed (an address with its prefix length)."""
        try:
            interface = ipaddress.IPv4Interface(self.fabric_ip)
        except ValueError as err:
            raise LabSpecError(
                f"--fabric-ip {self.fabric_ip!r}: not ADDRESS/PREFIX", hint=FABRIC_IP_HINT
            ) from err
        if "/" not in self.fabric_ip:
            raise LabSpecError(
                f"--fabric-ip {self.fabric_ip!r} needs a prefix length (/24)", hint=FABRIC_IP_HINT
            )
        return interface


@dataclass(frozen=True)
class RemoteNode:
    """What a remote node's lab keeps in ``remote.json`` (to build views and restore)."""

    node_index: int
    uplink_device: str
    fabric_ip: str
    prefixlen: int
    peers: dict[int, str]
    host_netns: str | None
    original_addresses: list[tuple[str, int]]
    """The device's IPv4 addresses before it was taken (put back on teardown)."""
    host_netns_id: tuple[int, int] | None = None
    """(device, inode) of the namespace the device was taken from: it goes back only
    there, never into whatever namespace the process tearing down happens to be in."""

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "node_index": self.node_index,
            "uplink_device": self.uplink_device,
            "fabric_ip": self.fabric_ip,
            "prefixlen": self.prefixlen,
            "peers": {str(k): v for k, v in self.peers.items()},
            "host_netns": self.host_netns,
            "original_addresses": [list(a) for a in self.original_addresses],
            "host_netns_id": list(self.host_netns_id) if self.host_netns_id else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteNode:
        """The record :meth:`to_json` wrote."""
        return cls(
            node_index=int(data["node_index"]),
            uplink_device=str(data["uplink_device"]),
            fabric_ip=str(data["fabric_ip"]),
            prefixlen=int(data["prefixlen"]),
            peers={int(k): str(v) for k, v in data.get("peers", {}).items()},
            host_netns=data.get("host_netns"),
            original_addresses=[(str(a), int(p)) for a, p in data.get("original_addresses", [])],
            host_netns_id=(
                (int(data["host_netns_id"][0]), int(data["host_netns_id"][1]))
                if data.get("host_netns_id")
                else None
            ),
        )


def parse_peers(values: tuple[str, ...] | list[str]) -> dict[int, str]:
    """``--peer INDEX=ADDRESS`` values as a mapping (pure)."""
    peers: dict[int, str] = {}
    for value in values:
        index, sep, address = value.partition("=")
        if not sep or not index.strip().isdigit() or not address.strip():
            raise LabSpecError(
                f"--peer {value!r}: expected INDEX=ADDRESS (2=192.168.56.12)",
                hint="one --peer per other node: its index and its address on the uplink's network",
            )
        peers[int(index)] = address.strip()
    return peers


def remote_lab_from_flags(
    name: str, run_root: Path, keep_logs: bool, flags: Mapping[str, Any]
) -> RemoteLab:
    """``ambient lab up --node-index ...``: the spec from the flags, then the node."""
    if not flags.get("uplink_device") or not flags.get("fabric_ip"):
        raise LabSpecError(
            "--node-index needs --uplink-device and --fabric-ip",
            hint="e.g. --node-index 2 --uplink-device eth1 --fabric-ip 192.168.56.12/24 "
            "--peer 1=192.168.56.11 --allow-host-namespace",
        )
    spec = RemoteNodeSpec(
        name=name,
        node_index=int(flags["node_index"]),
        uplink_device=str(flags["uplink_device"]),
        fabric_ip=str(flags["fabric_ip"]),
        peers=parse_peers(list(flags.get("peers") or ())),
        host_netns=flags.get("host_netns"),
        allow_host_namespace=bool(flags.get("allow_host_namespace")),
        run_root=run_root,
        keep_logs=keep_logs,
    )
    return RemoteLab.create_remote(spec)


def is_remote(run_dir: Path) -> bool:
    """Whether the lab in ``run_dir`` is one node of a multi-machine lab."""
    return (run_dir / REMOTE_FILE).is_file()


def load_remote(run_dir: Path) -> RemoteNode:
    """The remote node record of the lab in ``run_dir``."""
    return RemoteNode.from_json(json.loads((run_dir / REMOTE_FILE).read_text()))


class RemoteLab(Lab):
    """A lab holding one node of a multi-machine lab; otherwise a :class:`Lab`.

    Pods, namespaces, Services, processes and teardown work as in the ordinary lab;
    ``nodes`` is this machine's one node, and there is no fabric namespace or outside.
    """

    def __init__(self, state: LabState, *, python: str = sys.executable) -> None:
        super().__init__(state, python=python)
        self.remote = load_remote(Path(state.run_dir))

    @classmethod
    def create_remote(cls, spec: RemoteNodeSpec) -> RemoteLab:
        """Builds this machine's node; tears down what it made on failure."""
        run_dir = spec.run_root / spec.name
        node_netns = plan.node_netns(spec.name, spec.node_index)
        if (run_dir / "state.json").exists() or is_remote(run_dir):
            raise LabExistsError(f"a lab named {spec.name!r} already exists ({run_dir})")
        if network.netns_exists(node_netns):
            raise LabExistsError(f"network namespace {node_netns!r} already exists")
        original = _take_stock(spec)
        interface = spec.interface
        remote = RemoteNode(
            node_index=spec.node_index,
            uplink_device=spec.uplink_device,
            fabric_ip=str(interface.ip),
            prefixlen=interface.network.prefixlen,
            peers=dict(spec.peers),
            host_netns=spec.host_netns,
            original_addresses=original,
            host_netns_id=_netns_id(spec.host_netns),
        )
        state = LabState(
            name=spec.name,
            octet=plan.lab_octet(spec.name),
            node_count=max([spec.node_index, *spec.peers]),
            run_dir=str(run_dir),
            config_dir=str(run_dir / "config"),
            keep_logs=spec.keep_logs,
            has_outside=False,
            netns=[node_netns],  # recorded before it exists, as the lab does
        )
        for sub in ("logs", "config"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        (run_dir / REMOTE_FILE).write_text(json.dumps(remote.to_json(), indent=2) + "\n")
        lab = cls(state, python=spec.python)
        try:
            with lab._store.locked():
                lab._store.save(state)
            lab._build_remote()
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _build_remote(self) -> None:
        node = self.nodes[0]
        network.create_netns(node.netns)
        network.set_sysctls(node.netns, NODE_SYSCTLS)
        remote = self.remote
        with _host(remote.host_netns, f"move {remote.uplink_device}") as host:
            index = _index(host, remote.uplink_device)
            host.link("set", index=index, state="down")
            host.link("set", index=index, net_ns_fd=node.netns)
        with _in(node.netns, f"configure {remote.uplink_device}") as ns:
            index = _index(ns, remote.uplink_device)
            ns.addr("add", index=index, address=remote.fabric_ip, prefixlen=remote.prefixlen)
            ns.link("set", index=index, state="up")
        for peer, address in sorted(remote.peers.items()):
            network.add_route(node.netns, str(plan.AddressPlan.pod_cidr(peer)), address)
        self.add_namespace("default")
        with self._mutate() as state:
            state.phase = "ready"

    # ---------------------------------------------------------------- views

    @property
    def nodes(self) -> list[Node]:
        """This machine's one node."""
        return [self._node(self.remote.node_index)]

    def node(self, ref: str | int) -> Node:
        """This machine's node by name or index; the others live on other machines."""
        index = ref if isinstance(ref, int) else plan.node_index(ref)
        if index != self.remote.node_index:
            raise NoSuchObjectError(
                f"lab {self.name!r} on this machine holds node{self.remote.node_index} only, "
                f"not {ref!r}",
                hint="the other nodes of a multi-machine lab are built on their own machines",
            )
        return self._node(index)

    def _node(self, index: int) -> Node:
        return Node(
            name=plan.node_name(index),
            index=index,
            netns=plan.node_netns(self.name, index),
            uplink=self.remote.uplink_device,
            ip=self.remote.fabric_ip,
            pod_cidr=str(plan.AddressPlan.pod_cidr(index)),
            pod_gateway=plan.AddressPlan.pod_gateway(index),
        )

    @property
    def fabric(self) -> Host:
        """The network between the machines, as this node sees it (no namespace of ours)."""
        return Host(
            name="fabric",
            netns=self.remote.host_netns or "(this machine)",
            ip=self.remote.fabric_ip,
            ifname=self.remote.uplink_device,
        )

    def describe(self) -> dict[str, Any]:
        """The lab's description, with the remote node's uplink and peers."""
        data = super().describe()
        remote = self.remote
        network_cidr = ipaddress.IPv4Interface(f"{remote.fabric_ip}/{remote.prefixlen}").network
        data["fabric"] = {"netns": None, "ip": remote.fabric_ip, "cidr": str(network_cidr)}
        data["remote"] = {
            "node_index": remote.node_index,
            "uplink_device": remote.uplink_device,
            "peers": {f"node{k}": v for k, v in sorted(remote.peers.items())},
            "host_netns": remote.host_netns,
        }
        return data

    def destroy(self) -> Any:
        """Gives the uplink back to the machine, then tears down as the lab does."""
        restore_uplink(self.run_dir)
        return super().destroy()


def restore_uplink(run_dir: Path) -> bool:
    """Moves a remote node's uplink back to the machine's namespace with its old addresses.

    Called before the node's namespace is removed (the kernel would return a physical
    interface to the initial namespace without its addresses, and destroy a veth).
    Only into the very namespace it was taken from (by inode), and, when that was the
    builder's own, only from a process in it: a teardown run from elsewhere leaves the
    device to the kernel. False when nothing was moved back.
    """
    if not is_remote(run_dir):
        return False
    remote = load_remote(run_dir)
    state_file = run_dir / "state.json"
    name = json.loads(state_file.read_text())["name"] if state_file.exists() else None
    if name is None:
        return False
    node_netns = plan.node_netns(name, remote.node_index)
    if not network.netns_exists(node_netns):
        return False
    if remote.host_netns_id is None or _netns_id(remote.host_netns) != remote.host_netns_id:
        # Not the namespace it came from (gone, or this process runs elsewhere): leave
        # the device in the node's namespace; removing that returns a physical device
        # to the machine's initial namespace (without addresses) and destroys a veth.
        return False
    with _in(node_netns, f"find {remote.uplink_device}") as ns:
        found = ns.link_lookup(ifname=remote.uplink_device)
        if not found:
            return False
        ns.link("set", index=found[0], state="down")
        target: dict[str, Any] = (
            {"net_ns_fd": remote.host_netns}
            if remote.host_netns is not None
            else {"net_ns_pid": os.getpid()}
        )
        ns.link("set", index=found[0], **target)
    with _host(remote.host_netns, f"restore {remote.uplink_device}") as host:
        index = _index(host, remote.uplink_device)
        for address, prefixlen in remote.original_addresses:
            with contextlib.suppress(Exception):  # already there (a manager re-added it)
                host.addr("add", index=index, address=address, prefixlen=prefixlen)
        host.link("set", index=index, state="up")
    return True


def _netns_id(named: str | None) -> tuple[int, int] | None:
    """(device, inode) of a named namespace, or of this process's own when ``named`` is None."""
    if named is not None:
        return network.netns_inode(named)
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _take_stock(spec: RemoteNodeSpec) -> list[tuple[str, int]]:
    """The device's IPv4 addresses; refuses a missing device or the default route's."""
    with _host(spec.host_netns, f"inspect {spec.uplink_device}") as host:
        found = host.link_lookup(ifname=spec.uplink_device)
        if not found:
            where = spec.host_netns or "this machine"
            raise LabNetworkError(
                f"no interface {spec.uplink_device!r} in {where}",
                hint="name the interface on the network between the machines (ip -br link)",
            )
        index = found[0]
        for route in host.get_default_routes(family=2):
            if route.get_attr("RTA_OIF") == index:
                raise LabSpecError(
                    f"{spec.uplink_device} carries this machine's default route; taking it "
                    "would cut the machine off",
                    hint="use the interface of the private network between the machines",
                )
        return [
            (str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]))
            for a in host.get_addr(family=2, index=index)
        ]


@contextlib.contextmanager
def _host(netns: str | None, doing: str) -> Iterator[Any]:
    """Netlink in the machine's namespace: the named one, or this process's own."""
    if netns is not None:
        with _in(netns, doing) as ns:
            yield ns
        return
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            yield ipr
    except OSError as err:
        raise LabNetworkError(f"cannot {doing} in this machine's namespace: {err}") from err


@contextlib.contextmanager
def _in(netns: str, doing: str) -> Iterator[Any]:
    with network._ns(netns, doing) as ns:
        yield ns


def _index(ns: Any, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise LabNetworkError(f"interface {ifname!r} not found")
    return int(found[0])
