"""``ambient agent check``: what this node's kernel offers the agent, and what to do.

Two halves, so the judgement is testable without the kernel it judges:

- :func:`collect_facts` is a thin collector. It reads ``/proc`` and ``/sys``, asks the
  ``bpf()`` syscall, sets ``IP_TRANSPARENT`` on a throw-away socket, lists links and
  routes and (read-only) the iptables/nftables rules of this network namespace, and,
  when asked, really loads a tiny ``SCHED_CLS`` program calling ``bpf_sk_assign`` and
  attaches it to a clsact qdisc. That attach happens only in a child process that first
  moves itself into a brand-new, unnamed network namespace (``unshare(CLONE_NEWNET)``),
  so it dies with the child and never touches the namespace the check was run from.
- :func:`evaluate` is a pure function from those recorded :class:`NodeFacts` to rows of
  :class:`~ambient.preflight.Check` (PASS/WARN/FAIL, detail, what to do).

The kernel floor enforced here is :data:`MIN_KERNEL` (``bpf_sk_assign`` at TC ingress
arrived in Linux 5.7); docs/operations.md documents the same floor.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ambient.preflight import Check

log = logging.getLogger("agent.check")

MIN_KERNEL = (5, 7)
PROBE_TIMEOUT_S = 60.0
LIST_TIMEOUT_S = 10.0

_IP_TRANSPARENT = 19  # linux/in.h; Python's socket module names it only on 3.12+
_CLONE_NEWNET = 0x40000000

# iptables chain prefixes of meshes whose capture would fight ours for the same packets
_MESH_CHAINS = {
    "ISTIO_": "Istio (sidecar or istio-cni capture)",
    "PROXY_INIT_": "Linkerd (proxy-init)",
    "KUMA_": "Kuma",
    "CONSUL_": "Consul Connect",
    "OSM_": "Open Service Mesh",
}
# device names by which a CNI shows itself when pods are not simply routed per veth
_CNI_DEVICES = {
    "cilium_host": "Cilium",
    "flannel.1": "Flannel (VXLAN)",
    "cni0": "a bridge CNI (Flannel or bridge plugin)",
    "vxlan.calico": "Calico (VXLAN)",
    "tunl0": "IP-in-IP (Calico)",
    "weave": "Weave",
}

_SK_ASSIGN_PROBE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

int sk_assign_probe(struct __sk_buff *skb)
{
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4),
                                             BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return TC_ACT_OK;
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    return err ? TC_ACT_SHOT : TC_ACT_OK;
}
"""


@dataclass(frozen=True)
class TcProbe:
    """What the child process saw when it tried the TC path in a scratch namespace.

    Each field is ``None`` when that step worked, else the kernel's (or BCC's) words.
    """

    scratch_netns_error: str | None
    """Creating the unnamed scratch network namespace (needs CAP_SYS_ADMIN)."""
    sk_assign_error: str | None
    """Compiling and loading a SCHED_CLS program that calls ``bpf_sk_assign``."""
    clsact_error: str | None
    """Adding a clsact qdisc to the scratch namespace's loopback (None if not tried)."""
    attach_error: str | None
    """Attaching the program as a direct-action ingress filter (None if not tried)."""


