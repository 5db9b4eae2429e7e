"""A node's pinned maps as one object: what the agent writes, what ``ambient maps`` reads."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.capture import CaptureSettings
from agent.errors import PinnedStateError
from agent.layout import (
    STATS_FIELDS,
    AttachKind,
    AttachmentValue,
    Drop,
    Verdict,
    WorkloadFlags,
    WorkloadKey,
    WorkloadValue,
    ip_to_u32,
    u32_to_ip,
)
from agent.pinned import PinnedMap, program_info
from agent.workloads import LocalWorkload

MAP_NAMES = ("workloads", "settings", "stats", "attachments", "verdicts", "drops")
PROGRAM_NAMES = ("pod_egress", "node_ingress")


@dataclass(frozen=True)
class Attachment:
    """One program attachment the agent recorded."""

    ifindex: int
    ifname: str
    kind: AttachKind
    pod_ip: str | None
    pod: str


class NodeMaps:
    """The four pinned maps of one node, opened by path."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = pin_dir
        missing = [n for n in MAP_NAMES if not (pin_dir / n).exists()]
        if missing:
            raise PinnedStateError(
                f"nothing pinned for this node: {pin_dir} has no {', '.join(missing)}",
                hint="start the node's agent ('ambient agent run --node-id ...'), or "
                "check the id: pinned nodes are the folders under "
                f"{pin_dir.parent}",
            )
        self.workloads = PinnedMap.open(pin_dir, "workloads")
        self.settings = PinnedMap.open(pin_dir, "settings")
        self.stats = PinnedMap.open(pin_dir, "stats")
        self.attachments = PinnedMap.open(pin_dir, "attachments")
        self.verdicts = PinnedMap.open(pin_dir, "verdicts")
        self.drops = PinnedMap.open(pin_dir, "drops")

    def close(self) -> None:
        """Closes every map fd (the pins stay)."""
        for m in (
            self.workloads,
            self.settings,
            self.stats,
            self.attachments,
            self.verdicts,
            self.drops,
        ):
            m.close()

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- settings
    def write_settings(self, settings: CaptureSettings) -> None:
        """Writes the settings entry (marks it configured)."""
        self.settings.put(ctypes.c_uint32(0), settings.to_c())

    def read_settings(self) -> CaptureSettings | None:
        """The settings in force, or None before an agent wrote them."""
        return settings_in(self.settings)

    # --- workloads and attachments
    def write_workload(self, workload: LocalWorkload, ifindex: int, ifname: str) -> None:
        """Writes the workloads entry and records the attachment of its veth."""
        self.workloads.put(
            WorkloadKey(ip_to_u32(workload.ip)),
            WorkloadValue(ifindex=ifindex, flags=workload.flags, workload_id=workload.workload_id),
        )
        self.record_attachment(
            Attachment(ifindex, ifname, AttachKind.POD_EGRESS, workload.ip, workload.key)
        )

    def forget_workload(self, ip: str) -> None:
        """Deletes a pod's workloads, stats and attachments entries."""
        key = WorkloadKey(ip_to_u32(ip))
        value = self.workloads.get(key)
        self.workloads.delete(key)
        self.stats.delete(WorkloadKey(ip_to_u32(ip)))
        if value is not None:
            recorded = self.attachments.get(ctypes.c_uint32(value.ifindex))
            if recorded is not None and recorded.pod_ip == key.ip:
                self.attachments.delete(ctypes.c_uint32(value.ifindex))

    def record_attachment(self, att: Attachment) -> None:
        """Records which program the agent attached to ``att.ifindex``."""
        value = AttachmentValue(
            kind=int(att.kind),
            pod_ip=ip_to_u32(att.pod_ip) if att.pod_ip else 0,
            ifname=att.ifname.encode()[:15],
            pod=att.pod.encode()[:63],
        )
        self.attachments.put(ctypes.c_uint32(att.ifindex), value)

    def forget_attachment(self, ifindex: int) -> None:
        """Deletes the record of an attachment."""
        self.attachments.delete(ctypes.c_uint32(ifindex))

    def attachments_list(self) -> list[Attachment]:
        """Every recorded attachment, by ifindex."""
        return attachments_in(self.attachments)

    def applied_workloads(self) -> dict[str, tuple[LocalWorkload, int]]:
        """What an earlier agent left: pod IP -> (workload, host ifindex)."""
        names = {a.pod_ip: a.pod for a in self.attachments_list() if a.pod_ip}
        out: dict[str, tuple[LocalWorkload, int]] = {}
        for key, value in self.workloads.items():
            ip = u32_to_ip(key.ip)
            namespace, _, name = names.get(ip, "/").partition("/")
            workload = LocalWorkload(
                namespace=namespace,
                name=name,
                ip=ip,
                enrolled=bool(value.flags & WorkloadFlags.ENROLLED),
            )
            out[ip] = (workload, int(value.ifindex))
        return out

    # --- rows for people and programs
    def workload_rows(self) -> list[dict[str, Any]]:
        """One row per workloads entry."""
        names = {a.pod_ip: a for a in self.attachments_list() if a.pod_ip}
        rows = []
        for key, value in self.workloads.items():
            ip = u32_to_ip(key.ip)
            att = names.get(ip)
            namespace, _, name = (att.pod if att else "/").partition("/")
            flags = WorkloadFlags(value.flags)
            rows.append(
                {
                    "pod_ip": ip,
                    "namespace": namespace or None,
                    "pod": name or None,
                    "enrolled": bool(flags & WorkloadFlags.ENROLLED),
                    "local": bool(flags & WorkloadFlags.LOCAL),
                    "ifindex": int(value.ifindex),
                    "ifname": att.ifname if att else None,
                    "workload_id": int(value.workload_id),
                }
            )
        return sorted(rows, key=lambda r: _ip_sort(r["pod_ip"]))

    def stats_rows(self) -> list[dict[str, Any]]:
        """One row per stats entry (0.0.0.0: traffic not attributed to a pod)."""
        names = {a.pod_ip: a.pod for a in self.attachments_list() if a.pod_ip}
        rows = []
        for key, value in self.stats.items():
            ip = u32_to_ip(key.ip)
            namespace, _, name = names.get(ip, "/").partition("/")
            row: dict[str, Any] = {
                "pod_ip": ip,
                "namespace": namespace or None,
                "pod": name or None,
            }
            row.update({f: int(getattr(value, f)) for f in STATS_FIELDS})
            rows.append(row)
        return sorted(rows, key=lambda r: _ip_sort(r["pod_ip"]))

    def verdict_rows(self) -> list[dict[str, Any]]:
        """Node-wide packets by verdict, then fail-closed packets by reason."""
        rows: list[dict[str, Any]] = []
        for table, codes, kind in ((self.verdicts, Verdict, "verdict"), (self.drops, Drop, "drop")):
            for code in codes:
                if kind == "drop" and code == Drop.NONE:
                    continue
                value = table.get(ctypes.c_uint32(int(code)))
                rows.append(
                    {
                        "kind": kind,
                        "code": int(code),
                        "name": code.name.lower(),
                        "packets": int(value.value) if value is not None else 0,
                    }
                )
        return rows

    def program_rows(self) -> list[dict[str, Any]]:
        """Pinned programs and where the agent attached them."""
        rows: list[dict[str, Any]] = []
        infos = {}
        for name in PROGRAM_NAMES:
            path = self.pin_dir / f"prog_{name}"
            if path.exists():
                infos[name] = program_info(path)
        kinds = {AttachKind.POD_EGRESS: "pod_egress", AttachKind.NODE_INGRESS: "node_ingress"}
        for att in self.attachments_list():
            prog = kinds[att.kind]
            info = infos.get(prog)
            rows.append(
                {
                    "program": prog,
                    "prog_id": info.id if info else None,
                    "tag": info.tag if info else None,
                    "hook": "tc ingress",
                    "ifindex": att.ifindex,
                    "ifname": att.ifname,
                    "pod_ip": att.pod_ip,
                    "pod": att.pod,
                }
            )
        return rows


def settings_in(table: PinnedMap[Any, Any]) -> CaptureSettings | None:
    """The settings held by a ``settings`` map, or None before an agent wrote them."""
    value = table.get(ctypes.c_uint32(0))
    if value is None or not value.flags:
        return None
    return CaptureSettings.from_c(value)


def attachments_in(table: PinnedMap[Any, Any]) -> list[Attachment]:
    """The attachments recorded in an ``attachments`` map, by ifindex."""
    out = []
    for key, value in table.items():
        out.append(
            Attachment(
                ifindex=int(key.value),
                ifname=value.ifname.decode(errors="replace"),
                kind=AttachKind(value.kind),
                pod_ip=u32_to_ip(value.pod_ip) if value.pod_ip else None,
                pod=value.pod.decode(errors="replace"),
            )
        )
    return sorted(out, key=lambda a: a.ifindex)


def _ip_sort(ip: str) -> int:
    return int.from_bytes(bytes(int(p) for p in ip.split(".")), "big")
