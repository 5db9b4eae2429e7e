"""One node of a multi-machine lab: the spec's checks and the saved record (no root)."""

from __future__ import annotations

from typing import Any

import pytest

from lab.errors import LabSpecError
from lab.remote import RemoteNode, RemoteNodeSpec, parse_peers


def spec(**kw: Any) -> RemoteNodeSpec:
    values: dict[str, Any] = {
        "name": "vm",
        "node_index": 2,
        "uplink_device": "eth1",
        "fabric_ip": "192.168.56.12/24",
        "peers": {1: "192.168.56.11"},
        "host_netns": "vmtest",
    }
    return RemoteNodeSpec(**{**values, **kw})


def test_a_valid_spec() -> None:
    assert spec().interface.network.prefixlen == 24
    assert spec(host_netns=None, allow_host_namespace=True).host_netns is None


def test_the_machines_own_namespace_only_when_allowed() -> None:
    with pytest.raises(LabSpecError) as err:
        spec(host_netns=None)
    assert "--allow-host-namespace" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"peers": {2: "192.168.56.11"}}, "this node's own index"),
        ({"peers": {1: "10.0.0.1"}}, "not another address of 192.168.56.0/24"),
        ({"peers": {1: "192.168.56.12"}}, "not another address"),
        ({"peers": {1: "node1"}}, "not an IPv4 address"),
        ({"fabric_ip": "192.168.56.12"}, "prefix length"),
        ({"node_index": 0}, "node index"),
        ({"uplink_device": "a-very-long-interface"}, "not an interface name"),
        ({"name": "Bad_Name"}, "lab name"),
    ],
)
def test_bad_specs_are_refused_saying_why(change: dict[str, object], says: str) -> None:
    with pytest.raises(LabSpecError, match=says) as err:
        spec(**change)
    assert err.value.hint, "every refusal of a flag says what to pass instead"


def test_peers_from_flags() -> None:
    assert parse_peers(["1=192.168.56.11", "3= 192.168.56.13"]) == {
        1: "192.168.56.11",
        3: "192.168.56.13",
    }
    for bad in ("192.168.56.11", "x=1.2.3.4", "1="):
        with pytest.raises(LabSpecError, match="INDEX=ADDRESS") as err:
            parse_peers([bad])
        assert err.value.hint


def test_the_record_round_trips() -> None:
    record = RemoteNode(2, "eth1", "192.168.56.12", 24, {1: "192.168.56.11"}, None,
                        [("192.168.56.12", 24)])  # fmt: skip
    assert RemoteNode.from_json(record.to_json()) == record
    pinned = RemoteNode(2, "eth1", "192.168.56.12", 24, {}, "vm", [], host_netns_id=(4, 4026531840))
    assert RemoteNode.from_json(pinned.to_json()).host_netns_id == (4, 4026531840)
