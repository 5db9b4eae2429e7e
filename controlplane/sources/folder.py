"""The standalone cluster source: a folder (or file) of Kubernetes YAML, watched for changes.

The pure core is :func:`decode_file` (one file's documents to objects, keeping the last
good version of an object whose new version is bad) and :func:`merge_files` (all files
to one state, duplicates reported). :class:`FolderSource` is the shell: it stats and
reads files, re-reads only those that changed, and polls for changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.errors import FolderSourceError
from controlplane.model import ClusterObject, ClusterState, Namespace, SourceIssue
from controlplane.sources.decode import decode
from controlplane.sources.documents import SUFFIXES, FileContent, config_files, read_file
from controlplane.sources.state import _FIELD_OF, ObjectKey, assemble, object_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    """The objects one file contributes, and what was wrong in it."""

    file: str
    objects: Mapping[ObjectKey, ClusterObject] = field(default_factory=dict)
    issues: tuple[SourceIssue, ...] = ()
    lines: Mapping[ObjectKey, int] = field(default_factory=dict)
    """Line of each object's document in this version of the file (0: kept from before)."""


def decode_file(
    file: str, content: FileContent, previous: Mapping[ObjectKey, ClusterObject]
) -> FileResult:
    """Decodes a file's documents; bad objects keep their ``previous`` good version.

    When the file could not be read to its end (a syntax error), objects it held before
    that were not read again stay in force too: a half-saved file removes nothing.
    """
    objects: dict[ObjectKey, ClusterObject] = {}
    lines: dict[ObjectKey, int] = {}
    issues: list[SourceIssue] = []
    for doc in content.documents:
        result = decode(doc.data)
        key: ObjectKey = (result.key_kind, result.namespace, result.name)
        if result.obj is not None:
            key = object_key(result.obj)
            if key in objects:
                issues.append(_duplicate(doc.file, doc.line, key, "earlier in this file"))
                continue
            objects[key] = result.obj
            lines[key] = doc.line
            issues += result.issues(doc.file, doc.line)
            continue
        kept = result.rejected and key in previous and key not in objects
        if kept:
            objects[key] = previous[key]
        issues += result.issues(doc.file, doc.line, kept_previous=kept)
    if content.fault is not None:
        issues.append(content.fault)
        for key, obj in previous.items():
            objects.setdefault(key, obj)
    return FileResult(file, objects, tuple(issues), lines)


def merge_files(results: Iterable[FileResult]) -> ClusterState:
    """One state from every file's objects; an object defined twice keeps the first."""
    objects: dict[ObjectKey, ClusterObject] = {}
    origin: dict[ObjectKey, str] = {}
    issues: list[SourceIssue] = []
    for result in results:
        issues += result.issues
        for key, obj in result.objects.items():
            if key in objects:
                issues.append(_duplicate(result.file, 0, key, f"in {origin[key]}"))
                continue
            objects[key] = obj
            origin[key] = result.file
    return assemble(objects.values(), issues)


def _duplicate(file: str, line: int, key: ObjectKey, where: str) -> SourceIssue:
    kind, namespace, name = key
    return SourceIssue(
        file=file,
        line=line,
        kind=kind,
        namespace=namespace,
        name=name,
        field="metadata.name",
        message=f"defined again (first {where}); this copy is ignored",
    )


@dataclass
class _Cached:
    stamp: tuple[int, int, int]
    result: FileResult


RACY_NS = 50_000_000
"""A folder listed less than this after its mtime may change again within the same
timestamp tick (file systems stamp with a coarse clock): it is listed again next poll."""
FULL_SCAN_INTERVAL = 1.0
"""Seconds between stat sweeps of a big folder's files in ``watch()``: they catch files
rewritten in place (same inode, so their folder's mtime does not move)."""


