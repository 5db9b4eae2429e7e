"""The lab's kernel plumbing: network namespaces, links, addresses, routes, sysctls.

All of it goes through pyroute2 against a named namespace; nothing here ever touches
the root namespace (veth pairs are created inside a lab namespace with the peer placed
straight into another lab namespace). Namespace-local sysctls are the one thing
netlink cannot set: they are written by ``sysctl`` run under ``nsenter --net``, which
switches only the network namespace, so ``/proc/sys/net`` is that namespace's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from lab.errors import LabExistsError, LabNetworkError

NETNS_DIR = Path("/run/netns")
SYSCTL_TIMEOUT = 10.0


def netns_path(name: str) -> Path:
    """The bind-mounted namespace file ``ip netns`` and ``nsenter --net`` use."""
    return NETNS_DIR / name


def list_netns() -> list[str]:
    """Names of all named network namespaces (none when ``/run/netns`` does not exist)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    """Whether a named namespace exists."""
    return netns_path(name).exists()


def create_netns(name: str) -> None:
    """Creates a named network namespace with ``lo`` up; refuses to reuse one."""
    if netns_exists(name):
        raise LabExistsError(
            f"network namespace {name!r} already exists",
            hint="another lab with this name is running or was not torn down: "
            "run 'ambient lab down --name <name>'",
        )
    try:
        netns.create(name)
    except (OSError, NetlinkError) as err:
        raise LabNetworkError(f"cannot create network namespace {name!r}: {err}") from err
    with _ns(name, "bring lo up") as ns:
        ns.link("set", index=_index(ns, "lo", name), state="up")


def delete_netns(name: str) -> None:
    """Removes a named namespace (its interfaces, and the peers of its veths, go with it)."""
    if not netns_exists(name):
        return
    try:
        netns.remove(name)
    except (OSError, NetlinkError) as err:
        raise LabNetworkError(f"cannot remove network namespace {name!r}: {err}") from err


def netns_inode(name: str) -> tuple[int, int] | None:
    """(device, inode) identifying a named namespace, comparable with ``/proc/<pid>/ns/net``."""
    try:
        st = os.stat(netns_path(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def set_sysctls(name: str, values: Mapping[str, str]) -> None:
    """Sets namespace-local sysctls (``net.*``) inside namespace ``name`` only."""
    for key in values:
        if not key.startswith("net."):
            raise LabNetworkError(f"refusing to set non-namespaced sysctl {key!r} from the lab")
    argv = [
        "nsenter",
        f"--net={netns_path(name)}",
        "--",
        "sysctl",
        "-q",
        "-w",
        *(f"{k}={v}" for k, v in values.items()),
    ]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=SYSCTL_TIMEOUT)
    except subprocess.CalledProcessError as err:
        raise LabNetworkError(
            f"cannot set sysctls in namespace {name!r}: {err.stderr.strip() or err}"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise LabNetworkError(f"setting sysctls in namespace {name!r} timed out") from err


def create_bridge(name: str, bridge: str, ip: str, prefixlen: int) -> None:
    """Creates an up bridge carrying ``ip/prefixlen`` inside namespace ``name``."""
    with _ns(name, f"create bridge {bridge}") as ns:
        ns.link("add", ifname=bridge, kind="bridge")
        index = _index(ns, bridge, name)
        ns.addr("add", index=index, address=ip, prefixlen=prefixlen)
        ns.link("set", index=index, state="up")


def plug_into_bridge(
    *,
    fabric: str,
    bridge: str,
    port: str,
    host: str,
    uplink: str,
    ip: str,
    prefixlen: int,
) -> None:
    """Connects namespace ``host`` to the bridge in ``fabric`` by a veth pair.

    The pair is created inside ``host`` (uplink end) with its peer placed straight into
    ``fabric`` (port end), so it never exists in the root namespace.
    """
    with _ns(host, f"create uplink {uplink}") as ns:
        ns.link(
            "add",
            ifname=uplink,
            kind="veth",
            peer={"ifname": port, "net_ns_fd": str(netns_path(fabric))},
        )
        index = _index(ns, uplink, host)
        ns.addr("add", index=index, address=ip, prefixlen=prefixlen)
        ns.link("set", index=index, state="up")
    with _ns(fabric, f"plug {port} into {bridge}") as ns:
        port_index = _index(ns, port, fabric)
        ns.link("set", index=port_index, master=_index(ns, bridge, fabric))
        ns.link("set", index=port_index, state="up")


def attach_pod(
    *,
    node: str,
    pod: str,
    host_ifname: str,
    pod_ifname: str,
    pod_ip: str,
    gateway: str,
) -> None:
    """Wires a pod to its node the way a routed CNI (ptp) does.

    Node side: the host veth carries the node's pod gateway address as ``/32`` and a
    ``/32`` route to the pod points at it. Pod side: the pod's address as ``/32``, a
    link route to the gateway and a default route through it, so all pod traffic,
    also to a neighbour on the same node, passes the node.
    """
    with _ns(node, f"create pod veth {host_ifname}") as ns:
        ns.link(
            "add",
            ifname=host_ifname,
            kind="veth",
            peer={"ifname": pod_ifname, "net_ns_fd": str(netns_path(pod))},
        )
        index = _index(ns, host_ifname, node)
        ns.addr("add", index=index, address=gateway, prefixlen=32)
        ns.link("set", index=index, state="up")
        ns.route("add", dst=f"{pod_ip}/32", oif=index, scope="link", prefsrc=gateway)
    with _ns(pod, f"configure {pod_ifname}") as ns:
        index = _index(ns, pod_ifname, pod)
        ns.addr("add", index=index, address=pod_ip, prefixlen=32)
        ns.link("set", index=index, state="up")
        ns.route("add", dst=f"{gateway}/32", oif=index, scope="link")
        ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index, prefsrc=pod_ip)


def add_route(name: str, dst: str, gateway: str) -> None:
    """Adds ``dst via gateway`` inside namespace ``name``."""
    with _ns(name, f"add route {dst} via {gateway}") as ns:
        ns.route("add", dst=dst, gateway=gateway)


def link_names(name: str) -> list[str]:
    """Interface names inside namespace ``name`` (for status and checks)."""
    with _ns(name, "list links") as ns:
        return sorted(str(link.get("ifname")) for link in ns.get_links())


@contextmanager
def _ns(name: str, doing: str) -> Iterator[Any]:
    """A netlink socket inside namespace ``name``; failures become :class:`LabNetworkError`."""
    if not netns_exists(name):
        raise LabNetworkError(f"cannot {doing}: network namespace {name!r} does not exist")
    try:
        with NetNS(name) as ns:
            yield ns
    except NetlinkError as err:
        raise LabNetworkError(f"cannot {doing} in namespace {name!r}: {err}") from err
    except OSError as err:
        raise LabNetworkError(f"cannot {doing} in namespace {name!r}: {err}") from err


def _index(ns: Any, ifname: str, where: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise LabNetworkError(f"interface {ifname!r} not found in namespace {where!r}")
    return int(found[0])
