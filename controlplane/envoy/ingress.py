"""The ingress gateway's Envoy resources: Istio ``Gateway`` and Gateway API class ``istio``.

:func:`translate_ingress` is pure, like :func:`~controlplane.envoy.translate_waypoint`:

- Istio ``Gateway`` objects (networking.istio.io) whose ``selector`` matches the
  gateway pod's labels (``istio: ingressgateway``), in any namespace as istiod's
  default has it: one listener ``0.0.0.0_<port>`` per server port, an HTTP connection
  manager whose route configuration ``http.<port>`` (RDS) has a virtual host per host
  of each VirtualService naming the Gateway in ``gateways`` (``ns/name``, or the short
  name in the VirtualService's namespace) and sharing a host with the server;
  ``HTTPS`` servers with ``tls.mode: SIMPLE`` terminate TLS with the certificate
  ``kubernetes://<credentialName>`` fetched over SDS (ADS), one filter chain per
  server, chosen by SNI; ``MUTUAL`` (and ``OPTIONAL_MUTUAL``) also verify client
  certificates against ``kubernetes://<credentialName>-cacert`` (the Secret's
  ``ca.crt``, or a Secret ``<credentialName>-cacert``), as istiod does;
  ``tls.httpsRedirect`` answers plain HTTP with a redirect;
- a Gateway API ``Gateway`` of class ``istio`` named by the proxy: one listener per
  listener port, the HTTPRoutes whose ``parentRefs`` name it (``sectionName``,
  ``port``, ``allowedRoutes`` namespaces Same/All honoured), hostnames intersected
  with the listener's, rules in Gateway API precedence.

Backends are the mesh's services: EDS clusters (DestinationRule policies applied, as
at waypoints) whose endpoints are HBONE tunnels through the ``connect_originate``
listener and cluster of :mod:`.hbone`, so the gateway reaches pods with its own
identity. Endpoints are described (:class:`~.waypoint.ClusterEndpoints`); the proxy
module resolves them to pods, as for waypoints.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format, wrappers_pb2

from controlplane.envoy import hbone
from controlplane.envoy.clusters import build_cluster, through_hbone_with_tls
from controlplane.envoy.httproute import ParsedRoute, ordered_rules, parsed_routes
from controlplane.envoy.parse import parse_virtual_service
from controlplane.envoy.rbac import PeerIdentity, build_rbac_filters
from controlplane.envoy.routes import CORS_FILTER, FAULT_FILTER, build_routes
from controlplane.envoy.spec import VirtualServiceSpec
from controlplane.envoy.waypoint import ClusterEndpoints, _Destinations, _Translation
from controlplane.model import (
    INGRESS_CLASS,
    AuthorizationAction,
    AuthorizationPolicy,
    ClusterState,
    Gateway,
    GatewayListener,
    IstioGateway,
    IstioServer,
    Pod,
    Severity,
    SourceIssue,
    selector_matches,
)
from controlplane.workloadapi.mesh import MeshConfig

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CREDENTIAL_PREFIX = "kubernetes://"
"""SDS name of a gateway certificate from a Secret: ``kubernetes://<credentialName>``
(istiod's), in the gateway's namespace."""
CA_SUFFIX = "-cacert"
"""Appended to a credential's SDS name for its client roots (istiod's)."""
_SERVED_TLS_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
HTTP_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB")
"""Server and listener protocols served by an HTTP connection manager."""


class IngressProxy(Protocol):
    """What the translation needs of a gateway proxy (``proxy.EnvoyProxy`` fits)."""

    @property
    def namespace(self) -> str: ...

    @property
    def gateway_name(self) -> str: ...

    @property
    def service_account(self) -> str: ...

    @property
    def ip(self) -> str: ...


@dataclass(frozen=True)
class IngressResources:
    """Everything an ingress gateway's Envoy needs but endpoint addresses and secrets."""

    listeners: Mapping[str, Any] = field(default_factory=dict)
    """``Listener`` by name: one per port, and :data:`~.hbone.CONNECT_ORIGINATE`."""
    routes: Mapping[str, Any] = field(default_factory=dict)
    """``RouteConfiguration`` by name (``http.<port>``)."""
    clusters: Mapping[str, Any] = field(default_factory=dict)
    """``Cluster`` by name: EDS clusters tunnelled through HBONE, and
    :data:`~.hbone.CONNECT_ORIGINATE`."""
    endpoints: Mapping[str, ClusterEndpoints] = field(default_factory=dict)
    """What each EDS cluster's endpoints are, by cluster name."""
    issues: tuple[SourceIssue, ...] = ()
    """Objects skipped (errors) or fields ignored (warnings)."""


