"""Decoding the core Kubernetes kinds: Namespace, Pod, Service, ServiceAccount."""

from __future__ import annotations

from controlplane.model import (
    DATAPLANE_MODE_LABEL,
    SIDECAR_STATUS_ANNOTATION,
    ContainerPort,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    ServicePort,
)
from controlplane.sources.fields import (
    Fields,
    check_port,
    is_dns1123_label,
    is_port_name,
    labels_of,
    parse_ip,
)

TRAFFIC_DISTRIBUTION_ANNOTATION = "networking.istio.io/traffic-distribution"
INJECTION_LABEL = "istio-injection"


def decode_namespace(top: Fields, _ns: str, name: str) -> Namespace:
    """A Namespace; warns about sidecar-injection labels."""
    labels, annotations = labels_of(top.mapping("metadata"))
    if not is_dns1123_label(name):
        top.error("metadata.name", f"{name!r} is not a valid namespace name (DNS-1123 label)")
    if labels.get(INJECTION_LABEL) == "enabled" or "istio.io/rev" in labels:
        top.warn(
            f"metadata.labels.{INJECTION_LABEL}",
            "sidecar injection is not used in ambient mode; enroll the namespace with "
            f"the label {DATAPLANE_MODE_LABEL}=ambient",
        )
    mode = labels.get(DATAPLANE_MODE_LABEL)
    if mode is not None and mode not in ("ambient", "none"):
        top.warn(
            f"metadata.labels.{DATAPLANE_MODE_LABEL}",
            f"value {mode!r} is not 'ambient'; the namespace is not enrolled",
        )
    return Namespace(name=name, labels=labels, annotations=annotations)


_POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_PROTOCOLS = ("TCP", "UDP", "SCTP")


def decode_pod(top: Fields, ns: str, name: str) -> Pod:
    """A Pod: addresses, readiness, node, identity, container ports, owner."""
    meta = top.mapping("metadata")
    labels, annotations = labels_of(meta)
    spec = top.mapping("spec") or Fields({}, "spec", top.problems)
    status = top.mapping("status") or Fields({}, "status", top.problems)
    ports: list[ContainerPort] = []
    for container in spec.mappings("containers"):
        for port in container.mappings("ports"):
            number = port.port("containerPort", required=True)
            protocol = port.string("protocol", default="TCP")
            if protocol not in _PROTOCOLS:
                port.error("protocol", f"must be one of {', '.join(_PROTOCOLS)}")
            port_name = port.string("name")
            if port_name and not is_port_name(port_name):
                port.error("name", f"{port_name!r} is not a valid port name (IANA service name)")
            if number is not None:
                ports.append(ContainerPort(number, port_name, protocol))
    ip = _pod_ip(status)
    ips = [ip] if ip else []
    for i, entry in enumerate(status.mappings("podIPs")):
        text = entry.string("ip", required=True)
        parsed = parse_ip(text) if text else None
        if text and parsed is None:
            entry.error("ip", f"{text!r} is not an IP address")
        elif parsed and parsed not in ips:
            if i == 0 and ip and parsed != ip:
                entry.error("ip", f"the first podIPs entry must equal status.podIP ({ip})")
            ips.append(parsed)
    phase = status.string("phase")
    if phase and phase not in _POD_PHASES:
        status.error("phase", f"must be one of {', '.join(_POD_PHASES)}")
    if not phase and ip:
        # Folder-written pods often carry only an address; treat them as running.
        phase = "Running"
    owner = _controller(meta)
    if SIDECAR_STATUS_ANNOTATION in annotations:
        top.warn(
            f"metadata.annotations.{SIDECAR_STATUS_ANNOTATION}",
            "the pod carries an Istio sidecar; ambient mode does not capture it",
        )
    return Pod(
        namespace=ns,
        name=name,
        uid=meta.string("uid") if meta else "",
        labels=labels,
        annotations=annotations,
        node_name=spec.string("nodeName"),
        service_account=spec.string("serviceAccountName")
        or spec.string("serviceAccount")
        or "default",
        ip=ip,
        ips=tuple(ips),
        phase=phase,
        ready=_pod_ready(status, phase),
        host_network=spec.boolean("hostNetwork"),
        ports=tuple(ports),
        deleting=bool(meta and meta.has("deletionTimestamp")),
        owner_kind=owner[0],
        owner_name=owner[1],
    )


def _controller(meta: Fields | None) -> tuple[str, str]:
    """(kind, name) of the controlling owner reference, if any."""
    if meta is None:
        return ("", "")
    for ref in meta.mappings("ownerReferences"):
        kind, name = ref.string("kind", required=True), ref.string("name", required=True)
        if ref.boolean("controller"):
            return (kind, name)
    return ("", "")