@dataclass(frozen=True)
class NodeFacts:
    """Everything :func:`evaluate` judges, recorded once; JSON round-trips for bug reports."""

    release: str
    """``uname -r``."""
    euid: int
    """Effective user id of the check (0: root)."""
    bpf_syscall_error: str | None
    """None when ``bpf(BPF_MAP_CREATE)`` worked, else why not."""
    jit_enable: int | None
    """``net.core.bpf_jit_enable`` (0 off, 1 on, 2 debug); None when unreadable."""
    bpffs_mounted: bool
    """bpffs is mounted at ``/sys/fs/bpf``."""
    btf_vmlinux: bool
    """``/sys/kernel/btf/vmlinux`` exists (kernel BTF)."""
    kernel_headers: str | None
    """Where BCC finds kernel headers (a path, or ``kheaders`` for CONFIG_IKHEADERS)."""
    bcc_importable: bool
    """The distribution's ``bcc`` Python module imports."""
    cgroup2_mount: str | None
    """Where cgroup v2 is mounted (``/sys/fs/cgroup`` on a unified host), if anywhere."""
    ip_transparent_error: str | None
    """None when ``setsockopt(IP_TRANSPARENT)`` worked, else why not."""
    tc_probe: TcProbe | None = None
    """The scratch-namespace TC probe; None when it was not run."""
    programs: tuple[tuple[str, str | None], ...] = ()
    """(capture program, load error or None); empty when not loaded."""
    veths: int = 0
    """veth interfaces in this network namespace."""
    bridged_veths: int = 0
    """Of those, how many are enslaved to a bridge."""
    pod_routes: int = 0
    """IPv4 /32 routes whose output device is a veth (a routed CNI's per-pod routes)."""
    cni_devices: tuple[str, ...] = ()
    """Device names that identify a CNI (see ``_CNI_DEVICES``)."""
    redirect_rules: tuple[str, ...] | None = ()
    """iptables/nftables rules with TPROXY or REDIRECT; None when they could not be listed."""
    firewall_listing_error: str | None = None
    """Why the rules could not be listed (tool missing, not root), if so."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (for ``--facts`` and for recorded test fixtures)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeFacts:
        """The inverse of :meth:`to_json`."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        probe = values.get("tc_probe")
        if isinstance(probe, dict):
            values["tc_probe"] = TcProbe(**probe)
        values["programs"] = tuple((str(n), e) for n, e in values.get("programs", ()))
        values["cni_devices"] = tuple(values.get("cni_devices", ()))
        rules = values.get("redirect_rules", ())
        values["redirect_rules"] = None if rules is None else tuple(rules)
        return cls(**values)


# --- the judgement (pure) -----------------------------------------------------------


