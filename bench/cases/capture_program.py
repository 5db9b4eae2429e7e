"""Per-packet cost of the capture programs, as the kernel measures it.

``BPF_PROG_TEST_RUN`` runs a loaded program on one crafted packet ``repeat`` times and
returns the average time per run, so the figure is the program alone: no relay, no
scheduler, no other traffic on a shared machine. The socket lookups the programs make
search a scratch namespace of this case (a transparent listener on 15001 and 15006, one
established connection). Outside a real TC ingress the kernel refuses
``bpf_sk_assign``, so the ``established`` and ``syn-redirect`` figures include the
lookups and the refused assignment, not the assignment itself.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.case import Case, Measurement, Metric, Probe, RunSettings, Variant, register
from bench.errors import BenchError

NS_PER_PACKET = Metric(
    "ns_per_packet",
    "ns",
    higher_is_better=False,
    description="average run time of the program on the packet (kernel-measured)",
)
REPEAT = 500_000
"""Runs per measurement: bounded in count; ~0.1-0.5 s of CPU per measurement."""
ENROLLED_POD, OTHER_POD, PLAIN_POD = "10.244.1.2", "10.244.2.2", "10.244.1.9"


@register
class CaptureProgram(Case):
    """The capture programs' cost per packet against a program that only counts."""

    name = "capture-program"
    description = (
        "Kernel-measured cost per packet (BPF_PROG_TEST_RUN) of the pod-egress and "
        "node-ingress programs on three kinds of packets, against bpf/probe.c, a TC "
        "program that only counts packets (what any TC attachment costs at least)."
    )
    data_path = (
        "no network path: the program runs in a loop inside the kernel on one packet; "
        "its socket lookups search a scratch namespace of the case"
    )
    variants = (
        Variant("count-only", "bpf/probe.c: one array increment, pass", baseline=True),
        Variant("pod-egress", "bpf/pod_egress.c with the agent's default settings"),
        Variant("node-ingress", "bpf/node_ingress.c with the agent's default settings"),
    )
    probes = (
        Probe(
            "pass",
            "an ACK from a pod outside the mesh to a pod of this node with no socket for "
            "it: parse, maps, one socket lookup (miss), pass: the cost every packet of "
            "a non-mesh pod pays",
            (NS_PER_PACKET,),
        ),
        Probe(
            "established",
            "a packet of a connection a node socket owns: parse, lookup (hit), assign "
            "(refused in a test run), count: what every packet of a captured flow pays",
            (NS_PER_PACKET,),
        ),
        Probe(
            "syn-redirect",
            "a SYN to capture with its listener present (15001 from the enrolled pod, or "
            "15006 for node ingress): lookup (miss), decision, listener lookup, assign",
            (NS_PER_PACKET,),
        ),
    )

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._frames: dict[str, bytes] = {}
        self._netns = ""
        self._keep: list[Any] = []

    @contextlib.contextmanager
    def environment(self, settings: RunSettings) -> Iterator[None]:
        """Loads the three programs, fills the maps, opens the sockets in a scratch ns."""
        from agent.capture import CaptureSettings
        from agent.layout import WorkloadFlags, WorkloadKey, WorkloadValue, ip_to_u32
        from agent.nodemaps import NodeMaps
        from agent.pinned import remove_pins
        from agent.programs import load_program

        self._netns = f"{settings.lab_prefix}cprog"
        pin_dir = Path(f"/sys/fs/bpf/{settings.lab_prefix}cprog")
        _ip("netns", "add", self._netns)
        try:
            _ip("-n", self._netns, "link", "set", "lo", "up")
            for addr in (PLAIN_POD, OTHER_POD):
                _ip("-n", self._netns, "addr", "add", f"{addr}/32", "dev", "lo")
            programs = {
                "count-only": load_program("probe", None),
                "pod-egress": load_program("pod_egress", pin_dir),
                "node-ingress": load_program("node_ingress", pin_dir),
            }
            self._keep = list(programs.values())
            self._fds = {name: prog.fd for name, prog in programs.items()}
            with NodeMaps(pin_dir) as maps:
                maps.write_settings(CaptureSettings())
                enrolled = int(WorkloadFlags.ENROLLED | WorkloadFlags.LOCAL)
                for ip, flags in (
                    (ENROLLED_POD, enrolled),
                    (OTHER_POD, enrolled),
                    (PLAIN_POD, int(WorkloadFlags.LOCAL)),
                ):
                    maps.workloads.put(WorkloadKey(ip_to_u32(ip)), WorkloadValue(1, flags, 0, 0))
            from agent.testrun import in_netns

            with contextlib.ExitStack() as sockets:
                cport = in_netns(self._netns, lambda: _open_sockets(sockets))
                self._frames = _frames(cport)
                yield
        finally:
            self._keep = []
            subprocess.run(["ip", "netns", "del", self._netns], check=False, timeout=20)
            remove_pins(pin_dir)

    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """Runs the variant's program REPEAT times on the probe's packet."""
        from agent.testrun import in_netns, prog_test_run

        del round_index
        fd, frame = self._fds[variant.name], self._frames[probe.name]
        result = in_netns(self._netns, lambda: prog_test_run(fd, frame, repeat=REPEAT))
        return {"ns_per_packet": float(result.duration_ns)}


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _open_sockets(stack: contextlib.ExitStack) -> int:
    """Listeners on 15001 and 15006, and one connection PLAIN_POD:8080 <- OTHER_POD."""
    for port in (15001, 15006):
        listener = stack.enter_context(socket.socket())
        listener.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT, as ztunnel's
        listener.bind(("0.0.0.0", port))
        listener.listen(16)
    server = stack.enter_context(socket.socket())
    server.bind((PLAIN_POD, 8080))
    server.listen(1)
    client = stack.enter_context(socket.socket())
    client.bind((OTHER_POD, 0))
    client.settimeout(5)
    client.connect((PLAIN_POD, 8080))
    accepted, _ = server.accept()
    stack.enter_context(accepted)
    return int(client.getsockname()[1])


def _frames(client_port: int) -> dict[str, bytes]:
    from agent.testrun import TCP_ACK, TCP_SYN, tcp_frame

    return {
        # a plain pod's packet toward a pod of this node, no socket owns it
        "pass": tcp_frame(PLAIN_POD, OTHER_POD, 41000, 9000, TCP_ACK),
        # the server's reply to the client: the client socket owns this 4-tuple
        "established": tcp_frame(PLAIN_POD, OTHER_POD, 8080, client_port, TCP_ACK),
        # a new connection from the enrolled pod to the other enrolled pod
        "syn-redirect": tcp_frame(ENROLLED_POD, OTHER_POD, 42000, 8080, TCP_SYN),
    }
