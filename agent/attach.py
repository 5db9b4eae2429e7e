"""Putting programs, qdiscs, the policy-routing rule and the local route in place.

Everything goes through one pyroute2 ``IPRoute`` handed in by the caller, which belongs
to the namespace being changed: the agent's own (node) namespace, or a test's namespace
(``IPRoute(netns=...)``). Nothing here picks a namespace by itself.

Programs are attached as direct-action ``bpf`` filters on the ingress hook of a clsact
qdisc, always with the same priority and handle, so attaching again *replaces* the
filter atomically: a restarted agent swaps in its freshly loaded program without a
moment where packets go uncaptured.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import AttachError

TC_H_CLSACT_INGRESS = "ffff:fff2"
FILTER_PRIO = 0xA0  # ours; other TC users can sit before or after it
FILTER_HANDLE = 1
ETH_P_ALL = 0x0003


def link_name(ipr: Any, ifindex: int) -> str | None:
    """The name of interface ``ifindex``, or None when there is no such interface."""
    if not ifindex:
        return None
    try:
        links = ipr.get_links(ifindex)
    except NetlinkError:  # ENODEV: it went (a pod's veth goes with the pod)
        return None
    return str(links[0].get("ifname")) if links else None


def _ifname(ipr: Any, ifindex: int) -> str:
    return link_name(ipr, ifindex) or f"ifindex {ifindex}"


def ensure_clsact(ipr: Any, ifindex: int) -> None:
    """Adds a clsact qdisc to ``ifindex`` unless it has one."""
    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise AttachError(
                f"cannot add a clsact qdisc to {_ifname(ipr, ifindex)}: {err}",
                hint="the kernel needs CONFIG_NET_SCH_INGRESS (clsact)",
            ) from err


def attach_ingress(ipr: Any, ifindex: int, prog_fd: int, name: str) -> None:
    """Attaches (or atomically replaces) our program on the ingress hook of ``ifindex``."""
    ensure_clsact(ipr, ifindex)
    try:
        ipr.tc(
            "replace-filter",
            "bpf",
            ifindex,
            FILTER_HANDLE,
            fd=prog_fd,
            name=name,
            parent=TC_H_CLSACT_INGRESS,
            prio=FILTER_PRIO,
            protocol=ETH_P_ALL,
            classid=1,
            direct_action=True,
        )
    except NetlinkError as err:
        raise AttachError(
            f"cannot attach {name} to {_ifname(ipr, ifindex)}: {err}",
            hint="the interface may have gone (pod deleted) or TC BPF is unavailable",
        ) from err


def ingress_filter_names(ipr: Any, ifindex: int) -> list[str]:
    """Names of the BPF programs attached to the ingress hook of ``ifindex``."""
    try:
        filters = ipr.get_filters(index=ifindex, parent=TC_H_CLSACT_INGRESS)
    except NetlinkError:
        return []
    names = []
    for flt in filters:
        options = flt.get("TCA_OPTIONS")
        if options is not None and options.get("TCA_BPF_NAME"):
            names.append(str(options.get("TCA_BPF_NAME")))
    return names


def detach(ipr: Any, ifindex: int) -> bool:
    """Removes the clsact qdisc (and with it our filters) from ``ifindex``.

    Returns False when the interface or the qdisc was already gone.
    """
    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError as err:
        if err.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return False
        raise AttachError(f"cannot detach from {_ifname(ipr, ifindex)}: {err}") from err
    return True


def route_ifindex(ipr: Any, ip: str) -> int | None:
    """The interface the namespace routes ``ip`` through (a pod's host-side veth)."""
    try:
        routes = ipr.route("get", dst=ip)
    except NetlinkError:
        return None
    for route in routes:
        oif = route.get("RTA_OIF")
        if oif:
            return int(oif)
    return None


@dataclass(frozen=True)
class LocalDelivery:
    """The policy routing that delivers marked packets locally.

    A packet assigned to a socket by ``bpf_sk_assign`` still goes through routing; its
    destination (a pod IP) is not local, so a rule sends packets carrying ``mark`` to
    ``table``, whose only route makes every destination local.
    """

    mark: int
    mask: int
    table: int
    priority: int


def install_local_delivery(ipr: Any, spec: LocalDelivery) -> None:
    """Installs the fwmark rule and the local route (idempotent)."""
    lo = ipr.link_lookup(ifname="lo")
    if not lo:
        raise AttachError("this namespace has no loopback interface")
    try:
        ipr.link("set", index=lo[0], state="up")
        ipr.route(
            "replace",
            dst="0.0.0.0/0",
            type="local",
            oif=lo[0],
            table=spec.table,
            scope="host",
        )
    except NetlinkError as err:
        raise AttachError(f"cannot add the local route in table {spec.table}: {err}") from err
    if not has_local_delivery_rule(ipr, spec):
        try:
            ipr.rule(
                "add",
                family=socket.AF_INET,
                fwmark=spec.mark,
                fwmask=spec.mask,
                table=spec.table,
                priority=spec.priority,
            )
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise AttachError(
                    f"cannot add the fwmark rule (mark {spec.mark:#x}): {err}"
                ) from err


def has_local_delivery_rule(ipr: Any, spec: LocalDelivery) -> bool:
    """Whether the fwmark rule of ``spec`` is in place."""
    for rule in ipr.get_rules(family=socket.AF_INET):
        if (
            rule.get("FRA_FWMARK") == spec.mark
            and rule.get("FRA_TABLE") == spec.table
            and rule.get("FRA_PRIORITY") == spec.priority
        ):
            return True
    return False


def remove_local_delivery(ipr: Any, spec: LocalDelivery) -> None:
    """Removes the fwmark rule and the local route (absent ones are fine)."""
    while has_local_delivery_rule(ipr, spec):
        try:
            ipr.rule(
                "del",
                family=socket.AF_INET,
                fwmark=spec.mark,
                fwmask=spec.mask,
                table=spec.table,
                priority=spec.priority,
            )
        except NetlinkError:
            break
    lo = ipr.link_lookup(ifname="lo")
    if lo:
        with contextlib.suppress(NetlinkError):
            ipr.route(
                "del", dst="0.0.0.0/0", type="local", oif=lo[0], table=spec.table, scope="host"
            )


def uplink_ifindex(ipr: Any, ifname: str | None) -> int:
    """The uplink: the interface named, or else the one of the default route."""
    if ifname:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise AttachError(
                f"uplink interface {ifname!r} not found in the agent's namespace",
                hint="pass --uplink with the node's interface toward other nodes",
            )
        return int(found[0])
    for route in ipr.get_routes(family=socket.AF_INET, table=254):
        if route.get("dst_len") == 0 and route.get("RTA_OIF"):
            return int(route.get("RTA_OIF"))
    raise AttachError(
        "cannot tell the node's uplink: the namespace has no default route",
        hint="pass --uplink IFNAME (the node's interface toward other nodes)",
    )
