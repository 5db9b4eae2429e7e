"""Reading YAML (or JSON) files into documents that remember where they started.

Each document keeps its file and the line of its start, so that every problem found
later can be reported as ``file:line``. A file that cannot be read or parsed yields
the documents before the fault and one :class:`~controlplane.model.SourceIssue`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controlplane.model import SourceIssue

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SUFFIXES = (".yaml", ".yml", ".json")
"""Files a folder source reads; everything else in the folder is left alone."""


@dataclass(frozen=True)
class Document:
    """One YAML document (or one item of a ``kind: List``)."""

    file: str
    line: int
    """1-based line of the document's first token."""
    data: Any


@dataclass(frozen=True)
class FileContent:
    """What one file held: its documents, and the fault that stopped reading, if any."""

    documents: tuple[Document, ...]
    fault: SourceIssue | None = None


def parse_text(text: str, file: str) -> FileContent:
    """Splits ``text`` into documents; a syntax error ends the file with a fault."""
    docs: list[Document] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1
            data = loader.construct_document(node)
            if data is not None:
                docs.extend(_expand_list(file, line, data))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        return FileContent(tuple(docs), _fault(file, line, f"invalid YAML: {problem}"))
    finally:
        loader.dispose()
    return FileContent(tuple(docs))


def read_file(path: Path, file: str | None = None) -> FileContent:
    """Reads and parses one file; unreadable or non-UTF-8 files become a fault."""
    name = file if file is not None else str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        return FileContent((), _fault(name, 0, f"cannot read the file: {err.strerror or err}"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return FileContent((), _fault(name, 0, f"not UTF-8 text (byte {err.start}); not YAML"))
    return parse_text(text, name)


def config_files(root: Path) -> Iterator[Path]:
    """The YAML/JSON files under ``root`` (itself, if a file), sorted, hidden ones skipped."""
    if root.is_file():
        yield root
        return
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            os.path.join(folder, f) for f in files if not f.startswith(".") and f.endswith(SUFFIXES)
        ]
    for path in sorted(found):
        yield Path(path)


def _expand_list(file: str, line: int, data: Any) -> list[Document]:
    """``kind: List`` (what ``kubectl get -o yaml`` prints) stands for its items."""
    if isinstance(data, Mapping) and data.get("kind") == "List" and "items" in data:
        items = data["items"]
        if isinstance(items, list):
            return [Document(file, line, item) for item in items]
    return [Document(file, line, data)]


def _fault(file: str, line: int, message: str) -> SourceIssue:
    return SourceIssue.about_file(file, message, line=line)
