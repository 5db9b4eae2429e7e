"""The waypoints and gateways of a lab, running: their proxies, and ``outside``'s view of them.

:mod:`lab.manifests.planner` makes a pod and a Service for each gateway object; here
the shell around it (after an apply) starts ``ambient waypoint run`` in each such pod
that has none running, connected to the control plane registered with the lab
(:mod:`lab.mesh`), and gives ``outside`` the gateways' names: ``outside`` is on the
fabric, not in the mesh, and reaches a gateway pod's address through the nodes, as a
client outside a cluster reaches a LoadBalancer.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass

from lab import mesh
from lab.cluster import Lab
from lab.errors import LabError
from lab.manifests import gateways
from lab.model import Pod
from lab.processes import LabProcess

TRACES_PROCESS = "traces"


@dataclass(frozen=True)
class ProxyPod:
    """A pod the lab made for a gateway object."""

    pod: Pod
    kind: gateways.GatewayKind
    gateway_name: str

    @property
    def process_name(self) -> str:
        """The name of its ``ambient waypoint run`` process."""
        return f"{self.pod.name}.{self.pod.namespace}-proxy"

    @property
    def service(self) -> str:
        """Its Service (same name, same namespace)."""
        return self.pod.name


def proxy_pods(lab: Lab) -> list[ProxyPod]:
    """Every waypoint and gateway pod, recognised by the labels the planner gives them."""
    found = []
    for pod in lab.pods:
        labels = pod.labels
        gateway = labels.get(gateways.GATEWAY_NAME_LABEL, "")
        if (
            pod.namespace == gateways.INGRESS_NAMESPACE
            and pod.name == gateways.INGRESS_NAME
            and labels.get("istio") == "ingressgateway"
        ):
            found.append(ProxyPod(pod, "gateway", gateways.INGRESS_NAME))
        elif gateway and pod.name == gateway:
            found.append(ProxyPod(pod, "waypoint", gateway))
        elif gateway and pod.name == f"{gateway}-istio":
            found.append(ProxyPod(pod, "gateway", gateway))
    return found


def gateway_address(lab: Lab, proxy: ProxyPod) -> str:
    """Where ``outside`` reaches a gateway: its pod's address (routed via its node)."""
    return proxy.pod.ip


def publish_gateways(lab: Lab) -> list[str]:
    """Writes ``outside``'s hosts file with every gateway's names; returns a line per
    gateway saying where it answers."""
    entries: list[tuple[str, list[str]]] = []
    notes = []
    for proxy in proxy_pods(lab):
        if proxy.kind != "gateway":
            continue
        names = [
            f"{proxy.service}.{proxy.pod.namespace}",
            f"{proxy.service}.{proxy.pod.namespace}.svc",
            f"{proxy.service}.{proxy.pod.namespace}.svc.cluster.local",
        ]
        address = gateway_address(lab, proxy)
        entries.append((address, names))
        notes.append(
            f"gateway {proxy.pod.namespace}/{proxy.service} answers outside the mesh at "
            f"{address}: ambient lab exec --name {lab.name} outside -- curl http://{names[0]}/"
        )
    with contextlib.suppress(LabError):  # a lab built without outside
        lab.set_outside_hosts(entries)
    return notes


def running(lab: Lab, name: str) -> LabProcess | None:
    """The lab's live process of that name."""
    for proc in lab.processes:
        if proc.name == name and proc.alive():
            return proc
    return None


def ensure_traces(lab: Lab, endpoint: mesh.MeshEndpoint) -> mesh.MeshEndpoint:
    """The lab's trace collector on the fabric (started once, :mod:`lab.traces`); the
    endpoint with its address, which every proxy's Zipkin tracer sends spans to."""
    address = f"{lab.fabric.ip}:{mesh.TRACES_PORT}"
    if running(lab, TRACES_PROCESS) is None:
        if importlib.util.find_spec("lab.traces") is None:
            return endpoint  # no collector in this tree: Envoy traces nowhere
        from lab import traces

        argv = traces.collector_argv(
            lab.run_dir / traces.SNAPSHOT_NAME, host=lab.fabric.ip, port=mesh.TRACES_PORT
        )
        lab.spawn(lab.fabric, ["python", *argv[1:]], name=TRACES_PROCESS)
    if endpoint.traces_address != address:
        endpoint = endpoint.with_traces(address)
        mesh.register(lab.run_dir, endpoint)
    return endpoint


def start_proxies(lab: Lab, *, quiet_if_idle: bool = False) -> list[str]:
    """Starts ``ambient waypoint run`` in every proxy pod without one running; notes what
    it did (and, unless ``quiet_if_idle``, that the pods stay idle without a control
    plane)."""
    pods = proxy_pods(lab)
    if not pods:
        return []
    endpoint = mesh.registered(lab.run_dir)
    if endpoint is None:
        if quiet_if_idle:
            return []
        return [
            f"no control plane is registered with lab {lab.name!r}: the proxy pods "
            f"({', '.join(p.pod.key for p in pods)}) stay idle until one is "
            "(ambient lab connect, or lab.mesh.register as ambient demo does)"
        ]
    endpoint = ensure_traces(lab, endpoint)
    notes = []
    for proxy in pods:
        if running(lab, proxy.process_name) is not None:
            continue
        argv = mesh.proxy_argv(
            endpoint,
            kind=proxy.kind,
            namespace=proxy.pod.namespace,
            service_account=proxy.pod.service_account,
            gateway_name=proxy.gateway_name,
            ip=proxy.pod.ip,
            node=proxy.pod.node,
            cluster_folder=lab.config_dir,
            work_dir=lab.run_dir / "proxies" / f"{proxy.pod.namespace}.{proxy.pod.name}",
        )
        proc = lab.spawn(proxy.pod, argv, name=proxy.process_name)
        notes.append(f"{proxy.kind} {proxy.pod.key}: ambient waypoint run (pid {proc.pid})")
    return notes
