"""Decoding gateways and routes: Gateway API ``Gateway`` and ``HTTPRoute``, Istio ``Gateway``.

Each becomes a shell of what binding and ingress need to find (class, listeners,
selector, servers, parent references) with the whole validated ``spec`` deep-frozen,
which the L7 translation in :mod:`controlplane.envoy` parses further.
"""

from __future__ import annotations

from controlplane.model import (
    EMPTY,
    Gateway,
    GatewayListener,
    GatewayStaticAddress,
    HTTPRoute,
    IstioGateway,
    IstioServer,
    ParentRef,
    deep_freeze,
)
from controlplane.sources.fields import Fields, labels_of

LISTENER_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP", "HBONE")
"""Gateway API core protocols, and Istio's ``HBONE`` for waypoints."""
SERVER_PROTOCOLS = ("HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS")
"""Istio ``Gateway`` server protocols."""
ADDRESS_TYPES = ("IPAddress", "Hostname", "NamedAddress")


def decode_gateway(top: Fields, ns: str, name: str) -> Gateway:
    """A Gateway API Gateway: class, listeners, addresses, and the frozen spec."""
    labels, annotations = labels_of(top.mapping("metadata"))
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    gateway_class = spec.string("gatewayClassName", required=True)
    listeners: list[GatewayListener] = []
    seen: set[str] = set()
    for listener in spec.mappings("listeners", nonempty=True):
        decoded = _listener(listener)
        if decoded is None:
            continue
        if decoded.name in seen:
            listener.error("name", f"duplicate listener name {decoded.name!r}")
        seen.add(decoded.name)
        listeners.append(decoded)
    if not spec.has("listeners"):
        spec.error("listeners", "at least one listener is required")
    addresses: list[GatewayStaticAddress] = []
    for address in spec.mappings("addresses"):
        kind = address.string("type", default="IPAddress")
        if kind not in ADDRESS_TYPES and "/" not in kind:
            address.error("type", f"must be one of {', '.join(ADDRESS_TYPES)}")
        value = address.string("value", required=True)
        if value:
            addresses.append(GatewayStaticAddress(value=value, type=kind))
    spec.mapping("infrastructure")
    return Gateway(
        namespace=ns,
        name=name,
        gateway_class=gateway_class,
        labels=labels,
        annotations=annotations,
        listeners=tuple(listeners),
        addresses=tuple(addresses),
        spec=deep_freeze(spec.data),
    )


def _listener(listener: Fields) -> GatewayListener | None:
    name = listener.string("name", required=True)
    port = listener.port("port", required=True)
    protocol = listener.string("protocol", required=True)
    if protocol and protocol not in LISTENER_PROTOCOLS and "/" not in protocol:
        listener.error("protocol", f"{protocol!r} is not one of {', '.join(LISTENER_PROTOCOLS)}")
    hostname = listener.string("hostname")
    tls = listener.mapping("tls")
    if tls is not None:
        mode = tls.string("mode", default="Terminate")
        if mode not in ("Terminate", "Passthrough"):
            tls.error("mode", "must be Terminate or Passthrough")
        tls.mappings("certificateRefs")
    elif protocol == "HTTPS":
        listener.error("tls", "an HTTPS listener needs tls (certificateRefs)")
    allowed = listener.mapping("allowedRoutes")
    if allowed is not None:
        namespaces = allowed.mapping("namespaces")
        if namespaces is not None:
            source = namespaces.string("from", default="Same")
            if source not in ("All", "Same", "Selector", "None"):
                namespaces.error("from", "must be All, Same, Selector or None")
        allowed.mappings("kinds")
    if not name or port is None or not protocol:
        return None
    return GatewayListener(
        name=name,
        port=port,
        protocol=protocol,
        hostname=hostname,
        tls=deep_freeze(tls.data) if tls is not None else None,
        allowed_routes=deep_freeze(allowed.data) if allowed is not None else None,
    )


def decode_istio_gateway(top: Fields, ns: str, name: str) -> IstioGateway:
    """An Istio Gateway: selector, servers, and the frozen spec."""
    labels, annotations = labels_of(top.mapping("metadata"))
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    selector = spec.str_map("selector") or EMPTY
    servers: list[IstioServer] = []
    for server in spec.mappings("servers", nonempty=True):
        decoded = _server(server)
        if decoded is not None:
            servers.append(decoded)
    if not spec.has("servers"):
        spec.error("servers", "at least one server is required")
    return IstioGateway(
        namespace=ns,
        name=name,
        selector=selector,
        servers=tuple(servers),
        labels=labels,
        annotations=annotations,
        spec=deep_freeze(spec.data),
    )


def _server(server: Fields) -> IstioServer | None:
    port = server.mapping("port", required=True)
    protocol = port_name = ""
    number_value: int | None = None
    if port is not None:
        number_value = port.port("number", required=True)
        protocol = port.string("protocol", required=True).upper()
        port_name = port.string("name")
        if protocol and protocol not in SERVER_PROTOCOLS:
            port.error("protocol", f"{protocol!r} is not one of {', '.join(SERVER_PROTOCOLS)}")
    hosts = server.str_list("hosts")
    if not hosts:
        server.error("hosts", "at least one host is required ('*' for any)")
    tls = server.mapping("tls")
    if tls is not None:
        mode = tls.string("mode", default="SIMPLE")
        if mode not in ("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL"):
            tls.error("mode", f"{mode!r} is not a TLS mode Istio knows")
        tls.string("credentialName")
        tls.boolean("httpsRedirect")
    elif protocol in ("HTTPS", "TLS"):
        server.error("tls", f"a {protocol} server needs tls (mode, credentialName)")
    if number_value is None or not protocol or not hosts:
        return None
    return IstioServer(
        port=number_value,
        protocol=protocol,
        hosts=hosts,
        port_name=port_name,
        name=server.string("name"),
        bind=server.string("bind"),
        tls=deep_freeze(tls.data) if tls is not None else None,
    )


def decode_http_route(top: Fields, ns: str, name: str) -> HTTPRoute:
    """An HTTPRoute: parent references, hostnames, and the frozen spec."""
    labels, annotations = labels_of(top.mapping("metadata"))
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    parents = tuple(p for p in map(_parent_ref, spec.mappings("parentRefs")) if p is not None)
    hostnames = spec.str_list("hostnames")
    for rule in spec.mappings("rules"):
        rule.mappings("matches")
        rule.mappings("filters")
        for backend in rule.mappings("backendRefs"):
            backend.string("name", required=True)
            if backend.has("port"):
                backend.port("port")
            weight = backend.data.get("weight")
            if weight is not None and (
                not isinstance(weight, int) or isinstance(weight, bool) or weight < 0
            ):
                backend.error("weight", f"must be a non-negative integer, not {weight!r}")
    return HTTPRoute(
        namespace=ns,
        name=name,
        parent_refs=parents,
        hostnames=hostnames,
        labels=labels,
        annotations=annotations,
        spec=deep_freeze(spec.data),
    )


def _parent_ref(ref: Fields) -> ParentRef | None:
    name = ref.string("name", required=True)
    port = ref.port("port") if ref.has("port") else None
    parent = ParentRef(
        name=name,
        namespace=ref.string("namespace"),
        kind=ref.string("kind", default="Gateway"),
        group=ref.string("group", default="gateway.networking.k8s.io"),
        section_name=ref.string("sectionName"),
        port=port,
    )
    return parent if name else None
