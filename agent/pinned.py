"""Pinned BPF maps and programs, read and written without compiling anything.

A node's maps and programs live under ``/sys/fs/bpf/ambient/<node-id>/``. The agent and
the ``ambient maps`` commands open them by path (``BPF_OBJ_GET``) and move keys and
values as the ctypes structures of :mod:`agent.layout`. libbpf comes with the
distribution's BCC.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent.errors import PinnedStateError
from agent.layout import MAPS

BPFFS_ROOT = Path("/sys/fs/bpf/ambient")
BPF_ANY = 0

K = TypeVar("K", bound=Any)
V = TypeVar("V", bound=Any)


def _libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_get.restype = ctypes.c_int
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    lib.bpf_obj_pin.restype = ctypes.c_int
    for name in ("bpf_map_lookup_elem", "bpf_map_get_next_key"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    lib.bpf_map_update_elem.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
    ]
    lib.bpf_map_update_elem.restype = ctypes.c_int
    lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.bpf_map_delete_elem.restype = ctypes.c_int
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int
    lib.bpf_map_create.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    lib.bpf_map_create.restype = ctypes.c_int
    return lib


_LIB: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    """The process-wide handle on libbpf."""
    global _LIB  # noqa: PLW0603 - one handle per process, opened on first use
    if _LIB is None:
        try:
            _LIB = _libbpf()
        except OSError as err:
            raise PinnedStateError(
                f"libbpf is not available: {err}",
                hint="install the distribution's BCC (make setup installs libbpfcc)",
            ) from err
    return _LIB


def pin_dir_for(node_id: str, root: Path = BPFFS_ROOT) -> Path:
    """Where a node's programs and maps are pinned.

    bpffs refuses names with a dot (EPERM, even to look one up), and node names are
    often DNS names, so dots become underscores.
    """
    if not node_id or "/" in node_id or set(node_id) <= {"."}:
        raise PinnedStateError(f"invalid node id {node_id!r}", hint="use e.g. <lab>-node1")
    return root / node_id.replace(".", "_")


def obj_get(path: Path) -> int:
    """A new fd for the object pinned at ``path``."""
    fd = int(libbpf().bpf_obj_get(str(path).encode()))
    if fd < 0:
        err = ctypes.get_errno()
        raise PinnedStateError(
            f"cannot open pinned object {path}: {os.strerror(err)}",
            hint="is the agent of this node running, or has it ever run? "
            "('ambient agent run'); ids are listed under /sys/fs/bpf/ambient/",
        )
    return fd


class PinnedMap(Generic[K, V]):
    """One pinned map, opened by path; keys and values as ctypes structures."""

    def __init__(self, path: Path, key_type: type[K], value_type: type[V]) -> None:
        self.path = path
        self.key_type = key_type
        self.value_type = value_type
        self.fd = obj_get(path)

    @classmethod
    def open(cls, pin_dir: Path, name: str) -> PinnedMap[Any, Any]:
        """Opens the map ``name`` of :data:`agent.layout.MAPS` under ``pin_dir``."""
        key_type, value_type = MAPS[name]
        return PinnedMap(pin_dir / name, key_type, value_type)

    def close(self) -> None:
        """Closes the fd (the pinned map stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: K) -> V | None:
        """The value at ``key``, or None."""
        value = self.value_type()
        rc = libbpf().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        return value if rc == 0 else None

    def put(self, key: K, value: V) -> None:
        """Creates or replaces ``key``."""
        rc = libbpf().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY)
        if rc != 0:
            err = ctypes.get_errno() or -rc
            raise PinnedStateError(f"cannot write {self.path}: {os.strerror(err)}")

    def delete(self, key: K) -> bool:
        """Deletes ``key``; False when it was not there."""
        return int(libbpf().bpf_map_delete_elem(self.fd, ctypes.byref(key))) == 0

    def keys(self) -> list[K]:
        """Every key (a snapshot; entries may change while it is taken)."""
        out: list[K] = []
        prev: Any = None
        for _ in range(1 << 20):
            nxt = self.key_type()
            rc = libbpf().bpf_map_get_next_key(
                self.fd, None if prev is None else ctypes.byref(prev), ctypes.byref(nxt)
            )
            if rc != 0:
                break
            out.append(nxt)
            prev = nxt
        return out

    def items(self) -> Iterator[tuple[K, V]]:
        """(key, value) pairs of a snapshot of the keys."""
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel says about a pinned program."""

    name: str
    id: int
    tag: str
    pinned: str


class _BpfProgInfo(ctypes.Structure):
    # the leading fields of struct bpf_prog_info (uapi/linux/bpf.h), enough for id/tag/name
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


def program_info(path: Path) -> ProgramInfo:
    """Id, tag and kernel name of the program pinned at ``path``."""
    fd = obj_get(path)
    try:
        info = _BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        rc = libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
        if rc != 0:
            raise PinnedStateError(f"cannot read program info of {path}")
        return ProgramInfo(
            name=info.name.decode(errors="replace"),
            id=int(info.id),
            tag=bytes(info.tag).hex(),
            pinned=str(path),
        )
    finally:
        os.close(fd)


def pin(fd: int, path: Path) -> None:
    """Pins the object behind ``fd`` at ``path`` (replacing an older pin)."""
    if path.exists():
        path.unlink()
    if libbpf().bpf_obj_pin(fd, str(path).encode()) != 0:
        err = ctypes.get_errno()
        raise PinnedStateError(
            f"cannot pin at {path}: {os.strerror(err)}",
            hint="bpffs must be mounted at /sys/fs/bpf (make setup)",
        )


def remove_pins(pin_dir: Path) -> list[str]:
    """Unpins everything under ``pin_dir`` and removes the folder; returns what it removed."""
    if not pin_dir.exists():
        return []
    removed = sorted(p.name for p in pin_dir.iterdir())
    shutil.rmtree(pin_dir)
    return removed
