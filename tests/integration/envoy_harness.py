"""Helpers for tests that run a real Envoy against our control plane on 127.0.0.1.

Shared by the ADS, ingress-TLS and similar suites: free test ports, the control plane's
Envoy resources with address-bound listeners moved to loopback, an Envoy process with
its admin endpoint, and a poll-until helper that notices Envoy exiting.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.envoy.proxy import envoy_binary
from controlplane.model import ClusterState
from controlplane.workloadapi.mesh import MeshConfig


def free_ports(count: int) -> int:
    """The first of ``count`` free consecutive ports below the ephemeral range (so the
    control plane's and Envoy's own port-0 sockets cannot take them meanwhile)."""
    base = 20000 + (os.getpid() * 7) % 9000
    for first in range(base, base + 1000, count):
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError("no free ports for the test listeners")


def on_loopback(port: int) -> Callable[[ClusterState, Any, MeshConfig], Any]:
    """``proxy_resources``, with every listener bound to an IP moved to 127.0.0.1."""
    from controlplane.envoy.proxy import EnvoyResources, proxy_resources

    def resources(state: ClusterState, proxy: Any, mesh: MeshConfig) -> Any:
        real = proxy_resources(state, proxy, mesh)
        listeners = {}
        for index, (name, original) in enumerate(sorted(real.listeners.items())):
            listener = original
            if original.address.HasField("socket_address"):
                listener = type(original).FromString(original.SerializeToString())
                listener.address.socket_address.address = "127.0.0.1"
                listener.address.socket_address.port_value = port + index
            listeners[name] = listener
        return EnvoyResources(
            listeners=listeners,
            routes=real.routes,
            clusters=real.clusters,
            endpoints=real.endpoints,
            issues=real.issues,
        )

    return resources


class Envoy:
    """One Envoy process and its admin endpoint."""

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        self.config_path = work / "envoy.json"
        self.config_path.write_text(json.dumps(config))
        self.admin_path = work / "admin.txt"
        self.log = (work / "envoy.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(envoy_binary()),
                "-c",
                str(self.config_path),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warning",
                "--admin-address-path",
                str(self.admin_path),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def admin(self, path: str) -> Any:
        address = self.admin_path.read_text().strip()
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return json.load(response)

    def config_dump(self) -> dict[str, Any]:
        """``/config_dump`` (with EDS) by the dump type's short name."""
        dump = self.admin("/config_dump?include_eds")
        return {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()
        return (self.config_path.parent / "envoy.log").read_text(errors="replace")[-3000:]


async def eventually(check: Callable[[], Any], timeout: float, what: str, envoy: Envoy) -> Any:
    """``check()``'s first truthy result (it runs in a thread); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if envoy.process.poll() is not None:
            raise AssertionError(f"Envoy exited ({envoy.process.returncode}) waiting for {what}")
        try:
            last = await asyncio.to_thread(check)
        except (OSError, ValueError, KeyError) as err:
            last = err
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")