def parse_release(release: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string, or None when it does not start so."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check(name: str, status: str, detail: str, fix: str = "") -> Check:
    return Check(name=name, status=status, detail=detail, fix=fix)


def check_kernel(facts: NodeFacts) -> Check:
    """The kernel floor: bpf_sk_assign at TC ingress needs Linux 5.7."""
    version = parse_release(facts.release)
    floor = ".".join(map(str, MIN_KERNEL))
    if version is None:
        return _check("kernel", "WARN", f"cannot parse kernel release {facts.release!r}")
    if version < MIN_KERNEL:
        return _check(
            "kernel",
            "FAIL",
            f"Linux {facts.release} is older than {floor}",
            f"use Linux {floor} or newer (bpf_sk_assign at TC ingress)",
        )
    return _check("kernel", "PASS", f"Linux {facts.release} (floor {floor})")


def check_root(facts: NodeFacts) -> Check:
    """Loading programs and creating namespaces needs root (or the matching capabilities)."""
    if facts.euid == 0:
        return _check("root", "PASS", "running as root")
    return _check(
        "root",
        "FAIL",
        f"running as uid {facts.euid}",
        "run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
    )


def check_bpf_syscall(facts: NodeFacts) -> Check:
    """The bpf() syscall answers."""
    if facts.bpf_syscall_error is None:
        return _check("bpf-syscall", "PASS", "bpf() creates maps")
    return _check(
        "bpf-syscall",
        "FAIL",
        f"bpf() refused: {facts.bpf_syscall_error}",
        "a kernel with CONFIG_BPF_SYSCALL, run as root (or with CAP_BPF); "
        "check kernel.unprivileged_bpf_disabled and seccomp profiles",
    )


def check_jit(facts: NodeFacts) -> Check:
    """The BPF JIT: the interpreter works but costs every packet."""
    if facts.jit_enable == 1:
        return _check("bpf-jit", "PASS", "JIT enabled")
    if facts.jit_enable == 2:
        return _check(
            "bpf-jit",
            "WARN",
            "JIT in debug mode (2): images go to the kernel log",
            "sysctl -w net.core.bpf_jit_enable=1",
        )
    if facts.jit_enable == 0:
        return _check(
            "bpf-jit",
            "WARN",
            "JIT disabled: programs are interpreted (slower per packet)",
            "sysctl -w net.core.bpf_jit_enable=1 (CONFIG_BPF_JIT)",
        )
    return _check(
        "bpf-jit",
        "WARN",
        "net.core.bpf_jit_enable is unreadable",
        "check that the kernel has CONFIG_BPF_JIT; the sysctl is visible only in the "
        "host's network namespace",
    )


def check_bpffs(facts: NodeFacts) -> Check:
    """bpffs at /sys/fs/bpf keeps maps and programs across agent restarts."""
    if facts.bpffs_mounted:
        return _check("bpffs", "PASS", "bpffs mounted at /sys/fs/bpf")
    return _check(
        "bpffs",
        "FAIL",
        "bpffs is not mounted at /sys/fs/bpf (pins would not survive a restart)",
        "mount -t bpf bpf /sys/fs/bpf on the host; in Kubernetes the agent mounts the "
        "host's /sys/fs/bpf (hostPath, mountPropagation: HostToContainer)",
    )


def check_clsact(facts: NodeFacts) -> Check:
    """A clsact qdisc can be added (the TC hook our programs attach to)."""
    probe = facts.tc_probe
    if probe is None:
        return _check("clsact", "WARN", "not tried (--quick, or not root, or no BCC)")
    if probe.scratch_netns_error is not None:
        return _check(
            "clsact",
            "WARN",
            f"not tried: no scratch network namespace ({probe.scratch_netns_error})",
            "run the check with CAP_SYS_ADMIN so it can try in a scratch namespace",
        )
    if probe.clsact_error is not None:
        return _check(
            "clsact",
            "FAIL",
            f"cannot add a clsact qdisc: {probe.clsact_error}",
            "a kernel with CONFIG_NET_SCH_INGRESS and CONFIG_NET_CLS_BPF",
        )
    if probe.attach_error is not None:
        return _check(
            "clsact",
            "FAIL",
            f"clsact added but a BPF filter did not attach: {probe.attach_error}",
            "a kernel with CONFIG_NET_CLS_BPF and CONFIG_NET_ACT_BPF",
        )
    return _check("clsact", "PASS", "clsact qdisc and a direct-action BPF filter attach")


def check_sk_assign(facts: NodeFacts) -> Check:
    """bpf_sk_assign is allowed for SCHED_CLS programs (how inbound reaches ztunnel)."""
    probe = facts.tc_probe
    if probe is None:
        return _check("bpf_sk_assign", "WARN", "not tried (--quick, or not root, or no BCC)")
    if probe.sk_assign_error is None:
        return _check("bpf_sk_assign", "PASS", "a SCHED_CLS program calling it loads")
    return _check(
        "bpf_sk_assign",
        "FAIL",
        f"a SCHED_CLS program calling bpf_sk_assign was refused: {probe.sk_assign_error}",
        f"Linux {'.'.join(map(str, MIN_KERNEL))}+ with CONFIG_NET_SCH_INGRESS; "
        "the verifier log above names the reason",
    )


def check_headers(facts: NodeFacts) -> Check:
    """BCC compiles at load time: it needs the kernel's headers (BTF alone is not enough)."""
    btf = "kernel BTF present" if facts.btf_vmlinux else "no kernel BTF"
    if not facts.bcc_importable:
        return _check(
            "bcc",
            "FAIL",
            f"the distribution's bcc module is not importable ({btf})",
            "apt-get install python3-bpfcc libbpfcc (PyPI's 'bcc' is another project)",
        )
    if facts.kernel_headers is None:
        return _check(
            "bcc",
            "FAIL",
            f"BCC has no kernel headers to compile with ({btf})",
            "install the running kernel's headers or the distribution's generic ones "
            "(apt-get install linux-headers-amd64), or load the kheaders module",
        )
    return _check("bcc", "PASS", f"BCC with headers at {facts.kernel_headers}; {btf}")


def check_cgroup2(facts: NodeFacts) -> Check:
    """cgroup v2: not used by today's TC programs, but by socket-level hooks of other CNIs."""
    mount = facts.cgroup2_mount
    if mount == "/sys/fs/cgroup":
        return _check("cgroup-v2", "PASS", "unified cgroup v2 at /sys/fs/cgroup")
    if mount is not None:
        return _check(
            "cgroup-v2",
            "WARN",
            f"hybrid cgroup hierarchy (v2 at {mount})",
            "fine for our TC programs; socket-level load balancing of a CNI "
            "(Cilium) may need the unified hierarchy",
        )
    return _check(
        "cgroup-v2",
        "WARN",
        "no cgroup v2 mount",
        "fine for our TC programs; boot with systemd.unified_cgroup_hierarchy=1 "
        "for CNIs that hook sockets",
    )


def check_ip_transparent(facts: NodeFacts) -> Check:
    """ztunnel's transparent sockets (original source and destination) need IP_TRANSPARENT."""
    if facts.ip_transparent_error is None:
        return _check("ip-transparent", "PASS", "setsockopt(IP_TRANSPARENT) allowed")
    return _check(
        "ip-transparent",
        "FAIL",
        f"setsockopt(IP_TRANSPARENT) refused: {facts.ip_transparent_error}",
        "give ztunnel CAP_NET_ADMIN and CAP_NET_RAW (or run it with --no-transparent, "
        "which loses the client's address)",
    )


def check_cni_routing(facts: NodeFacts) -> Check:
    """A routed CNI: a veth per pod and a /32 route to each pod IP on it."""
    seen = ", ".join(f"{name} ({_CNI_DEVICES[name]})" for name in facts.cni_devices)
    if facts.pod_routes > 0 and facts.bridged_veths == 0:
        detail = f"{facts.pod_routes} pod routes over {facts.veths} veths"
        return _check("cni-routing", "PASS", detail + (f"; also {seen}" if seen else ""))
    if facts.bridged_veths > 0:
        return _check(
            "cni-routing",
            "WARN",
            f"{facts.bridged_veths} of {facts.veths} veths are bridge ports"
            + (f" ({seen})" if seen else ""),
            "pods behind a bridge were not tested; see docs/operations.md (CNIs)",
        )
    if facts.veths > 0:
        return _check(
            "cni-routing",
            "WARN",
            f"{facts.veths} veths but no /32 route to a pod on any of them"
            + (f" ({seen})" if seen else ""),
            "capture needs the pod's host-side veth and a route to the pod IP on it; "
            "see docs/operations.md (CNIs)",
        )
    return _check(
        "cni-routing",
        "WARN",
        "no pod veths in this network namespace" + (f" ({seen})" if seen else ""),
        "expected before the first pod is scheduled, or off a node",
    )


def check_other_mesh(facts: NodeFacts) -> Check:
    """TPROXY/REDIRECT rules of another mesh would capture the same connections first."""
    if facts.redirect_rules is None:
        return _check(
            "other-mesh",
            "WARN",
            f"cannot list iptables/nftables rules: {facts.firewall_listing_error}",
            "run as root with iptables-save or nft installed to check",
        )
    meshes = sorted(
        {
            owner
            for rule in facts.redirect_rules
            for prefix, owner in _MESH_CHAINS.items()
            if prefix.lower() in rule.lower()
        }
    )
    if meshes:
        return _check(
            "other-mesh",
            "FAIL",
            f"capture rules of {', '.join(meshes)} present "
            f"({len(facts.redirect_rules)} TPROXY/REDIRECT rules)",
            "remove the other mesh's capture from this node (or exclude its namespaces) "
            "before enrolling pods here",
        )
    if facts.redirect_rules:
        return _check(
            "other-mesh",
            "WARN",
            f"{len(facts.redirect_rules)} TPROXY/REDIRECT rules of an unknown owner, e.g. "
            f"{facts.redirect_rules[0]!r}",
            "check they do not match pod traffic on ports 15001/15006/15008",
        )
    return _check("other-mesh", "PASS", "no TPROXY/REDIRECT rules")


def check_programs(facts: NodeFacts) -> list[Check]:
    """Our own capture programs: do they compile and pass the verifier here?"""
    rows: list[Check] = []
    for name, error in facts.programs:
        if error is None:
            rows.append(_check(name, "PASS", "compiles, loads"))
        elif error.startswith("cannot pin"):
            fix = "bpffs must be writable at /sys/fs/bpf (in Kubernetes: a read-write hostPath)"
            rows.append(_check(name, "FAIL", error, fix))
        else:
            rows.append(
                _check(name, "FAIL", error, "the verifier log above names the line and reason")
            )
    return rows


def evaluate(facts: NodeFacts) -> list[Check]:
    """Every check, in the order a reader fixes them."""
    return [
        check_root(facts),
        check_kernel(facts),
        check_bpf_syscall(facts),
        check_jit(facts),
        check_bpffs(facts),
        check_clsact(facts),
        check_sk_assign(facts),
        check_headers(facts),
        check_cgroup2(facts),
        check_ip_transparent(facts),
        check_cni_routing(facts),
        check_other_mesh(facts),
        *check_programs(facts),
    ]


def rows_of(checks: Sequence[Check]) -> list[dict[str, str | None]]:
    """Rows for :func:`ambient.output.emit`."""
    return [
        {"check": c.name, "status": c.status, "detail": c.detail, "fix": c.fix or None}
        for c in checks
    ]


def redirect_rules_in(listing: str) -> list[str]:
    """The rules of an ``iptables-save`` or ``nft list ruleset`` listing that redirect."""
    pattern = re.compile(r"(-j (TPROXY|REDIRECT)\b)|(\b(tproxy|redirect)\b)")
    return [line.strip() for line in listing.splitlines() if pattern.search(line)]


# --- the collector (thin) -----------------------------------------------------------


def _mounts() -> list[list[str]]:
    try:
        return [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return []


def _kernel_headers() -> str | None:
    from agent.kheaders import find_generic_headers, running_kernel_build_dir

    build = running_kernel_build_dir()
    if build is not None:
        return str(build)
    generic = find_generic_headers()
    if generic is not None:
        return str(generic[0])
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return "kheaders"
    return None


def _ip_transparent_error() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
    except OSError as err:
        return err.strerror or str(err)
    return None


def _jit_enable() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip())
    except (OSError, ValueError):
        return None


def _cni_facts() -> dict[str, Any]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links()
        veth_index: set[int] = set()
        bridged = 0
        names: list[str] = []
        for link in links:
            name = link.get_attr("IFLA_IFNAME") or ""
            names.append(name)
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if kind == "veth":
                veth_index.add(int(link["index"]))
                if link.get_attr("IFLA_MASTER"):
                    bridged += 1
        pod_routes = sum(
            1
            for route in ipr.get_routes(family=socket.AF_INET)
            if route["dst_len"] == 32 and route.get_attr("RTA_OIF") in veth_index
        )
    return {
        "veths": len(veth_index),
        "bridged_veths": bridged,
        "pod_routes": pod_routes,
        "cni_devices": tuple(n for n in _CNI_DEVICES if n in names),
    }


def _firewall_facts() -> dict[str, Any]:
    listings: list[str] = []
    errors: list[str] = []
    for argv in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        if shutil.which(argv[0]) is None:
            errors.append(f"{argv[0]} not installed")
            continue
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=LIST_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            errors.append(f"{argv[0]} timed out")
            continue
        if done.returncode != 0:
            errors.append(f"{argv[0]}: {done.stderr.strip() or f'exit {done.returncode}'}")
            continue
        listings.append(done.stdout)
    if not listings:
        reason = " ".join("; ".join(errors).split())  # one line, whatever the tools printed
        return {"redirect_rules": None, "firewall_listing_error": reason}
    rules = [r for text in listings for r in redirect_rules_in(text)]
    return {"redirect_rules": tuple(dict.fromkeys(rules)), "firewall_listing_error": None}


def _tc_probe() -> TcProbe:
    """Runs :func:`_tc_probe_child` in a child process (bounded in time)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.check", "--tc-probe"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        msg = f"the probe did not finish in {PROBE_TIMEOUT_S:.0f} s"
        return TcProbe(None, msg, None, None)
    lines = done.stdout.strip().splitlines()
    try:
        return TcProbe(**json.loads(lines[-1]))
    except (IndexError, ValueError, TypeError):
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return TcProbe(None, f"the probe failed: {tail}", None, None)


def _enter_scratch_netns() -> str | None:
    """Moves this process into a new, unnamed network namespace; None on success."""
    before = os.stat("/proc/self/ns/net").st_ino
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        return os.strerror(ctypes.get_errno())
    if os.stat("/proc/self/ns/net").st_ino == before:
        return "unshare returned but the namespace did not change"
    return None


def _tc_probe_child() -> TcProbe:
    """In a child process: scratch namespace, then load and attach the probe there."""
    netns_error = _enter_scratch_netns()
    from agent.kheaders import configure_bcc_environment

    try:
        configure_bcc_environment()
        from bcc import BPF

        module = BPF(text=_SK_ASSIGN_PROBE.encode())
        fn = module.load_func(b"sk_assign_probe", BPF.SCHED_CLS)
    except Exception as err:  # BCC raises bare Exception for compile and load errors
        return TcProbe(netns_error, str(err).strip() or type(err).__name__, None, None)
    if netns_error is not None:
        # never attach outside the scratch namespace
        return TcProbe(netns_error, None, None, None)
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        try:
            ipr.tc("add", "clsact", lo)
        except Exception as err:  # pyroute2's NetlinkError carries the errno text
            return TcProbe(None, None, str(err), None)
        try:
            ipr.tc(
                "add-filter",
                "bpf",
                lo,
                ":1",
                fd=fn.fd,
                name="sk_assign_probe",
                parent="ffff:fff2",
                classid=1,
                direct_action=True,
            )
        except Exception as err:
            return TcProbe(None, None, None, str(err))
    return TcProbe(None, None, None, None)


def _load_capture_programs() -> tuple[tuple[str, str | None], ...]:
    from agent.errors import AgentError
    from agent.pinned import BPFFS_ROOT, remove_pins
    from agent.programs import load_program

    scratch = BPFFS_ROOT.parent / f"ambient-check-{os.getpid()}"
    results: list[tuple[str, str | None]] = []
    try:
        for name in ("pod_egress", "node_ingress"):
            try:
                load_program(name, scratch)
                results.append((name, None))
            except AgentError as err:
                results.append((name, err.message))
            except OSError as err:  # the scratch pin folder: bpffs read-only or absent
                results.append((name, f"cannot pin maps under {scratch}: {err.strerror}"))
    finally:
        remove_pins(scratch)
    return tuple(results)


@dataclass(frozen=True)
class CollectOptions:
    """What the collector may try beyond reading."""

    tc_probe: bool = True
    """Load and attach the bpf_sk_assign probe (in a scratch namespace, child process)."""
    capture_programs: bool = True
    """Compile and load our own capture programs with maps pinned in a throw-away folder."""


def collect_facts(options: CollectOptions | None = None) -> NodeFacts:
    """Gathers :class:`NodeFacts` on this machine, in this network namespace."""
    from ambient.preflight import check_bcc, check_bpf_syscall, check_bpffs

    opts = options or CollectOptions()
    bpf = check_bpf_syscall()
    bpffs = check_bpffs().status == "PASS"
    bcc = check_bcc().status == "PASS"
    cgroup2 = next((m[1] for m in _mounts() if len(m) > 2 and m[2] == "cgroup2"), None)
    root = os.geteuid() == 0
    can_load = root and bpf.status == "PASS" and bcc
    values: dict[str, Any] = {
        "release": platform.release(),
        "euid": os.geteuid(),
        "bpf_syscall_error": None
        if bpf.status == "PASS"
        else bpf.detail.removeprefix("bpf() syscall refused: "),
        "jit_enable": _jit_enable(),
        "bpffs_mounted": bpffs,
        "btf_vmlinux": Path("/sys/kernel/btf/vmlinux").exists(),
        "kernel_headers": _kernel_headers(),
        "bcc_importable": bcc,
        "cgroup2_mount": cgroup2,
        "ip_transparent_error": _ip_transparent_error(),
        "tc_probe": _tc_probe() if opts.tc_probe and can_load else None,
        "programs": _load_capture_programs()
        if opts.capture_programs and can_load and bpffs
        else (),
        **_cni_facts(),
        **_firewall_facts(),
    }
    return NodeFacts(**values)


def log_startup_check() -> list[Check]:
    """The agent's start-up hook: the cheap checks, each WARN/FAIL logged; never raises.

    The agent loads its programs right after, so the probes are left out here.
    """
    try:
        checks = evaluate(collect_facts(CollectOptions(tc_probe=False, capture_programs=False)))
    except Exception as err:  # a check must never stop the agent it advises
        log.warning("node check could not run: %s", err)
        return []
    for check in checks:
        if check.status != "PASS" and check.name not in {"clsact", "bpf_sk_assign"}:
            log.warning(
                "node check %s %s: %s (%s)",
                check.status,
                check.name,
                check.detail,
                check.fix or "no action",
            )
    return checks


def _main(argv: Sequence[str]) -> int:
    if list(argv) == ["--tc-probe"]:
        print(json.dumps(asdict(_tc_probe_child())))
        return 0
    print("usage: python -m agent.check --tc-probe  (internal; use 'ambient agent check')")
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