class FolderSource:
    """Cluster state from a folder of YAML (recursively) or a single file.

    ``load()`` reads everything (re-reading only files whose size, mtime or inode
    changed); ``watch()`` polls and yields a new state on every change. An object whose
    file turns bad keeps its last good version; a deleted file's objects go away.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._cache: dict[Path, _Cached] = {}
        self._state: ClusterState | None = None
        self._folders: dict[str, tuple[int, int]] = {}
        """Folder -> (its mtime, when it was listed), both ns, for :meth:`_poll`."""
        self._touched: set[Path] = set()
        """Files the current poll re-read or dropped."""
        self._listings: dict[str, dict[str, int]] = {}
        """Folder -> its last listing (name -> inode), for :meth:`_relist`."""
        self._names: dict[str, Path] = {}
        """The cached files by their path as a string (cheaper than ``Path`` hashing)."""
        self._full_at = 0.0

    def load(self) -> ClusterState:
        """The current state of the folder."""
        if not self.path.exists():
            raise FolderSourceError(
                f"configuration path {self.path} does not exist",
                hint="create the folder or point the source at an existing file or folder",
            )
        # Folder stamps first: a change while listing then shows as a newer mtime.
        folders = _folder_stamps(self.path)
        try:
            files = list(config_files(self.path))
        except OSError as err:
            raise FolderSourceError(
                f"cannot list configuration folder {self.path}: {err.strerror or err}",
                hint="check the folder's permissions",
            ) from err
        self._folders, self._listings = folders, {}
        cache: dict[Path, _Cached] = {}
        for path in files:
            cache[path] = self._read(path)
        self._full_at = time.monotonic()
        self._names = {str(p): p for p in cache}
        return self._adopt(cache)

    def _adopt(self, cache: dict[Path, _Cached]) -> ClusterState:
        unchanged = cache.keys() == self._cache.keys() and all(
            cache[p] is self._cache[p] for p in cache
        )
        if not unchanged or self._state is None:
            self._state = merge_files(c.result for c in cache.values())
        self._cache = cache
        return self._state

    def _read(self, path: Path) -> _Cached:
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = (0, 0, 0)
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp and stamp != (0, 0, 0):
            return cached
        previous = cached.result.objects if cached is not None else {}
        display = str(path)
        return _Cached(stamp, decode_file(display, read_file(path, display), previous))

    def _poll(self) -> ClusterState:
        """:meth:`load` without stat'ing every file on every poll.

        Only folders whose mtime moved (a file created, deleted or renamed into place,
        as the lab and ``kubectl``-style tools write) are listed again, and of their
        files only new ones and those whose inode changed (known from the listing,
        without a stat) are read. Files rewritten in place (same inode, so their
        folder's mtime does not move) are caught by a stat sweep of every known file
        every :data:`FULL_SCAN_INTERVAL` seconds.
        """
        if self._state is None or not self.path.is_dir():
            return self.load()
        changed = self._changed_folders()
        if changed is None:
            return self.load()
        sweep = time.monotonic() - self._full_at >= FULL_SCAN_INTERVAL
        if not changed and not sweep:
            return self._state
        cache = dict(self._cache)
        self._touched = set()
        dirty = renamed = False
        for folder, entries in changed.items():
            outcome = self._relist(cache, folder, entries)
            if outcome is None:
                return self.load()  # a new folder: list everything
            dirty, renamed = dirty or outcome[0], renamed or outcome[1]
        if sweep:
            self._full_at = time.monotonic()
            swept = self._sweep(cache)
            dirty, renamed = dirty or swept[0], renamed or swept[1]
        if not dirty:
            return self._state
        if renamed:
            cache = {p: cache[p] for p in sorted(cache, key=str)}
            self._names = {str(p): p for p in cache}
        touched = self._touched
        state = self._state
        self._state = None
        new_state = _patched(state, [(self._cache.get(p), cache.get(p)) for p in touched])
        self._cache = cache
        self._state = new_state or merge_files(c.result for c in cache.values())
        return self._state

    def _relist(
        self, cache: dict[Path, _Cached], folder: str, listing: Mapping[str, int]
    ) -> tuple[bool, bool] | None:
        """Update ``cache`` from one folder's listing (name -> inode).

        Returns (anything changed, files came or went), or None when a subfolder
        appeared (the caller then loads everything). Only the names whose inode differs
        from the previous listing are looked at, so a folder of 5,000 files costs two
        set operations, not 5,000 Python steps.
        """
        previous = self._listings.get(folder)
        if previous is None:
            previous = {
                os.path.basename(n): self._cache[p].stamp[2]
                for n, p in self._names.items()
                if os.path.dirname(n) == folder and p in self._cache
            }
        self._listings[folder] = dict(listing)
        dirty = renamed = False
        for name, _inode in listing.items() - previous.items():
            if name.startswith("."):
                continue
            full = os.path.join(folder, name)
            if os.path.isdir(full):
                if full not in self._folders:
                    return None
                continue
            if not name.endswith(SUFFIXES):
                continue
            path = self._names.get(full)
            if path is None:
                path, renamed = Path(full), True
            cache[path] = self._read(path)
            self._touched.add(path)
            dirty = True
        for name in previous.keys() - listing.keys():
            path = self._names.get(os.path.join(folder, name))
            if path is not None and path in cache:
                del cache[path]
                self._touched.add(path)
                dirty = renamed = True
        return dirty, renamed

    def _sweep(self, cache: dict[Path, _Cached]) -> tuple[bool, bool]:
        """Stat every known file; re-read those that changed in place, drop vanished ones."""
        dirty = renamed = False
        for name, path in self._names.items():
            cached = cache.get(path)
            if cached is None:
                continue
            try:
                st = os.stat(name)
            except OSError:
                del cache[path]
                self._touched.add(path)
                dirty = renamed = True
                continue
            if (st.st_mtime_ns, st.st_size, st.st_ino) != cached.stamp:
                cache[path] = self._read(path)
                self._touched.add(path)
                dirty = True
        return dirty, renamed

    def _changed_folders(self) -> dict[str, dict[str, int]] | None:
        """Listings (name -> inode) of the folders whose mtime moved (or may move unseen).

        None when a folder cannot be read (the caller then loads everything).
        """
        changed: dict[str, dict[str, int]] = {}
        for folder, (mtime, listed) in self._folders.items():
            try:
                now_mtime = os.stat(folder).st_mtime_ns
                if now_mtime != mtime or listed - mtime < RACY_NS:
                    listed_at = time.time_ns()
                    with os.scandir(folder) as entries:
                        changed[folder] = {e.name: e.inode() for e in entries}
                    self._folders[folder] = (now_mtime, listed_at)
            except OSError:
                return None
        return changed

    async def watch(self, interval: float = 0.5) -> AsyncIterator[ClusterState]:
        """Yields the state now, then again whenever objects or issues change.

        Polls every ``interval`` seconds (:meth:`_poll`: a ``stat`` per folder, and every
        file's every :data:`FULL_SCAN_INTERVAL`); files are read only when changed. Every
        ztunnel worker and agent polls: a full :meth:`load` of a dozen files each time
        was about 0.2 ms of CPU per poll and process, a burst in the middle of traffic.
        If the folder vanishes after the first state, the last state stays in force and
        polling goes on until it is back (a missing folder at the start is an error).
        """
        last: ClusterState | None = None
        while True:
            try:
                state = await asyncio.to_thread(self._poll) if _large(self._cache) else self._poll()
            except FolderSourceError as err:
                if last is None:
                    raise
                log.warning("%s; keeping the last state", err)
                await asyncio.sleep(interval)
                continue
            if last is None or not _same(state, last):
                last = state
                yield state
            await asyncio.sleep(interval)


def _same(a: ClusterState, b: ClusterState) -> bool:
    return a.same_objects(b) and a.errors == b.errors and a.warnings == b.warnings


def _patched(
    state: ClusterState, changes: Iterable[tuple[_Cached | None, _Cached | None]]
) -> ClusterState | None:
    """``state`` with some files' objects replaced, or None when only a merge can tell.

    Equal to :func:`merge_files` over every file when the state and the changed files
    have no issues (so no object is defined twice): the changed files' old objects go,
    their new ones come. A change that defines an object another file holds, or any
    issue, needs the full merge (first file wins, issues in file order).
    """
    if state.errors or state.warnings:
        return None
    tables: dict[str, Any] = {name: dict(getattr(state, name)) for name in _TABLES}
    for old, new in changes:
        before = old.result.objects if old is not None else {}
        after = new.result.objects if new is not None else {}
        if (old is not None and old.result.issues) or (new is not None and new.result.issues):
            return None
        for key in before.keys() - after.keys():
            table, table_key = _place(before[key])
            tables[table].pop(table_key, None)
        for key, obj in after.items():
            table, table_key = _place(obj)
            if key not in before and table_key in tables[table]:
                return None  # defined in another file too
            tables[table][table_key] = obj
    return dataclasses.replace(state, **tables)  # every table (secrets too), no issues


_TABLES = ("namespaces", *sorted(set(_FIELD_OF.values())))


def _place(obj: ClusterObject) -> tuple[str, Any]:
    """The state table an object lives in, and its key there."""
    if isinstance(obj, Namespace):
        return "namespaces", obj.name
    return _FIELD_OF[type(obj)], (obj.namespace, obj.name)


def _folder_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Every folder ``config_files`` reads under ``root``, with its mtime and now (ns)."""
    if not root.is_dir():
        return {}
    stamps: dict[str, tuple[int, int]] = {}
    for folder, dirs, _files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        with contextlib.suppress(OSError):
            stamps[folder] = (os.stat(folder).st_mtime_ns, time.time_ns())
    return stamps


def _large(cache: Mapping[Path, _Cached]) -> bool:
    """Big folders are scanned off the event loop so that it stays responsive."""
    return len(cache) > int(os.environ.get("AMBIENT_FOLDER_THREAD_THRESHOLD", "200"))
