"""The control plane a lab's proxies connect to, and how the lab starts a waypoint or gateway.

A lab has no control plane of its own: whoever runs one for it (``ambient demo``, a
test) registers where it is with :func:`register` (``<run_dir>/mesh.json``): its xDS
address and server name, its root certificate, the trust domain, and the bootstrap
token of each node (what the node's ztunnel proves itself with; a proxy on that node
uses the same one). From then on, ``ambient lab apply -f`` of a waypoint or gateway
starts ``ambient waypoint run`` in the pod it makes (:func:`proxy_argv`); without a
registered control plane the pod is made and stays idle, with a warning.

The lab's trace collector (:mod:`lab.traces`) runs on the fabric once a proxy needs
it; its address is in the registration so every proxy sends its spans there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lab.objects import write_atomic

MESH_FILE = "mesh.json"
TRACES_PORT = 9411
"""Where the lab's trace collector listens on the fabric (Zipkin's port)."""


@dataclass(frozen=True)
class MeshEndpoint:
    """Where a lab's proxies find their control plane, and with what they prove who they are."""

    xds_address: str
    """``host:port`` of the control plane's xDS (and CA) server."""
    xds_server_name: str
    """The name its certificate carries (``istiod.istio-system.svc``)."""
    root_cert: str
    """Path of the root certificate that verifies the control plane."""
    trust_domain: str = "cluster.local"
    tokens: Mapping[str, str] = field(default_factory=dict)
    """Node name -> path of the node's bootstrap token."""
    traces_address: str = ""
    """``host:port`` of the lab's trace collector ('' until one runs)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "xds_address": self.xds_address,
            "xds_server_name": self.xds_server_name,
            "root_cert": self.root_cert,
            "trust_domain": self.trust_domain,
            "tokens": dict(self.tokens),
            "traces_address": self.traces_address,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MeshEndpoint:
        """The value :meth:`to_json` made."""
        return cls(
            xds_address=str(data["xds_address"]),
            xds_server_name=str(data["xds_server_name"]),
            root_cert=str(data["root_cert"]),
            trust_domain=str(data.get("trust_domain", "cluster.local")),
            tokens={str(k): str(v) for k, v in dict(data.get("tokens", {})).items()},
            traces_address=str(data.get("traces_address", "")),
        )

    def with_traces(self, address: str) -> MeshEndpoint:
        """The same, with the trace collector's address."""
        return replace(self, traces_address=address)


def register(run_dir: Path, endpoint: MeshEndpoint) -> None:
    """Saves where the lab's control plane is (proxies started later connect to it)."""
    write_atomic(run_dir / MESH_FILE, json.dumps(endpoint.to_json(), indent=1))


def registered(run_dir: Path) -> MeshEndpoint | None:
    """The registered control plane, or None."""
    try:
        return MeshEndpoint.from_json(json.loads((run_dir / MESH_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def proxy_argv(
    endpoint: MeshEndpoint,
    *,
    kind: str,
    namespace: str,
    service_account: str,
    gateway_name: str,
    ip: str,
    node: str,
    cluster_folder: Path | None = None,
    work_dir: Path | None = None,
) -> list[str]:
    """``ambient waypoint run`` for a waypoint or gateway pod (run inside the pod, on
    ``node``: it proves itself with that node's token, as the node's ztunnel does)."""
    argv = [
        "python",
        "-m",
        "ambient",
        "waypoint",
        "run",
        "--kind",
        kind,
        "--namespace",
        namespace,
        "--service-account",
        service_account,
        "--gateway-name",
        gateway_name,
        "--instance-ip",
        ip,
        "--xds-address",
        endpoint.xds_address,
        "--xds-server-name",
        endpoint.xds_server_name,
        "--xds-root-cert",
        endpoint.root_cert,
        "--trust-domain",
        endpoint.trust_domain,
        # the lab stops a process within STOP_TIMEOUT (5 s): drain for less than that
        "--drain-seconds",
        "3",
    ]
    token = endpoint.tokens.get(node)
    if token:
        argv += ["--auth-token-file", token]
    if endpoint.traces_address:
        argv += ["--collector", endpoint.traces_address]
    if cluster_folder is not None:
        argv += ["--cluster-folder", str(cluster_folder)]
    if work_dir is not None:
        argv += ["--work-dir", str(work_dir)]
    return argv
