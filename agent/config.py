"""The node agent's configuration: one frozen value, built from flags at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.attach import LocalDelivery
from agent.capture import CaptureSettings
from agent.errors import ConfigError
from agent.pinned import BPFFS_ROOT, pin_dir_for
from controlplane import DEFAULT_EXCLUDED_NAMESPACES

DEFAULT_METRICS_PORT = 15029
DEFAULT_ROUTE_TABLE = 133
DEFAULT_RULE_PRIORITY = 100


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``ambient agent run`` needs; the CLI only maps flags onto it."""

    node_name: str
    """Kubernetes node name; the agent serves the pods whose ``spec.nodeName`` it is."""
    node_id: str
    """Host-unique id of the node; programs and maps are pinned under
    ``<bpffs_root>/<node_id>/`` (two lab nodes on one host never share pins)."""
    config_dir: Path | None
    """The folder of Namespace/Pod YAML the cluster source reads (the lab writes it);
    None: the Kubernetes API (``kubernetes`` must then be True)."""
    kubernetes: bool = False
    """Read pods and namespaces from the Kubernetes API instead of a folder."""
    kubeconfig: str | None = None
    """Kubeconfig for the API (None: in-cluster configuration, then the default file)."""
    uplink: str | None = None
    """The node's interface toward other nodes; None: the default route's interface."""
    excluded_namespaces: frozenset[str] = frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    """Kubernetes namespaces whose pods are never captured, even when they or their
    namespace carry ``istio.io/dataplane-mode=ambient`` (default: ``kube-system`` and
    ``istio-system``, the mesh's own namespace, as istio-cni's ``excludeNamespaces``).
    The control plane takes the same list (``ambient controlplane run
    --exclude-namespace``) and does not announce such a pod as an HBONE workload."""
    bpffs_root: Path = BPFFS_ROOT
    """Where node pin folders live."""
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    """Listener ports, the mark and exclusions written to the ``settings`` map."""
    route_table: int = DEFAULT_ROUTE_TABLE
    """Routing table holding the ``local 0.0.0.0/0`` route for marked packets."""
    rule_priority: int = DEFAULT_RULE_PRIORITY
    """Priority of the ``fwmark -> route_table`` rule (before the main table)."""
    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus endpoint (in the agent's namespace)."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of the Prometheus endpoint; 0 disables it."""
    watch_interval: float = 0.2
    """How often the cluster source is polled for changes (seconds)."""
    retry_interval: float = 1.0
    """How often pods that could not be attached yet are tried again (seconds)."""
    detach_on_exit: bool = False
    """Detach everything on a clean exit. Off by default: programs and maps stay
    pinned and attached so a restart drops no connection (use ``agent cleanup``)."""
    allow_host_namespace: bool = False
    """Allow running in the host's (PID 1's) network namespace, as on a real node. Off
    by default so that a lab or test mistake never touches the machine's own network."""

    def __post_init__(self) -> None:
        if (self.config_dir is None) == (not self.kubernetes):
            raise ConfigError(
                "the agent needs exactly one cluster source",
                hint="pass --config-dir DIR (a folder of YAML) or --kubernetes",
            )

    @property
    def pin_dir(self) -> Path:
        """This node's pin folder."""
        return pin_dir_for(self.node_id, self.bpffs_root)

    @property
    def local_delivery(self) -> LocalDelivery:
        """The fwmark rule and local route that deliver assigned packets."""
        return LocalDelivery(
            mark=self.capture.mark,
            mask=0xFFFFFFFF,
            table=self.route_table,
            priority=self.rule_priority,
        )
