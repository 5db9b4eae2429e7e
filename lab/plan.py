"""The lab's names and addresses: pure functions, no kernel, no files.

Address plan of a lab called ``<name>`` with ``L = lab_octet(name)`` (1..254):

- fabric (bridge ``br0`` in namespace ``<name>-fabric``): ``172.30.L.1/24``
- node ``n`` (namespace ``<name>-node<n>``, uplink ``eth0``): ``172.30.L.(10+n)/24``
- ``outside`` host (namespace ``<name>-outside``): ``172.30.L.254/24``
- pods on node ``n``: ``10.244.n.0/24``; ``10.244.n.1`` is the gateway address every
  host-side veth of that node carries; pods get ``.2`` upwards, as ``/32``
- Service VIPs: ``10.96.0.10`` upwards in ``10.96.0.0/16`` (no interface anywhere)

Every network namespace is ``<name>-<role>``; lab names are letters and digits only, so
``<name>-`` is a prefix no other lab shares.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass

from lab.errors import LabSpecError

IFNAME_MAX = 15
"""Linux limit on interface names (IFNAMSIZ - 1)."""

MAX_NODES = 200
"""Node ``n`` owns ``10.244.n.0/24`` and ``172.30.L.(10+n)``, so ``n`` stays below 245."""

MAX_LAB_NAME = 12
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
FIRST_VIP_HOST = 10
FIRST_POD_HOST = 2
LAST_POD_HOST = 254
NODE_HOST_OFFSET = 10
FABRIC_HOST = 1
OUTSIDE_HOST = 254
POD_IFNAME = "eth0"
NODE_UPLINK_IFNAME = "eth0"
BRIDGE_IFNAME = "br0"
CLUSTER_DOMAIN = "cluster.local"

_LAB_NAME_RE = re.compile(rf"^[a-z][a-z0-9]{{0,{MAX_LAB_NAME - 1}}}$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NODE_NAME_RE = re.compile(r"^node([1-9][0-9]{0,2})$")


def validate_lab_name(name: str) -> str:
    """Returns ``name`` if it can prefix every namespace of a lab, else raises."""
    if not _LAB_NAME_RE.match(name):
        raise LabSpecError(
            f"lab name {name!r} is not valid: it must start with a letter and have only "
            f"lower-case letters and digits, at most {MAX_LAB_NAME} characters",
            hint="pick a name like 't1' or 'bench2' (no '-': '<name>-' prefixes the lab's "
            "namespaces and must not match another lab's)",
        )
    return name


def validate_node_count(nodes: int) -> int:
    """Returns ``nodes`` if the address plan has room for it, else raises."""
    if not 1 <= nodes <= MAX_NODES:
        raise LabSpecError(
            f"a lab has 1 to {MAX_NODES} nodes, not {nodes}", hint="pass --nodes 2, for example"
        )
    return nodes


def validate_k8s_name(name: str, what: str) -> str:
    """Returns ``name`` if it is a DNS-1123 label (what pods, namespaces, services use)."""
    if not _DNS_LABEL_RE.match(name):
        raise LabSpecError(
            f"{what} name {name!r} is not a DNS label",
            hint="use lower-case letters, digits and '-', at most 63 characters, "
            "starting and ending with a letter or digit",
        )
    return name


def lab_octet(name: str) -> int:
    """The third octet ``L`` of the lab's fabric subnet, derived from its name (1..254).

    Two labs may share an octet: their fabrics are separate namespaces with no route
    between them, so the octet only keeps addresses in logs tellable apart.
    """
    digest = hashlib.sha256(name.encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % 254


def node_name(index: int) -> str:
    """The Kubernetes node name of node ``index`` (``node1``, ``node2``, ...)."""
    return f"node{index}"


def node_index(name: str) -> int | None:
    """The index of a node called ``node<n>``, or None for any other name."""
    match = _NODE_NAME_RE.match(name)
    return int(match.group(1)) if match else None


def fabric_netns(lab: str) -> str:
    """Name of the fabric namespace (the bridge every node and ``outside`` plug into)."""
    return f"{lab}-fabric"


def outside_netns(lab: str) -> str:
    """Name of the ``outside`` host's namespace (on the fabric, in no mesh)."""
    return f"{lab}-outside"


def node_netns(lab: str, index: int) -> str:
    """Name of node ``index``'s namespace; also the node id for BPF pins."""
    return f"{lab}-{node_name(index)}"


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    """Name of a pod's namespace: ``<lab>-pod-<pod>.<namespace>``.

    Kubernetes namespaces have no dots, so the last dot splits the two unambiguously.
    """
    return f"{lab}-pod-{pod}.{namespace}"