@dataclass
class _Port:
    """What one listening port serves, gathered from every Gateway."""

    port: int
    vhosts: dict[str, list[Any]] = field(default_factory=dict)
    """Domain -> routes, in order."""
    tls_servers: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)
    """(server names, credential, client mode) of each HTTPS server; the client mode
    is ``""`` (SIMPLE), ``MUTUAL`` or ``OPTIONAL_MUTUAL``."""
    plain: bool = False
    """Whether some server takes plain HTTP on this port."""
    https_redirect: set[str] = field(default_factory=set)
    """Domains whose plain HTTP is redirected to HTTPS."""


def route_config_name(port: int) -> str:
    """The gateway's route configuration of one port (istiod's name)."""
    return f"http.{port}"


def listener_name(port: int) -> str:
    """The gateway's listener of one port (istiod's name)."""
    return f"0.0.0.0_{port}"


def gateway_pod(state: ClusterState, proxy: IngressProxy) -> Pod | None:
    """The proxy's pod: by its IP, else the one pod of its namespace and account."""
    pods = [p for p in state.pods.values() if p.namespace == proxy.namespace]
    by_ip = [p for p in pods if proxy.ip and (p.ip == proxy.ip or proxy.ip in p.ips)]
    if by_ip:
        return by_ip[0]
    by_account = sorted(
        (p for p in pods if p.service_account == proxy.service_account), key=lambda p: p.name
    )
    return by_account[0] if by_account else None


def _host_matches(host: str, pattern: str) -> bool:
    """Whether a route host falls under a server or listener host (wildcards both ways)."""
    if pattern in ("*", "") or host == "*":
        return True
    return fnmatch.fnmatchcase(host, pattern) or fnmatch.fnmatchcase(pattern, host)


def _narrower(host: str, pattern: str) -> str:
    """The more specific of two matching hosts (the virtual host's domain)."""
    if host == "*":
        return pattern or "*"
    if pattern in ("*", "") or not host.startswith("*"):
        return host
    return pattern if not pattern.startswith("*") else max(host, pattern, key=len)


def _server_host(value: str, gateway_namespace: str) -> tuple[str, str]:
    """A server host as (namespace restriction, host); ``*`` means any namespace."""
    namespace, _, host = value.rpartition("/")
    if namespace == ".":
        namespace = gateway_namespace
    return namespace or "*", host


def _names_gateway(vs: VirtualServiceSpec, gateway: IstioGateway) -> bool:
    for entry in vs.gateways:
        namespace, _, name = entry.rpartition("/")
        if name == gateway.name and (namespace or vs.namespace) == gateway.namespace:
            return True
    return False


