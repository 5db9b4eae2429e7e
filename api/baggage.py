"""W3C ``baggage`` (the header HBONE's CONNECT carries to describe the calling workload).

Shared by ztunnel, which writes it for its source workloads and reads it on inbound
tunnels, and the waypoint's telemetry exporter, which reads it (via Envoy's filter
state) for the ``source_*`` labels.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping


def parse_baggage(value: str) -> dict[str, str]:
    """W3C baggage to a dict; members without ``=`` and properties are ignored."""
    out: dict[str, str] = {}
    for member in value.split(","):
        entry = member.split(";", 1)[0]
        key, sep, raw = entry.partition("=")
        if sep and key.strip():
            out[key.strip()] = urllib.parse.unquote(raw.strip())
    return out


def format_baggage(items: Mapping[str, str]) -> str:
    """W3C baggage from a dict, skipping empty values (as Istio does)."""
    return ",".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in items.items() if v)
