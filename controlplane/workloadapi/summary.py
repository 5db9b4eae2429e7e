"""One line per workload-API resource, for people reading a table."""

from __future__ import annotations

import ipaddress
from typing import Any

from api.messages import security as sec
from api.messages import workload as wl
from controlplane.workloadapi import Snapshot


def _ip(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _waypoint(gateway: Any) -> str:
    """``waypoint=<ip>:<port>`` (or ``ns/hostname``) of a ``GatewayAddress``."""
    if gateway.WhichOneof("destination") == "hostname":
        where = f"{gateway.hostname.namespace}/{gateway.hostname.hostname}"
    else:
        where = _ip(gateway.address.address)
    return f"waypoint={where}:{gateway.hbone_mtls_port}"


def workload_summary(w: Any) -> str:
    """Addresses, protocol, node, identity, status and services of a workload."""
    parts = [
        ",".join(_ip(a) for a in w.addresses) or w.hostname or "-",
        wl.TunnelProtocol.Name(w.tunnel_protocol),
        f"node={w.node or '-'}",
        f"sa={w.service_account or 'default'}",
        wl.WorkloadStatus.Name(w.status),
    ]
    if w.services:
        parts.append("services=" + ",".join(sorted(w.services)))
    if w.authorization_policies:
        parts.append("policies=" + ",".join(w.authorization_policies))
    if w.HasField("waypoint"):
        parts.append(_waypoint(w.waypoint))
    return " ".join(parts)


def service_summary(s: Any) -> str:
    """VIPs and ports (``service->target``; 0 means per workload) of a service."""
    vips = ",".join(_ip(a.address) for a in s.addresses) or "headless"
    ports = ",".join(f"{p.service_port}->{p.target_port or 'named'}" for p in s.ports)
    waypoint = f" {_waypoint(s.waypoint)}" if s.HasField("waypoint") else ""
    return f"{vips} ports={ports or '-'}{waypoint}"


def authorization_summary(a: Any) -> str:
    """Scope, action and rule count of an authorization."""
    dry = " dry-run" if a.dry_run else ""
    return f"{sec.Scope.Name(a.scope)} {sec.Action.Name(a.action)} rules={len(a.rules)}{dry}"


def resource_rows(snapshot: Snapshot) -> list[dict[str, str]]:
    """Rows of type, resource name and summary, services and workloads first."""
    rows = []
    for name, address in sorted(snapshot.addresses.items()):
        if address.WhichOneof("type") == "service":
            rows.append(
                {"type": "service", "name": name, "summary": service_summary(address.service)}
            )
        else:
            rows.append(
                {"type": "workload", "name": name, "summary": workload_summary(address.workload)}
            )
    rows.sort(key=lambda r: r["type"] != "service")
    for name, auth in sorted(snapshot.authorizations.items()):
        rows.append({"type": "authorization", "name": name, "summary": authorization_summary(auth)})
    return rows
