"""The ctypes mirrors of agent/layout.py against the types BCC derives from maps.h.

Cilium's "alignchecker" idea: a layout is written once in C; wherever user space
mirrors it, a test compares size and every field offset with the compiler's view.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.layout import MAPS
from agent.pinned import remove_pins

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.timeout(60)]

PIN_DIR = Path(f"/sys/fs/bpf/capx-layout{os.getpid()}")


def layout(ctype: Any) -> Any:
    """Size plus, recursively, (name, offset, layout) of every field."""
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
        return (
            ctypes.sizeof(ctype),
            [
                (name, getattr(ctype, name).offset, layout(ftype))
                for name, ftype, *_ in ctype._fields_
            ],
        )
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        return (ctypes.sizeof(ctype), ctype._length_, layout(ctype._type_))
    return ctypes.sizeof(ctype)


@pytest.fixture(scope="module")
def bcc_tables() -> Iterator[Any]:
    from agent.programs import PROGRAMS, compile_source

    try:
        yield compile_source(PROGRAMS["pod_egress"], PIN_DIR)
    finally:
        remove_pins(PIN_DIR)


@pytest.mark.parametrize("name", sorted(MAPS))
def test_mirror_matches_bcc_layout(bcc_tables: Any, name: str) -> None:
    table = bcc_tables[name.encode()]
    key_type, value_type = MAPS[name]
    assert layout(key_type) == layout(table.Key)
    assert layout(value_type) == layout(table.Leaf)


def test_maps_are_pinned_where_the_agent_looks(bcc_tables: Any) -> None:
    assert sorted(p.name for p in PIN_DIR.iterdir()) == sorted(MAPS)
