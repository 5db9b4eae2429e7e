"""What the lab deploys for a gateway object, as Istio's gateway controller does.

Istio turns some gateway objects into a Deployment and a Service of its own:

- a Gateway API ``Gateway`` of class ``istio-waypoint`` named ``W`` is a waypoint: pod and
  Service ``W`` in the Gateway's namespace (Service ports ``mesh`` 15008, 15021, 15020;
  its ClusterIP is the waypoint's address), service account ``W``;
- a Gateway API ``Gateway`` of class ``istio`` named ``G``: pod and Service ``G-istio``
  with the Gateway's listener ports;
- Istio's ``Gateway`` (networking.istio.io) selecting ``istio: ingressgateway``: the
  one ingress gateway of the mesh, pod and Service ``istio-ingressgateway`` in
  ``istio-system``, whose Service ports are the servers' ports of every such Gateway.

Each pod is labelled ``istio.io/dataplane-mode: none`` (a proxy is never captured) and
runs ``ambient waypoint run`` (:mod:`lab.manifests.apply` starts it). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from controlplane.model import FrozenMap
from lab.manifests.model import ConfigManifest
from lab.model import ServicePort

GatewayKind = Literal["waypoint", "gateway"]

GATEWAY_API = "gateway.networking.k8s.io"
ISTIO_NETWORKING = "networking.istio.io"
WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_CLASS = "istio"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
INGRESS_NAMESPACE = "istio-system"
INGRESS_NAME = "istio-ingressgateway"
INGRESS_SELECTOR = FrozenMap({"istio": "ingressgateway"})
HBONE_PORT = 15008
STATUS_PORT = 15021
"""Envoy's readiness (``/healthz/ready``), as in Istio's proxies."""
METRICS_PORT = 15020
"""The telemetry exporter's ``/metrics`` and ``/stats/prometheus``."""
PROXY_PROGRAM = "ambient-waypoint"
"""The :class:`~lab.manifests.images.Program` name a proxy pod runs."""


@dataclass(frozen=True)
class GatewayDeployment:
    """The pod and Service the lab runs for a gateway object."""

    kind: GatewayKind
    """``waypoint`` or ``gateway`` (the proxy's ``PROXY_KIND``)."""
    namespace: str
    name: str
    """Pod, Service and service account name."""
    gateway_name: str
    """The Gateway the proxy implements (its ``GATEWAY_NAME``)."""
    labels: FrozenMap[str, str]
    """The pod's labels."""
    selector: FrozenMap[str, str]
    """The Service's selector (picks the pod)."""
    ports: tuple[ServicePort, ...]
    """The Service's ports (target = the same port in the pod)."""

    @property
    def key(self) -> str:
        """``namespace/name`` of the pod and Service."""
        return f"{self.namespace}/{self.name}"


def _spec(m: ConfigManifest) -> Mapping[str, Any]:
    spec = m.document.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _items(value: Any) -> list[Any]:
    """A YAML sequence (a list, or a tuple once deep-frozen) as a list."""
    return list(value) if isinstance(value, list | tuple) else []


def _port(value: Any) -> int | None:
    return value if isinstance(value, int) and 0 < value < 65536 else None


def is_gateway(m: ConfigManifest) -> bool:
    """Whether a config object is one of the two ``Gateway`` kinds."""
    return m.kind == "Gateway" and m.group in (GATEWAY_API, ISTIO_NETWORKING)


def is_ingress(m: ConfigManifest) -> bool:
    """An Istio ``Gateway`` whose selector picks the ingress gateway's pod."""
    if not is_gateway(m) or m.group != ISTIO_NETWORKING:
        return False
    selector = _spec(m).get("selector")
    if not isinstance(selector, Mapping) or not selector:
        return False
    return all(INGRESS_SELECTOR.get(str(k)) == str(v) for k, v in selector.items())


def server_ports(m: ConfigManifest) -> dict[str, int]:
    """An Istio ``Gateway``'s server ports, by name (``http-80`` when unnamed)."""
    found: dict[str, int] = {}
    servers = _spec(m).get("servers")
    for server in _items(servers):
        port = server.get("port") if isinstance(server, Mapping) else None
        if not isinstance(port, Mapping):
            continue
        number = _port(port.get("number"))
        if number is None:
            continue
        protocol = str(port.get("protocol", "http")).lower()
        name = str(port.get("name") or f"{protocol}-{number}")
        found[name] = number
    return found


