"""How Istio names hosts and Envoy resources for a service.

- cluster: ``outbound|<port>|<subset>|<fqdn>`` (subset empty for the whole service);
- route configuration: ``inbound-vip|<port>|http|<fqdn>`` (one per service port, as
  the waypoint's per-VIP HTTP chains have them); TCP proxy: ``inbound-vip|<port>|tcp|<fqdn>``;
- virtual host: ``<fqdn>:<port>``, answering to every name a client may use.
"""

from __future__ import annotations

import ipaddress

from controlplane.model import Service
from controlplane.workloadapi.mesh import MeshConfig


def cluster_name(fqdn: str, port: int, subset: str = "") -> str:
    """Istio's outbound cluster name."""
    return f"outbound|{port}|{subset}|{fqdn}"


def route_name(fqdn: str, port: int) -> str:
    """The RouteConfiguration of one service port in a waypoint."""
    return f"inbound-vip|{port}|http|{fqdn}"


def tcp_proxy_name(fqdn: str, port: int) -> str:
    """The TCP proxy (stat prefix too) of one service port in a waypoint."""
    return f"inbound-vip|{port}|tcp|{fqdn}"


def resolve_host(host: str, namespace: str, mesh: MeshConfig) -> str:
    """A host as written in an object of ``namespace``, as a FQDN (Istio's rule).

    Only a short name (no dot) is completed with the object's namespace; ``name.ns``
    and ``name.ns.svc`` are completed with the cluster domain, since they can only
    mean a service.
    """
    parts = host.split(".")
    if len(parts) == 1:
        return mesh.service_hostname(namespace, host)
    if len(parts) == 2:
        return mesh.service_hostname(parts[1], parts[0])
    if len(parts) == 3 and parts[2] == "svc":
        return mesh.service_hostname(parts[1], parts[0])
    return host


def service_domains(service: Service, port: int, mesh: MeshConfig) -> list[str]:
    """Every ``Host``/``:authority`` a client may use for ``service`` on ``port``."""
    fqdn = mesh.service_hostname(service.namespace, service.name)
    names = [
        fqdn,
        service.name,
        f"{service.name}.{service.namespace}",
        f"{service.name}.{service.namespace}.svc",
    ]
    for vip in service.cluster_ips:
        names.append(f"[{vip}]" if ipaddress.ip_address(vip).version == 6 else vip)
    return [d for name in names for d in (name, f"{name}:{port}")]