class _Ingress:
    """One translation: the shared destination state, and what each port serves."""

    def __init__(self, state: ClusterState, mesh: MeshConfig) -> None:
        self.state = state
        self.mesh = mesh
        self.t = _Translation(state, mesh)
        self.ports: dict[int, _Port] = {}
        self.issues: list[SourceIssue] = []

    def port(self, number: int) -> _Port:
        return self.ports.setdefault(number, _Port(number))

    def warn(self, kind: str, ns: str, name: str, where: str, message: str) -> None:
        self.issues.append(SourceIssue("", 0, kind, ns, name, where, message, Severity.WARNING))

    # Istio Gateway + VirtualService

    def istio_gateway(self, gateway: IstioGateway, services: Sequence[VirtualServiceSpec]) -> None:
        bound = [vs for vs in services if _names_gateway(vs, gateway)]
        for index, server in enumerate(gateway.servers):
            where = f"spec.servers[{index}]"
            if server.protocol not in HTTP_PROTOCOLS:
                self.warn(
                    "Gateway",
                    gateway.namespace,
                    gateway.name,
                    where,
                    f"{server.protocol} servers are not served yet (HTTP and HTTPS only)",
                )
                continue
            slot = self.port(server.port)
            tls = dict(server.tls or {})
            domains = self._server_domains(gateway, server, bound)
            if server.protocol == "HTTPS":
                mode = str(tls.get("mode", "SIMPLE"))
                credential = str(tls.get("credentialName", ""))
                if mode not in _SERVED_TLS_MODES or not credential:
                    self.warn(
                        "Gateway",
                        gateway.namespace,
                        gateway.name,
                        f"{where}.tls",
                        "only tls.mode SIMPLE, MUTUAL or OPTIONAL_MUTUAL with a credentialName "
                        f"is served (not {mode}{'' if credential else ' without one'})",
                    )
                    continue
                names = tuple(sorted({_server_host(h, gateway.namespace)[1] for h in server.hosts}))
                client = "" if mode == "SIMPLE" else mode
                slot.tls_servers.append((names, f"{CREDENTIAL_PREFIX}{credential}", client))
            else:
                slot.plain = True
                if tls.get("httpsRedirect") is True:
                    slot.https_redirect.update(domain for domain, _ in domains)
            for domain, vs in domains:
                destinations = _Destinations(self.t, vs, "", server.port, "spec.http")
                routes = build_routes(
                    vs.http,
                    server.port,
                    destinations,
                    f"{vs.namespace}.{vs.name}",
                    gateway=f"{gateway.namespace}/{gateway.name}",
                )
                slot.vhosts.setdefault(domain, []).extend(routes)

    def _server_domains(
        self, gateway: IstioGateway, server: IstioServer, bound: Sequence[VirtualServiceSpec]
    ) -> list[tuple[str, VirtualServiceSpec]]:
        """(domain, VirtualService) for every VirtualService host the server takes,
        in VirtualService order."""
        out = []
        for vs in bound:
            for host in vs.hosts:
                for value in server.hosts:
                    namespace, pattern = _server_host(value, gateway.namespace)
                    if namespace not in ("*", vs.namespace) or not _host_matches(host, pattern):
                        continue
                    out.append((_narrower(host, pattern), vs))
                    break
        return out

    # Gateway API Gateway + HTTPRoute

    def gateway_api(self, gateway: Gateway, routes: Sequence[ParsedRoute]) -> None:
        for listener in gateway.listeners:
            if listener.protocol not in ("HTTP", "HTTPS"):
                self.warn(
                    "Gateway",
                    gateway.namespace,
                    gateway.name,
                    "spec.listeners",
                    f"{listener.protocol} listeners are not served yet (HTTP and HTTPS only)",
                )
                continue
            slot = self.port(listener.port)
            if listener.protocol == "HTTPS":
                credential = self._certificate(gateway, listener)
                if credential is None:
                    continue
                slot.tls_servers.append(((listener.hostname or "*",), credential, ""))
            else:
                slot.plain = True
            attached = [r for r in routes if self._attaches(r, gateway, listener)]
            by_domain: dict[str, list[ParsedRoute]] = {}
            for route in attached:
                for host in route.hostnames or ("*",):
                    if _host_matches(host, listener.hostname):
                        domain = _narrower(host, listener.hostname)
                        by_domain.setdefault(domain, []).append(route)
            for domain, domain_routes in sorted(by_domain.items()):
                for rule in ordered_rules(domain_routes):
                    owner = rule.name.split(".", 1)[0]
                    spec = VirtualServiceSpec(gateway.namespace, owner, ())
                    destinations = _Destinations(self.t, spec, "", listener.port, "spec.rules")
                    slot.vhosts.setdefault(domain, []).extend(
                        build_routes([rule], listener.port, destinations, "httproute")
                    )

    def _certificate(self, gateway: Gateway, listener: GatewayListener) -> str | None:
        tls = dict(listener.tls or {})
        refs = list(tls.get("certificateRefs") or ())
        if tls.get("mode", "Terminate") != "Terminate" or not refs:
            self.warn(
                "Gateway",
                gateway.namespace,
                gateway.name,
                "spec.listeners",
                f"listener {listener.name}: only tls.mode Terminate with a certificateRef "
                "is served",
            )
            return None
        return f"{CREDENTIAL_PREFIX}{dict(refs[0]).get('name', '')}"

    def _attaches(self, route: ParsedRoute, gateway: Gateway, listener: GatewayListener) -> bool:
        for parent in route.parents:
            if parent.kind != "Gateway" or parent.name != gateway.name:
                continue
            if (parent.namespace or route.namespace) != gateway.namespace:
                continue
            if parent.section_name and parent.section_name != listener.name:
                continue
            if parent.port is not None and parent.port != listener.port:
                continue
            allowed = dict(listener.allowed_routes or {})
            source = dict(allowed.get("namespaces") or {}).get("from", "Same")
            if source == "Same" and route.namespace != gateway.namespace:
                continue
            if source in ("None", "Selector"):
                if source == "Selector":
                    self.warn(
                        "Gateway",
                        gateway.namespace,
                        gateway.name,
                        "spec.listeners",
                        "allowedRoutes namespaces from: Selector is not supported; no route "
                        "attaches",
                    )
                continue
            return True
        return False


