"""How pods find Services by name: per-pod ``/etc/netns/<netns>/`` hosts and resolv.conf.

``ip netns exec`` bind-mounts every file in ``/etc/netns/<netns>/`` over the one of the
same name in ``/etc``, so a pod's processes see a hosts file that maps ``backend``,
``backend.<ns>`` and ``backend.<ns>.svc.cluster.local`` to the Service VIP, as cluster
DNS would. (Until ztunnel's DNS proxy exists.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from lab.model import Pod, Service
from lab.plan import CLUSTER_DOMAIN, service_hostnames

ETC_NETNS = Path("/etc/netns")
FILES = ("hosts", "resolv.conf")


def hosts_file(pod: Pod, services: Iterable[Service]) -> str:
    """``/etc/hosts`` for a pod: itself, and every Service by its cluster names."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod.ip}\t{pod.name} {pod.name}.{pod.namespace}.pod.{CLUSTER_DOMAIN}",
    ]
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        names = service_hostnames(svc.name, svc.namespace, from_namespace=pod.namespace)
        lines.append(f"{svc.vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    """``/etc/resolv.conf`` for a pod in ``namespace``.

    Names come from the hosts file; the nameserver is the pod's own loopback, where
    nothing listens, so an unknown name fails at once instead of waiting on a timeout.
    """
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"


def write_pod_files(pod: Pod, services: Iterable[Service], root: Path = ETC_NETNS) -> None:
    """Writes a pod's hosts and resolv.conf, in place.

    In place, not by rename: ``ip netns exec`` bind-mounts these very files into running
    workloads, and a rename would leave them reading the old copy.
    """
    folder = root / pod.netns
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("hosts", hosts_file(pod, services)),
        ("resolv.conf", resolv_conf(pod.namespace)),
    ):
        with open(folder / name, "w") as f:
            f.write(text)


def remove_pod_files(netns: str, root: Path = ETC_NETNS) -> bool:
    """Removes the files the lab wrote for ``netns`` (and the folder if then empty)."""
    folder = root / netns
    if not folder.is_dir():
        return False
    for name in FILES:
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return True


def folders_with_prefix(prefix: str, root: Path = ETC_NETNS) -> set[str]:
    """Namespaces that have a folder under ``/etc/netns`` and start with ``prefix``."""
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.name.startswith(prefix)}
