"""`ambient maps`: filters, and what it says when nothing is pinned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.errors import PinnedStateError
from agent.maps_cli import filter_rows
from agent.nodemaps import NodeMaps
from agent.pinned import pin_dir_for

ROWS: list[dict[str, Any]] = [
    {"pod_ip": "10.244.1.2", "namespace": "mesh", "pod": "a"},
    {"pod_ip": "10.244.1.3", "namespace": "plain", "pod": "b"},
    {"pod_ip": "0.0.0.0", "namespace": None, "pod": None},
]


def test_filters_by_pod_ip_and_namespace() -> None:
    assert filter_rows(ROWS, "10.244.1.3", None) == [ROWS[1]]
    assert filter_rows(ROWS, None, "mesh") == [ROWS[0]]
    assert filter_rows(ROWS, "10.244.1.3", "mesh") == []
    assert filter_rows(ROWS, None, None) == ROWS


def test_nothing_pinned_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(PinnedStateError) as err:
        NodeMaps(tmp_path / "lab-node9")
    assert "nothing pinned for this node" in err.value.message
    assert err.value.hint is not None and "ambient agent run" in err.value.hint


@pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
def test_node_ids_cannot_escape_the_pin_root(bad: str) -> None:
    with pytest.raises(PinnedStateError):
        pin_dir_for(bad)


def test_dns_node_names_become_bpffs_safe() -> None:
    assert pin_dir_for("ip-10-0-0-1.ec2.internal").name == "ip-10-0-0-1_ec2_internal"