def netns_prefix(lab: str) -> str:
    """The prefix every namespace of the lab starts with."""
    return f"{lab}-"


def host_ifname(namespace: str, pod: str) -> str:
    """The host-side veth of a pod, inside its node's namespace (``veth`` + 10 hex digits).

    A hash keeps the name under the kernel's 15-character limit for any pod name, and
    stable, so a restarted agent finds the same interface.
    """
    digest = hashlib.sha1(f"{namespace}/{pod}".encode(), usedforsecurity=False).hexdigest()
    name = f"veth{digest[:10]}"
    assert len(name) <= IFNAME_MAX
    return name


def fabric_port_ifname(role: str) -> str:
    """The fabric-side end of a node's (or ``outside``'s) uplink, a port of the bridge."""
    if len(role) > IFNAME_MAX:
        raise LabSpecError(f"interface name {role!r} is longer than {IFNAME_MAX} characters")
    return role


@dataclass(frozen=True)
class AddressPlan:
    """The addresses of one lab, derived from its fabric octet."""

    octet: int
    """Third octet ``L`` of the fabric subnet ``172.30.L.0/24``."""

    def __post_init__(self) -> None:
        if not 1 <= self.octet <= 254:
            raise LabSpecError(f"fabric octet must be 1..254, not {self.octet}")

    @classmethod
    def for_lab(cls, name: str, octet: int | None = None) -> AddressPlan:
        """The plan of lab ``name``; ``octet`` overrides the one derived from the name."""
        return cls(octet if octet is not None else lab_octet(name))

    @property
    def fabric_cidr(self) -> ipaddress.IPv4Network:
        """The fabric subnet every node and ``outside`` sit on."""
        return ipaddress.IPv4Network(f"172.30.{self.octet}.0/24")

    @property
    def fabric_prefixlen(self) -> int:
        """Prefix length of the fabric subnet."""
        return self.fabric_cidr.prefixlen

    @property
    def fabric_ip(self) -> str:
        """Address of the bridge in the fabric namespace (where a control plane runs)."""
        return str(self.fabric_cidr[FABRIC_HOST])

    @property
    def outside_ip(self) -> str:
        """Address of the ``outside`` host."""
        return str(self.fabric_cidr[OUTSIDE_HOST])

    def node_ip(self, index: int) -> str:
        """Fabric address of node ``index``."""
        if not 1 <= index <= MAX_NODES:
            raise LabSpecError(f"node index must be 1..{MAX_NODES}, not {index}")
        return str(self.fabric_cidr[NODE_HOST_OFFSET + index])

    @staticmethod
    def pod_cidr(index: int) -> ipaddress.IPv4Network:
        """Pod CIDR of node ``index``: ``10.244.<index>.0/24``."""
        if not 1 <= index <= MAX_NODES:
            raise LabSpecError(f"node index must be 1..{MAX_NODES}, not {index}")
        return ipaddress.IPv4Network(f"10.244.{index}.0/24")

    @classmethod
    def pod_gateway(cls, index: int) -> str:
        """The address every host-side veth on node ``index`` carries; pods route via it."""
        return str(cls.pod_cidr(index)[1])


def allocate_pod_ip(node: int, used: Collection[str]) -> str:
    """The lowest free pod address on node ``node`` (``.2`` upwards)."""
    cidr = AddressPlan.pod_cidr(node)
    taken = set(used)
    for host in range(FIRST_POD_HOST, LAST_POD_HOST + 1):
        ip = str(cidr[host])
        if ip not in taken:
            return ip
    raise LabSpecError(
        f"node{node} has no free pod address left in {cidr}",
        hint="remove pods or put new ones on another node",
    )


def allocate_vip(used: Collection[str]) -> str:
    """The lowest free Service VIP in ``10.96.0.0/16`` (``10.96.0.10`` upwards)."""
    taken = set(used)
    for offset in range(FIRST_VIP_HOST, SERVICE_CIDR.num_addresses - 1):
        ip = str(SERVICE_CIDR[offset])
        if ip not in taken:
            return ip
    raise LabSpecError(f"no free Service address left in {SERVICE_CIDR}")


def service_hostnames(service: str, namespace: str, *, from_namespace: str) -> list[str]:
    """Names under which a Service resolves for a pod in ``from_namespace``.

    As in a cluster: the short name only from the same namespace, ``<svc>.<ns>`` and the
    fully qualified ``<svc>.<ns>.svc.cluster.local`` from everywhere.
    """
    names = [f"{service}.{namespace}", f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"]
    if namespace == from_namespace:
        names.insert(0, service)
    return names
