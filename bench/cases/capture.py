"""Capture into a node-local relay: eBPF (TC + ``bpf_sk_assign``) against iptables REDIRECT.

What a mesh adds before any proxy work: steering a pod's connections into a process of
the node. Both variants end in the *same* minimal transparent Python relay
(``agent.standin``) in node1's namespace, which dials the original destination from the
node's address; only how the connection reaches it differs:

- ``iptables-redirect`` (baseline, what Istio's CNI uses): a ``nat PREROUTING``
  ``REDIRECT`` rule on the client pod's host-side veth; the relay reads the original
  destination with ``SO_ORIGINAL_DST`` (conntrack + NAT on every packet);
- ``ebpf``: the pod is enrolled; the agent's pod-egress program hands its SYN to the
  relay's ``IP_TRANSPARENT`` listener and every later packet to the accepted socket
  (``bpf_sk_assign``, no conntrack, no NAT); the original destination is the socket's
  own local address;
- ``direct``: no capture, no relay (for scale only).

Each variant has its own client pod on node1 (so all are live at once and nothing is
reconfigured between measurements); the server pod (origin on 8080) is on node2.
Everything is inside the case's lab namespaces.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

from bench.case import Probe, RunSettings, Variant, register
from bench.cases.pod_to_pod import PROBES, PodToPod
from bench.datapath import (
    BULK_PORT,
    HTTP_PORT,
    Endpoint,
    LivePath,
    PathFactory,
    PodPair,
    check_http,
    direct,
    tune_pod,
)
from bench.errors import BenchError
from bench.procs import NetnsProcess

EBPF_PORT = 15001
NAT_PORT = 15101
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def _relay(name: str, netns: str, mode: str, port: int, settings: RunSettings) -> NetnsProcess:
    argv = [sys.executable, "-m", "agent.standin", "--port", f"{port}={mode}", "--quiet"]
    if mode == "relay":
        argv.append("--no-spoof")
    proc = NetnsProcess(name, netns, argv, settings.work_dir / "logs" / f"{name}.log").start()
    proc.wait_listening([port])
    return proc


def _iptables(netns: str, *rule: str) -> None:
    tool = shutil.which("iptables")
    if tool is None:
        raise BenchError("iptables is missing", hint="apt-get install iptables")
    done = subprocess.run(
        ["ip", "netns", "exec", netns, tool, *rule],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"iptables {' '.join(rule)} in {netns}: {done.stderr.strip()}")


@contextlib.contextmanager
def iptables_redirect(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
    """A plain pod whose veth has a ``REDIRECT`` rule to the relay in node1's namespace."""
    lab = pair.lab
    client = lab.add_pod("client-nat", namespace="bench", node="node1")
    tune_pod(client)
    node = lab.node("node1")
    rule = ("PREROUTING", "-i", client.host_ifname, "-p", "tcp")
    relay = _relay("relay-nat", node.netns, "relay-nat", NAT_PORT, settings)
    try:
        _iptables(
            node.netns, "-t", "nat", "-A", *rule, "-j", "REDIRECT", "--to-ports", str(NAT_PORT)
        )
        live = LivePath(
            client_netns=client.netns,
            http=Endpoint(pair.server.ip, HTTP_PORT),
            bulk=Endpoint(pair.server.ip, BULK_PORT),
            proxies=[relay],
        )
        check_http(client.netns, live.http)
        yield live
    finally:
        with contextlib.suppress(BenchError):
            _iptables(
                node.netns, "-t", "nat", "-D", *rule, "-j", "REDIRECT", "--to-ports", str(NAT_PORT)
            )
        relay.stop()