def _gateway_class(m: ConfigManifest) -> str:
    return str(_spec(m).get("gatewayClassName", ""))


def _listener_ports(m: ConfigManifest) -> tuple[ServicePort, ...]:
    out: dict[int, ServicePort] = {}
    listeners = _spec(m).get("listeners")
    for listener in _items(listeners):
        if not isinstance(listener, Mapping):
            continue
        number = _port(listener.get("port"))
        if number is not None and number not in out:
            name = str(listener.get("name") or f"port-{number}")
            out[number] = ServicePort(number, number, name)
    return tuple(out[p] for p in sorted(out))


def _proxy_ports(*extra: ServicePort) -> tuple[ServicePort, ...]:
    fixed = {
        STATUS_PORT: ServicePort(STATUS_PORT, STATUS_PORT, "status-port"),
        METRICS_PORT: ServicePort(METRICS_PORT, METRICS_PORT, "metrics"),
    }
    ports = {p.port: p for p in extra}
    for number, port in fixed.items():
        ports.setdefault(number, port)
    return tuple(ports[p] for p in sorted(ports))


def deployment_for(
    m: ConfigManifest, other_ingress_ports: Iterable[Mapping[str, int]] = ()
) -> GatewayDeployment | None:
    """What the lab runs for a gateway object; None for any other object (or a Gateway
    no controller of the lab handles: another class, another selector).

    ``other_ingress_ports`` are the server ports of the other Istio Gateways the ingress
    gateway serves (its Service carries them all).
    """
    if not is_gateway(m):
        return None
    if m.group == GATEWAY_API:
        gateway_class = _gateway_class(m)
        if gateway_class == WAYPOINT_CLASS:
            return waypoint_deployment(m.namespace, m.name)
        if gateway_class == GATEWAY_CLASS:
            name = f"{m.name}-istio"
            labels = FrozenMap(
                {
                    GATEWAY_NAME_LABEL: m.name,
                    DATAPLANE_MODE_LABEL: "none",
                    "istio.io/gateway-name": m.name,
                }
            )
            return GatewayDeployment(
                "gateway",
                m.namespace,
                name,
                m.name,
                labels,
                FrozenMap({GATEWAY_NAME_LABEL: m.name}),
                _proxy_ports(*_listener_ports(m)),
            )
        return None
    if not is_ingress(m):
        return None
    return ingress_deployment([server_ports(m), *other_ingress_ports])


def waypoint_deployment(namespace: str, name: str) -> GatewayDeployment:
    """The waypoint ``name`` of ``namespace``: pod, Service (15008 ``mesh``) and account."""
    labels = FrozenMap({GATEWAY_NAME_LABEL: name, DATAPLANE_MODE_LABEL: "none"})
    ports = _proxy_ports(ServicePort(HBONE_PORT, HBONE_PORT, "mesh"))
    return GatewayDeployment(
        "waypoint", namespace, name, name, labels, FrozenMap({GATEWAY_NAME_LABEL: name}), ports
    )


def ingress_deployment(server_port_sets: Iterable[Mapping[str, int]]) -> GatewayDeployment:
    """The mesh's one ingress gateway, with the union of the servers' ports."""
    ports: dict[int, ServicePort] = {}
    for found in server_port_sets:
        for name, number in sorted(found.items(), key=lambda kv: kv[1]):
            ports.setdefault(number, ServicePort(number, number, name))
    labels = FrozenMap(
        {"istio": "ingressgateway", "app": INGRESS_NAME, DATAPLANE_MODE_LABEL: "none"}
    )
    return GatewayDeployment(
        "gateway",
        INGRESS_NAMESPACE,
        INGRESS_NAME,
        INGRESS_NAME,
        labels,
        INGRESS_SELECTOR,
        _proxy_ports(*ports.values()),
    )


def outside_names(deployment: GatewayDeployment) -> list[str]:
    """Names ``outside`` resolves to a gateway (``istio-ingressgateway.istio-system``)."""
    if deployment.kind != "gateway":
        return []
    base = f"{deployment.name}.{deployment.namespace}"
    return [base, f"{base}.svc", f"{base}.svc.cluster.local"]
