"""Pods to ``istio.workload.Workload`` messages, as istiod builds them for ambient."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from api.messages import workload as wl
from controlplane.model import Namespace, Pod, Service, is_enrolled
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.workloadapi.services import workload_ports

_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,10}$")

REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"
"""Set to ``enabled`` by Istio's CNI on pods it redirected: HBONE regardless of labels."""
TUNNEL_LABELS = ("networking.istio.io/tunnel", "networking.agentgateway.io/tunnel")
"""Comma-separated tunnel protocols a workload terminates itself (``http``: HBONE)."""


def tunnel(
    pod: Pod,
    namespace: Namespace | None,
    *,
    waypoint_pod: bool = False,
    excluded_namespaces: frozenset[str] = frozenset(),
) -> tuple[int, bool]:
    """(``tunnel_protocol``, ``native_tunnel``) of a pod, as istiod decides them.

    A waypoint's pod terminates HBONE itself (Envoy on 15008): HBONE, never captured.
    A pod in an excluded namespace is never captured, so its enrollment labels do not
    make it HBONE (the agents skip it too).
    """
    native = any("http" in pod.labels.get(label, "").split(",") for label in TUNNEL_LABELS)
    redirected = pod.annotations.get(REDIRECTION_ANNOTATION) == "enabled"
    enrolled = is_enrolled(pod, namespace) and pod.namespace not in excluded_namespaces
    if native or redirected or waypoint_pod or enrolled:
        return int(wl.HBONE), native
    return int(wl.NONE), False


def is_sent(pod: Pod) -> bool:
    """Whether a pod becomes a workload: it has an address and has not terminated."""
    return bool(pod.ips or pod.ip) and pod.phase not in ("Succeeded", "Failed")


def workload_name(pod: Pod) -> str:
    """The name of the workload a pod belongs to (its Deployment, Job, ... or itself)."""
    if pod.owner_kind == "ReplicaSet":
        suffix = "-" + pod.labels.get("pod-template-hash", "\0")
        if pod.owner_name.endswith(suffix):
            return pod.owner_name[: -len(suffix)]
        return pod.owner_name
    if pod.owner_kind == "Job":
        cron = _CRONJOB_JOB.match(pod.owner_name)
        return cron.group(1) if cron else pod.owner_name
    return pod.owner_name or pod.name


def canonical_name(pod: Pod) -> str:
    """Istio's canonical service name: the first of the usual labels, else the workload."""
    for label in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
        if pod.labels.get(label):
            return pod.labels[label]
    return workload_name(pod)


def canonical_revision(pod: Pod) -> str:
    """Istio's canonical revision: the first of the usual labels, else ``latest``."""
    for label in ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"):
        if pod.labels.get(label):
            return pod.labels[label]
    return "latest"


def workload_message(
    pod: Pod,
    namespace: Namespace | None,
    services: Iterable[Service],
    policies: Sequence[str],
    mesh: MeshConfig,
    *,
    waypoint: Any | None = None,
    waypoint_pod: bool = False,
) -> Any:
    """The ``istio.workload.Workload`` for a pod.

    ``services`` are the services selecting the pod (they enter its services map);
    ``policies`` are the ``<ns>/<name>`` of the selector-bound authorizations and
    peer-authentication policies that apply to it; ``waypoint`` is the
    ``GatewayAddress`` of the waypoint serving traffic addressed to the pod;
    ``waypoint_pod`` says the pod runs a waypoint.
    """
    addresses = pod.ips or ((pod.ip,) if pod.ip else ())
    service_map = {
        f"{s.namespace}/{mesh.service_hostname(s.namespace, s.name)}": workload_ports(s, pod)
        for s in services
    }
    healthy = pod.ready and not pod.deleting
    protocol, native = tunnel(
        pod, namespace, waypoint_pod=waypoint_pod, excluded_namespaces=mesh.excluded_namespaces
    )
    return wl.Workload(
        uid=mesh.workload_uid(pod.namespace, pod.name),
        name=pod.name,
        namespace=pod.namespace,
        addresses=[ipaddress.ip_address(a).packed for a in addresses],
        network=mesh.network,
        tunnel_protocol=protocol,
        native_tunnel=native,
        trust_domain=mesh.sent_trust_domain,
        service_account=pod.service_account,
        node=pod.node_name,
        canonical_name=canonical_name(pod),
        canonical_revision=canonical_revision(pod),
        workload_type=wl.POD,
        workload_name=workload_name(pod),
        services=service_map,
        authorization_policies=list(policies),
        status=wl.HEALTHY if healthy else wl.UNHEALTHY,
        cluster_id=mesh.cluster_id,
        network_mode=wl.HOST_NETWORK if pod.host_network else wl.STANDARD,
        waypoint=waypoint,
    )
