"""The standalone cluster source: a folder (or file) of Kubernetes YAML, watched for changes.

The pure core is :func:`decode_file` (one file's documents to objects, keeping the last
good version of an object whose new version is bad) and :func:`merge_files` (all files
to one state, duplicates reported). :class:`FolderSource` is the shell: it stats and
reads files, re-reads only those that changed, and polls for changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.errors import FolderSourceError
from controlplane.model import ClusterObject, ClusterState, SourceIssue
from controlplane.sources.decode import decode
from controlplane.sources.documents import FileContent, config_files, read_file
from controlplane.sources.state import ObjectKey, assemble, object_key

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
        key: ObjectKey = (result.kind, result.namespace, result.name)
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

    def load(self) -> ClusterState:
        """The current state of the folder."""
        if not self.path.exists():
            raise FolderSourceError(
                f"configuration path {self.path} does not exist",
                hint="create the folder or point the source at an existing file or folder",
            )
        try:
            files = list(config_files(self.path))
        except OSError as err:
            raise FolderSourceError(
                f"cannot list configuration folder {self.path}: {err.strerror or err}",
                hint="check the folder's permissions",
            ) from err
        cache: dict[Path, _Cached] = {}
        for path in files:
            cache[path] = self._read(path)
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

    async def watch(self, interval: float = 0.5) -> AsyncIterator[ClusterState]:
        """Yields the state now, then again whenever objects or issues change.

        Polls every ``interval`` seconds; files are stat'ed, and read only when changed.
        If the folder vanishes after the first state, the last state stays in force and
        polling goes on until it is back (a missing folder at the start is an error).
        """
        last: ClusterState | None = None
        while True:
            try:
                state = await asyncio.to_thread(self.load) if _large(self._cache) else self.load()
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


def _large(cache: Mapping[Path, _Cached]) -> bool:
    """Big folders are scanned off the event loop so that it stays responsive."""
    return len(cache) > int(os.environ.get("AMBIENT_FOLDER_THREAD_THRESHOLD", "200"))
