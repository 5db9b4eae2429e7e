"""The capture policy: the settings the programs read, and their decision in Python.

:class:`CaptureSettings` is what the agent writes into the ``settings`` map. The
``decide_*`` functions mirror ``bpf/include/decide.h`` line for line, so the decision
can be table-tested without a kernel (``tests/unit/test_bpf_decision.py``) and the same
table can be run against the compiled programs (``tests/integration``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.errors import ConfigError
from agent.layout import (
    MAX_EXCLUDED_CIDRS,
    MAX_EXCLUDED_PORTS,
    Settings,
    SettingsFlags,
    Verdict,
    WorkloadFlags,
    cidr_from_c,
    cidr_to_c,
)

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
HBONE_PORT = 15008
DEFAULT_MARK = 0x539


@dataclass(frozen=True)
class CaptureSettings:
    """What the capture programs need to know, written to the ``settings`` map."""

    mark: int = DEFAULT_MARK
    """Set on every assigned packet; the agent's fwmark rule routes it locally."""
    outbound_port: int = OUTBOUND_PORT
    """ztunnel's outbound capture listener."""
    inbound_port: int = INBOUND_PORT
    """ztunnel's inbound plaintext listener."""
    hbone_port: int = HBONE_PORT
    """ztunnel's HBONE listener; SYNs to this port of an enrolled pod go there."""
    outbound_excluded_ports: tuple[int, ...] = (HBONE_PORT,)
    """Destination ports an enrolled pod reaches directly (Istio excludes 15008)."""
    inbound_excluded_ports: tuple[int, ...] = ()
    """Ports of enrolled pods that plaintext clients reach directly."""
    excluded_cidrs: tuple[str, ...] = ()
    """Destinations an enrolled pod reaches directly (e.g. the node's own network)."""

    def __post_init__(self) -> None:
        for name in ("outbound_port", "inbound_port", "hbone_port"):
            _check_port(name, getattr(self, name))
        for name, limit in (
            ("outbound_excluded_ports", MAX_EXCLUDED_PORTS),
            ("inbound_excluded_ports", MAX_EXCLUDED_PORTS),
            ("excluded_cidrs", MAX_EXCLUDED_CIDRS),
        ):
            if len(getattr(self, name)) > limit:
                raise ConfigError(f"{name}: at most {limit} entries fit the settings map")
        for port in (*self.outbound_excluded_ports, *self.inbound_excluded_ports):
            _check_port("excluded port", port)
        for cidr in self.excluded_cidrs:
            try:
                ipaddress.IPv4Network(cidr, strict=False)
            except ValueError as err:
                raise ConfigError(f"excluded CIDR {cidr!r} is not an IPv4 network") from err
        if not 0 < self.mark < 1 << 32:
            raise ConfigError(f"mark {self.mark:#x} must be a non-zero 32-bit value")

    def to_c(self) -> Settings:
        """The ``struct settings`` value, marked configured."""
        value = Settings()
        value.flags = int(SettingsFlags.CONFIGURED)
        value.mark = self.mark
        value.outbound_port = self.outbound_port
        value.inbound_port = self.inbound_port
        value.hbone_port = self.hbone_port
        for i, port in enumerate(self.outbound_excluded_ports):
            value.outbound_excluded_ports[i] = port
        for i, port in enumerate(self.inbound_excluded_ports):
            value.inbound_excluded_ports[i] = port
        for i, cidr in enumerate(self.excluded_cidrs):
            value.excluded_cidrs[i] = cidr_to_c(cidr)
        return value

    @classmethod
    def from_c(cls, value: Settings) -> CaptureSettings:
        """Reads back a ``struct settings`` value."""
        return cls(
            mark=int(value.mark),
            outbound_port=int(value.outbound_port),
            inbound_port=int(value.inbound_port),
            hbone_port=int(value.hbone_port),
            outbound_excluded_ports=tuple(int(p) for p in value.outbound_excluded_ports if p),
            inbound_excluded_ports=tuple(int(p) for p in value.inbound_excluded_ports if p),
            excluded_cidrs=tuple(cidr_from_c(c) for c in value.excluded_cidrs if c.mask),
        )

    def cidr_excluded(self, daddr: str) -> bool:
        """Whether ``daddr`` falls in an excluded CIDR."""
        ip = ipaddress.IPv4Address(daddr)
        return any(ip in ipaddress.IPv4Network(c, strict=False) for c in self.excluded_cidrs)


def _check_port(name: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{name} {port} is not a TCP port (1-65535)")


def _local_enrolled(flags: int) -> bool:
    both = WorkloadFlags.ENROLLED | WorkloadFlags.LOCAL
    return (flags & both) == both


def decide_inbound(cfg: CaptureSettings, dport: int) -> Verdict:
    """A SYN to an enrolled pod of this node: HBONE, excluded, or plaintext inbound."""
    if dport == cfg.hbone_port:
        return Verdict.REDIRECT_HBONE
    if dport in cfg.inbound_excluded_ports:
        return Verdict.PASS
    return Verdict.REDIRECT_INBOUND


def decide_pod_egress_syn(
    cfg: CaptureSettings, src_flags: int, dst_flags: int, daddr: str, dport: int
) -> Verdict:
    """Pod egress, for a SYN no socket owns; flags are 0 for an unknown address."""
    if (
        src_flags & WorkloadFlags.ENROLLED
        and dport not in cfg.outbound_excluded_ports
        and not cfg.cidr_excluded(daddr)
    ):
        return Verdict.REDIRECT_OUTBOUND
    if _local_enrolled(dst_flags):
        return decide_inbound(cfg, dport)
    return Verdict.PASS


def decide_node_ingress_syn(cfg: CaptureSettings, dst_flags: int, dport: int) -> Verdict:
    """Node ingress, for a SYN no socket owns, to a pod of this node."""
    if _local_enrolled(dst_flags):
        return decide_inbound(cfg, dport)
    return Verdict.PASS


def listener_port(cfg: CaptureSettings, verdict: Verdict) -> int | None:
    """The listener a redirect verdict needs (None for PASS)."""
    return {
        Verdict.REDIRECT_OUTBOUND: cfg.outbound_port,
        Verdict.REDIRECT_INBOUND: cfg.inbound_port,
        Verdict.REDIRECT_HBONE: cfg.hbone_port,
    }.get(verdict)