@contextlib.contextmanager
def ebpf_capture(pair: PodPair, settings: RunSettings) -> Iterator[LivePath]:
    """An enrolled pod, the node agent (only this pod in its view), the relay on 15001."""
    from agent.daemon import cleanup
    from agent.pinned import BPFFS_ROOT, remove_pins
    from lab import objects

    lab = pair.lab
    lab.add_namespace("mesh", labels=AMBIENT)
    client = lab.add_pod("client-ebpf", namespace="mesh", node="node1")
    tune_pod(client)
    node = lab.node("node1")
    # The agent sees only the enrolled client, so the other variants' veths carry no
    # program and the baseline is iptables alone.
    view = settings.work_dir / "agent-view"
    view.mkdir(parents=True, exist_ok=True)
    for name in (
        objects.object_filename("Namespace", "mesh"),
        objects.object_filename("Pod", "client-ebpf", "mesh"),
    ):
        shutil.copy(lab.config_dir / name, view / name)
    agent = NetnsProcess(
        "agent-node1",
        node.netns,
        [
            sys.executable,
            "-m",
            "ambient",
            "agent",
            "run",
            "--node",
            node.name,
            "--node-id",
            node.id,
            "--config-dir",
            str(view),
            "--uplink",
            node.uplink,
            "--metrics-port",
            "0",
        ],
        settings.work_dir / "logs" / "agent-node1.log",
    ).start()
    pin_dir = BPFFS_ROOT / node.id
    relay = None
    try:
        _wait_workload(agent, pin_dir, client.ip)
        relay = _relay("relay-ebpf", node.netns, "relay", EBPF_PORT, settings)
        live = LivePath(
            client_netns=client.netns,
            http=Endpoint(pair.server.ip, HTTP_PORT),
            bulk=Endpoint(pair.server.ip, BULK_PORT),
            proxies=[relay],
            summary=lambda: [f"capture counters: {_stats_line(pin_dir, client.ip)}"],
        )
        check_http(client.netns, live.http)
        yield live
    finally:
        if relay is not None:
            relay.stop()
        agent.stop()
        from pyroute2 import IPRoute

        with IPRoute(netns=node.netns) as ipr:
            cleanup(pin_dir, ipr, None)
        remove_pins(pin_dir)


def _wait_workload(agent: NetnsProcess, pin_dir: Path, ip: str, timeout_s: float = 30) -> None:
    from agent.errors import AgentError
    from agent.nodemaps import NodeMaps

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        agent.check_alive()
        with contextlib.suppress(AgentError), NodeMaps(pin_dir) as maps:
            if any(r["pod_ip"] == ip and r["enrolled"] for r in maps.workload_rows()):
                return
        time.sleep(0.1)
    raise BenchError(f"the agent did not enroll {ip} within {timeout_s:.0f} s: {agent.log_tail()}")


def _stats_line(pin_dir: Path, ip: str) -> str:
    from agent.nodemaps import NodeMaps

    with NodeMaps(pin_dir) as maps:
        rows = [r for r in maps.stats_rows() if r["pod_ip"] == ip]
    if not rows:
        return "none"
    row = rows[0]
    return (
        f"redirected {row['redirected_outbound']} connections, assigned "
        f"{row['assigned_established']} packets, dropped "
        f"{row['dropped_no_listener'] + row['dropped_assign_failed']}"
    )


def _probes(*names: str) -> tuple[Probe, ...]:
    return tuple(p for p in PROBES if p.name in names)


@register
class Capture(PodToPod):
    """Pod-to-pod through a node-local relay: eBPF capture vs. iptables REDIRECT."""

    name = "capture"
    description = (
        "Connection setup rate and request/response latency (1 and 16 connections) of a "
        "pod-to-pod path captured into the same minimal transparent Python relay in the "
        "client's node: by iptables REDIRECT (baseline, Istio CNI style) and by our TC "
        "programs with bpf_sk_assign; direct (no capture) for scale."
    )
    data_path = (
        "client pod -> veth -> node1: [REDIRECT | pod-egress program] -> relay (Python, "
        "node1 namespace) -> new connection from node1's address -> fabric -> node2 -> "
        "server pod (Envoy origin on 8080); direct skips the relay"
    )
    # PodToPod's attributes are inferred as fixed-length tuples; ours differ in length.
    variants = (  # type: ignore[assignment]
        Variant(
            "iptables-redirect",
            "nat PREROUTING REDIRECT on the client's veth to the relay (SO_ORIGINAL_DST)",
            baseline=True,
        ),
        Variant(
            "ebpf",
            "enrolled pod: TC ingress program + bpf_sk_assign to the relay's transparent "
            "listener (original destination = the socket's local address)",
        ),
        Variant("direct", "no capture, no relay"),
    )
    probes = _probes("rr-1", "rr-16", "connect")  # type: ignore[assignment]
    paths: ClassVar[Mapping[str, PathFactory]] = {
        "iptables-redirect": iptables_redirect,
        "ebpf": ebpf_capture,
        "direct": direct,
    }
    lab_suffix: ClassVar[str] = "cap"
