"""User-space mirror of ``bpf/include/codes.h`` and ``bpf/include/maps.h``.

The agent writes and the ``ambient maps`` commands read the pinned maps without
compiling C, so the layouts are mirrored here as ctypes structures. They are written
once in C; ``tests/unit/test_bpf_layout.py`` checks every code against ``codes.h`` and
``tests/integration/test_bpf_layout_bcc.py`` checks every size and field offset against
the key and leaf types BCC derives from ``maps.h``.

Addresses in the maps are IPv4 in network byte order (as the packet carries them);
ports are in host byte order.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from enum import IntEnum, IntFlag
from typing import Any

MAX_WORKLOADS = 4096
MAX_EXCLUDED_PORTS = 16
MAX_EXCLUDED_CIDRS = 16
MAX_ATTACHMENTS = 4096
VERDICT_MAX = 8
DROP_MAX = 8


class Verdict(IntEnum):
    """What a program decided for a packet (``VERDICT_*``); never renumbered."""

    PASS = 0
    ASSIGN_ESTABLISHED = 1
    REDIRECT_OUTBOUND = 2
    REDIRECT_INBOUND = 3
    REDIRECT_HBONE = 4
    DROP = 5


class Drop(IntEnum):
    """Why a packet was dropped (``DROP_*``); never renumbered."""

    NONE = 0
    NO_OUTBOUND_LISTENER = 1
    NO_INBOUND_LISTENER = 2
    NO_HBONE_LISTENER = 3
    ASSIGN_FAILED = 4


class WorkloadFlags(IntFlag):
    """Bits of ``workload_value.flags`` (``WORKLOAD_*``)."""

    ENROLLED = 1
    LOCAL = 2


class SettingsFlags(IntFlag):
    """Bits of ``settings.flags`` (``SETTINGS_*``)."""

    CONFIGURED = 1


class AttachKind(IntEnum):
    """``attachment_value.kind`` (``ATTACH_*``)."""

    POD_EGRESS = 1
    NODE_INGRESS = 2


class WorkloadKey(ctypes.Structure):
    """``struct workload_key``: also the key of ``stats``."""

    _fields_ = [("ip", ctypes.c_uint32)]


class WorkloadValue(ctypes.Structure):
    """``struct workload_value``."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("workload_id", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class Cidr4(ctypes.Structure):
    """``struct cidr4``."""

    _fields_ = [("addr", ctypes.c_uint32), ("mask", ctypes.c_uint32)]


class Settings(ctypes.Structure):
    """``struct settings`` (the single entry of the ``settings`` array)."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("outbound_port", ctypes.c_uint16),
        ("inbound_port", ctypes.c_uint16),
        ("hbone_port", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16),
        ("outbound_excluded_ports", ctypes.c_uint16 * MAX_EXCLUDED_PORTS),
        ("inbound_excluded_ports", ctypes.c_uint16 * MAX_EXCLUDED_PORTS),
        ("excluded_cidrs", Cidr4 * MAX_EXCLUDED_CIDRS),
    ]


STATS_FIELDS = (
    "redirected_outbound",
    "redirected_inbound",
    "redirected_hbone",
    "assigned_established",
    "dropped_no_listener",
    "dropped_assign_failed",
    "passed",
)


class PodStats(ctypes.Structure):
    """``struct pod_stats``."""

    _fields_ = [(name, ctypes.c_uint64) for name in STATS_FIELDS]


class AttachmentValue(ctypes.Structure):
    """``struct attachment_value``."""

    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("pod_ip", ctypes.c_uint32),
        ("ifname", ctypes.c_char * 16),
        ("pod", ctypes.c_char * 64),
    ]


# pinned map name -> (key type, value type)
MAPS: dict[str, tuple[type[ctypes._SimpleCData[int]] | type[ctypes.Structure], type[Any]]] = {
    "workloads": (WorkloadKey, WorkloadValue),
    "settings": (ctypes.c_uint32, Settings),
    "stats": (WorkloadKey, PodStats),
    "attachments": (ctypes.c_uint32, AttachmentValue),
    "verdicts": (ctypes.c_uint32, ctypes.c_uint64),  # Verdict -> packets
    "drops": (ctypes.c_uint32, ctypes.c_uint64),  # Drop -> packets
}


def ip_to_u32(ip: str) -> int:
    """The map representation of an IPv4 address (network byte order, read natively)."""
    return int(struct.unpack("=I", socket.inet_aton(str(ipaddress.IPv4Address(ip))))[0])


def u32_to_ip(value: int) -> str:
    """Inverse of :func:`ip_to_u32`."""
    return socket.inet_ntoa(struct.pack("=I", value))


def cidr_to_c(cidr: str) -> Cidr4:
    """A :class:`Cidr4` for ``cidr`` (host bits cleared)."""
    net = ipaddress.IPv4Network(cidr, strict=False)
    return Cidr4(addr=ip_to_u32(str(net.network_address)), mask=ip_to_u32(str(net.netmask)))


def cidr_from_c(value: Cidr4) -> str:
    """Inverse of :func:`cidr_to_c`."""
    mask = ipaddress.IPv4Address(u32_to_ip(value.mask))
    prefix = bin(int(mask)).count("1")
    return f"{u32_to_ip(value.addr)}/{prefix}"
