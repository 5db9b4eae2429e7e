"""Removing a lab: processes, namespaces, ``/etc/netns`` files, BPF pins, run folder.

Works from the saved state when there is one and from the name prefix in any case, so
it also cleans up after a builder that died (kill -9) mid-way.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lab import dns, network, plan, processes
from lab.errors import LabError
from lab.model import LabState

BPF_PIN_ROOT = Path("/sys/fs/bpf/ambient")
"""Node agents pin under ``<root>/<node id>/``; a node's id is its namespace name."""


@dataclass(frozen=True)
class TeardownReport:
    """What :meth:`Lab.destroy_by_name` removed, and anything it could not."""

    name: str
    netns_removed: tuple[str, ...] = ()
    processes_killed: tuple[int, ...] = ()
    etc_netns_removed: tuple[str, ...] = ()
    pins_removed: tuple[str, ...] = ()
    """BPF pin folders of the lab's nodes (so a later lab of the same name starts clean)."""
    left_over: tuple[str, ...] = ()
    """Human-readable leftovers (namespaces or pids that would not go)."""


def teardown(
    name: str, run_dir: Path, state: LabState | None, keep_logs: bool | None
) -> TeardownReport:
    """Removes a lab's processes, namespaces, /etc/netns entries and run folder."""
    prefix = plan.netns_prefix(name)
    names = {n for n in network.list_netns() if n.startswith(prefix)}
    etc = dns.folders_with_prefix(prefix)
    if state is not None:
        names |= {n for n in state.netns if network.netns_exists(n)}
        etc |= set(state.etc_netns)
        if keep_logs is None:
            keep_logs = state.keep_logs
    victims = processes.pids_in_netns(names)
    survivors = processes.kill_pids(victims)
    left: list[str] = [f"pid {pid} in {victims[pid]}" for pid in survivors]
    removed: list[str] = []
    # pods first, then nodes and outside, the fabric last: each veth goes with its end
    for netns in sorted(names, key=_teardown_order):
        try:
            network.delete_netns(netns)
            removed.append(netns)
        except LabError as err:
            left.append(str(err))
    etc_removed = [n for n in sorted(etc) if dns.remove_pod_files(n)]
    # os.path.isdir: bpffs answers EPERM, not ENOENT, for some absent names
    pins = [BPF_PIN_ROOT / n for n in sorted(names) if os.path.isdir(BPF_PIN_ROOT / n)]
    for pin in pins:
        shutil.rmtree(pin, ignore_errors=True)
        if pin.exists():
            left.append(f"BPF pins in {pin}")
    if run_dir.is_dir():
        if keep_logs:
            for entry in run_dir.iterdir():
                if entry.name != "logs":
                    _remove_path(entry)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return TeardownReport(
        name=name,
        netns_removed=tuple(removed),
        processes_killed=tuple(sorted(victims)),
        etc_netns_removed=tuple(etc_removed),
        pins_removed=tuple(str(p) for p in pins),
        left_over=tuple(left),
    )


def _teardown_order(netns: str) -> tuple[int, str]:
    role = netns.split("-", 1)[1] if "-" in netns else netns
    if role.startswith("pod-"):
        return (0, netns)
    if role == "fabric":
        return (2, netns)
    return (1, netns)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
