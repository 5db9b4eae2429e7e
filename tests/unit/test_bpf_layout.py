"""The user-space mirror of the shared headers: every code as numbered in codes.h."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from agent.layout import (
    DROP_MAX,
    MAX_ATTACHMENTS,
    MAX_EXCLUDED_CIDRS,
    MAX_EXCLUDED_PORTS,
    MAX_WORKLOADS,
    VERDICT_MAX,
    AttachKind,
    AttachmentValue,
    Drop,
    PodStats,
    Settings,
    SettingsFlags,
    Verdict,
    WorkloadFlags,
    WorkloadValue,
    cidr_from_c,
    cidr_to_c,
    ip_to_u32,
    u32_to_ip,
)

INCLUDE = Path(__file__).resolve().parents[2] / "bpf" / "include"
DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(\d+)\b", re.MULTILINE)


def defines(header: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in DEFINE.finditer((INCLUDE / header).read_text())}


@pytest.mark.parametrize(
    ("prefix", "enum"),
    [
        ("VERDICT_", Verdict),
        ("DROP_", Drop),
        ("WORKLOAD_", WorkloadFlags),
        ("SETTINGS_", SettingsFlags),
        ("ATTACH_", AttachKind),
    ],
)
def test_every_code_of_codes_h_is_mirrored_with_its_number(prefix: str, enum: type) -> None:
    in_c = {
        k[len(prefix) :]: v
        for k, v in defines("codes.h").items()
        if k.startswith(prefix) and not k.endswith("_MAX")
    }
    in_py = {member.name: int(member.value) for member in enum}  # type: ignore[attr-defined]
    assert in_c, f"no {prefix}* codes found in codes.h"
    assert in_py == in_c


def test_map_limits_match_maps_h() -> None:
    assert defines("codes.h")["VERDICT_MAX"] == VERDICT_MAX > max(Verdict)
    assert defines("codes.h")["DROP_MAX"] == DROP_MAX > max(Drop)
    limits = defines("maps.h")
    assert limits["MAX_WORKLOADS"] == MAX_WORKLOADS
    assert limits["MAX_EXCLUDED_PORTS"] == MAX_EXCLUDED_PORTS
    assert limits["MAX_EXCLUDED_CIDRS"] == MAX_EXCLUDED_CIDRS
    assert limits["MAX_ATTACHMENTS"] == MAX_ATTACHMENTS


def test_struct_sizes_follow_c_packing() -> None:
    # the C side is checked field by field against BCC in the integration tier
    assert ctypes.sizeof(WorkloadValue) == 16
    assert ctypes.sizeof(Settings) == 4 + 4 + 8 + 2 * 16 + 2 * 16 + 8 * 16
    assert ctypes.sizeof(PodStats) == 7 * 8
    assert ctypes.sizeof(AttachmentValue) == 4 + 4 + 16 + 64


def test_addresses_are_stored_in_network_order() -> None:
    value = ip_to_u32("10.244.1.2")
    assert ctypes.c_uint32(value).value.to_bytes(4, "little") == bytes([10, 244, 1, 2])
    assert u32_to_ip(value) == "10.244.1.2"


def test_cidr_round_trip_clears_host_bits() -> None:
    assert cidr_from_c(cidr_to_c("10.96.3.7/16")) == "10.96.0.0/16"
    assert cidr_from_c(cidr_to_c("0.0.0.0/0")) == "0.0.0.0/0"