def _gateway_policies(
    state: ClusterState, pod: Pod | None, gateways: Iterable[Gateway], mesh: MeshConfig
) -> list[AuthorizationPolicy]:
    """Policies a gateway enforces, as istiod attaches them to a gateway pod: a
    selector matching the pod (in its namespace, or in any from the root namespace),
    none (namespace-wide, or mesh-wide from the root namespace), or ``targetRefs`` to
    its Gateway API Gateway."""
    keys = {g.key for g in gateways}
    found = []
    for policy in state.authorization_policies.values():
        if policy.action is AuthorizationAction.CUSTOM:
            continue
        if policy.target_refs:
            if any(
                r.kind == "Gateway" and ((r.namespace or policy.namespace), r.name) in keys
                for r in policy.target_refs
            ):
                found.append(policy)
            continue
        if pod is None:
            continue
        if policy.selector is None:
            if policy.namespace in (pod.namespace, mesh.root_namespace):
                found.append(policy)
        elif policy.namespace in (pod.namespace, mesh.root_namespace) and selector_matches(
            policy.selector, pod.labels
        ):
            found.append(policy)
    return sorted(found, key=lambda p: p.key)


def _virtual_host(domain: str, port: int, routes: list[Any], redirect: bool) -> Any:
    vhost = rc.VirtualHost(name=f"{domain}:{port}", domains=[domain], routes=routes)
    if redirect:
        vhost.require_tls = rc.VirtualHost.ALL
    return vhost


def _route_configuration(slot: _Port) -> Any:
    config = route_pb2.RouteConfiguration(
        name=route_config_name(slot.port), validate_clusters=wrappers_pb2.BoolValue(value=False)
    )
    for domain, routes in sorted(slot.vhosts.items(), key=lambda kv: (kv[0] == "*", kv[0])):
        config.virtual_hosts.append(
            _virtual_host(domain, slot.port, routes, domain in slot.https_redirect)
        )
    return config


def _manager(
    port: int, rbac: Sequence[Any], access_log: Sequence[Any], tracing: Any, *, ads: bool
) -> Any:
    manager = hcm_pb2.HttpConnectionManager()
    source: dict[str, Any] = {"ads": {}, "resource_api_version": "V3"} if ads else {}
    json_format.ParseDict(
        {
            "stat_prefix": listener_name(port),
            "rds": {"route_config_name": route_config_name(port), "config_source": source},
            # The edge: the client's address is the connection's, appended to XFF.
            "use_remote_address": True,
            "strip_any_host_port": True,
            "normalize_path": True,
            "merge_slashes": True,
        },
        manager,
    )
    manager.http_filters.extend(rbac)
    for name, type_url in (
        (FAULT_FILTER, FAULT),
        (CORS_FILTER, CORS),
        ("envoy.filters.http.router", ROUTER),
    ):
        json_format.ParseDict(
            {"name": name, "typed_config": {"@type": type_url}}, manager.http_filters.add()
        )
    manager.access_log.extend(access_log)
    if tracing is not None:
        manager.tracing.CopyFrom(tracing)
    return manager