def _pod_ip(status: Fields) -> str | None:
    text = status.string("podIP")
    if not text:
        return None
    parsed = parse_ip(text)
    if parsed is None:
        status.error("podIP", f"{text!r} is not an IP address")
    return parsed


def _pod_ready(status: Fields, phase: str) -> bool:
    conditions = status.mappings("conditions")
    if not conditions:
        return phase == "Running"
    for condition in conditions:
        if condition.string("type", required=True) == "Ready":
            value = condition.string("status", required=True)
            if value not in ("True", "False", "Unknown"):
                condition.error("status", "must be True, False or Unknown")
            return value == "True"
    return False


_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def decode_service(top: Fields, ns: str, name: str) -> Service:
    """A Service: selector, cluster IPs, ports, traffic settings."""
    labels, annotations = labels_of(top.mapping("metadata"))
    spec = top.mapping("spec") or Fields({}, "spec", top.problems)
    svc_type = spec.string("type", default="ClusterIP")
    if svc_type not in _SERVICE_TYPES:
        spec.error("type", f"must be one of {', '.join(_SERVICE_TYPES)}")
    if svc_type == "ExternalName":
        spec.warn("type", "ExternalName services have no VIP or endpoints; ignored by the mesh")
    cluster_ips = _cluster_ips(spec)
    ports = tuple(_service_ports(spec))
    if not ports and svc_type != "ExternalName":
        spec.warn("ports", "the service has no ports; it carries no traffic")
    ip_families = spec.str_list("ipFamilies")
    for i, family in enumerate(ip_families):
        if family not in ("IPv4", "IPv6"):
            spec.error(f"ipFamilies[{i}]", f"{family!r} is not IPv4 or IPv6")
    policy = spec.string("internalTrafficPolicy")
    if policy and policy not in ("Cluster", "Local"):
        spec.error("internalTrafficPolicy", "must be Cluster or Local")
    return Service(
        namespace=ns,
        name=name,
        labels=labels,
        annotations=annotations,
        selector=spec.str_map("selector"),
        cluster_ips=cluster_ips,
        type=svc_type,
        ports=ports,
        ip_families=ip_families,
        traffic_distribution=spec.string("trafficDistribution")
        or annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION, ""),
        internal_traffic_policy=policy,
        publish_not_ready_addresses=spec.boolean("publishNotReadyAddresses"),
    )


def _cluster_ips(spec: Fields) -> tuple[str, ...]:
    primary = spec.string("clusterIP")
    listed = spec.str_list("clusterIPs")
    if primary and listed and listed[0] != primary:
        spec.error("clusterIPs", f"the first entry must equal spec.clusterIP ({primary})")
    out: list[str] = []
    for i, text in enumerate(listed or ((primary,) if primary else ())):
        if text == "None":
            if i:
                spec.error("clusterIPs", "'None' (headless) must be the only entry")
            return ()
        parsed = parse_ip(text)
        if parsed is None:
            spec.error("clusterIPs" if listed else "clusterIP", f"{text!r} is not an IP address")
        elif parsed not in out:
            out.append(parsed)
    return tuple(out)


def _service_ports(spec: Fields) -> list[ServicePort]:
    ports: list[ServicePort] = []
    entries = spec.mappings("ports")
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    for entry in entries:
        number = entry.port("port", required=True)
        port_name = entry.string("name")
        if len(entries) > 1 and not port_name:
            entry.error("name", "required when a service has more than one port")
        if port_name in seen_names:
            entry.error("name", f"duplicate port name {port_name!r}")
        seen_names.add(port_name)
        protocol = entry.string("protocol", default="TCP")
        if protocol not in _PROTOCOLS:
            entry.error("protocol", f"must be one of {', '.join(_PROTOCOLS)}")
        if number is not None and (number, protocol) in seen_ports:
            entry.error("port", f"duplicate port {number}/{protocol}")
        target = _target_port(entry, number)
        if number is not None and target is not None:
            seen_ports.add((number, protocol))
            ports.append(
                ServicePort(
                    port=number,
                    target_port=target,
                    name=port_name,
                    protocol=protocol,
                    app_protocol=entry.string("appProtocol"),
                )
            )
    return ports


def _target_port(entry: Fields, port: int | None) -> int | str | None:
    value = entry.data.get("targetPort")
    if value is None:
        return port
    if isinstance(value, str) and not value.isdigit():
        if not is_port_name(value):
            entry.error("targetPort", f"{value!r} is neither a port number nor a port name")
            return None
        return value
    return check_port(value, entry.at("targetPort"), entry.problems)


def decode_service_account(top: Fields, ns: str, name: str) -> ServiceAccount:
    """A ServiceAccount."""
    labels, annotations = labels_of(top.mapping("metadata"))
    return ServiceAccount(namespace=ns, name=name, labels=labels, annotations=annotations)