def _listener(slot: _Port, manager: Any, *, ads: bool) -> Any:
    listener = listener_pb2.Listener(name=listener_name(slot.port))
    listener.address.socket_address.address = "0.0.0.0"
    listener.address.socket_address.port_value = slot.port
    for names, credential, client in slot.tls_servers:
        chain = listener.filter_chains.add(name=f"https.{slot.port}.{credential}")
        named = [n for n in names if n != "*"]
        if named and "*" not in names:
            chain.filter_chain_match.server_names.extend(named)
        chain.filter_chain_match.transport_protocol = "tls"
        secret = hbone.sds_secret(credential, ads=ads)
        context: dict[str, Any] = {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [secret],
        }
        downstream: dict[str, Any] = {"@type": hbone.DOWNSTREAM_TLS}
        if client:
            context["validation_context_sds_secret_config"] = hbone.sds_secret(
                credential + CA_SUFFIX, ads=ads
            )
            downstream["require_client_certificate"] = client == "MUTUAL"
        downstream["common_tls_context"] = context
        json_format.ParseDict(
            {"name": "envoy.transport_sockets.tls", "typed_config": downstream},
            chain.transport_socket,
        )
        chain.filters.add(name=HCM_FILTER).typed_config.Pack(manager)
    if slot.tls_servers:
        inspector = listener.listener_filters.add(name="envoy.filters.listener.tls_inspector")
        inspector.typed_config.Pack(tls_inspector_pb2.TlsInspector())
    if slot.plain:
        chain = listener.filter_chains.add(name=f"http.{slot.port}")
        chain.filters.add(name=HCM_FILTER).typed_config.Pack(manager)
    return listener


def translate_ingress(
    state: ClusterState,
    proxy: IngressProxy,
    mesh: MeshConfig | None = None,
    *,
    access_log: Sequence[Any] = (),
    tracing: Any = None,
    ads: bool = True,
) -> IngressResources:
    """Every listener, route configuration and cluster of the gateway ``proxy``.

    ``access_log`` and ``tracing`` go into every HTTP connection manager (from
    :mod:`.telemetry`). With ``ads=False`` the RDS and SDS references name no config
    source (for a static bootstrap in tests).
    """
    mesh = mesh or MeshConfig()
    ingress = _Ingress(state, mesh)
    pod = gateway_pod(state, proxy)
    vs_specs = [
        vs
        for vs in ingress.t._parsed(state.virtual_services, "VirtualService", parse_virtual_service)
        if vs.gateways
    ]
    istio = [
        g
        for _, g in sorted(state.istio_gateways.items())
        if pod is not None and g.selector and selector_matches(g.selector, pod.labels)
    ]
    for istio_gateway in istio:
        ingress.istio_gateway(istio_gateway, vs_specs)
    api = [
        g
        for g in state.gateways.values()
        if g.gateway_class == INGRESS_CLASS
        and g.namespace == proxy.namespace
        and g.name == proxy.gateway_name
    ]
    if api:
        routes, route_issues = parsed_routes(state, mesh)
        ingress.issues += route_issues
        for api_gateway in api:
            ingress.gateway_api(api_gateway, routes)
    rbac = build_rbac_filters(_gateway_policies(state, pod, api, mesh), peer=PeerIdentity.TLS)
    listeners: dict[str, Any] = {}
    route_configs: dict[str, Any] = {}
    for number, slot in sorted(ingress.ports.items()):
        manager = _manager(number, rbac, access_log, tracing, ads=ads)
        listeners[listener_name(number)] = _listener(slot, manager, ads=ads)
        route_configs[route_config_name(number)] = _route_configuration(slot)
    t = ingress.t
    clusters = {
        name: through_hbone_with_tls(build_cluster(name, t.policy(e.host, e.port, e.subset)))
        for name, e in sorted(t.needed.items())
    }
    if clusters:
        listeners[hbone.CONNECT_ORIGINATE] = hbone.connect_originate_listener()
        clusters[hbone.CONNECT_ORIGINATE] = hbone.connect_originate_cluster(ads=ads)
    issues = tuple(dict.fromkeys([*t.issues, *ingress.issues]))
    return IngressResources(
        listeners=listeners,
        routes=route_configs,
        clusters=clusters,
        endpoints=dict(sorted(t.needed.items())),
        issues=issues,
    )
