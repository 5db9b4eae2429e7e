"""Raw Kubernetes/Istio objects (parsed YAML or JSON) to validated domain objects.

:func:`decode` checks one object the way the API server and Istio's validation would
(required fields, types, enumerations, Istio's policy rules) and returns either the
domain object or the problems that rejected it. Objects we accept but ignore in part,
and kinds we do not serve, come back as warnings saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import (
    DATAPLANE_MODE_LABEL,
    DEFAULT_ROOT_NAMESPACE,
    EMPTY,
    SIDECAR_STATUS_ANNOTATION,
    AuthorizationAction,
    AuthorizationPolicy,
    ClusterObject,
    Condition,
    ContainerPort,
    DestinationRule,
    FrozenMap,
    MtlsMode,
    Namespace,
    Operation,
    PeerAuthentication,
    Pod,
    Rule,
    Service,
    ServiceAccount,
    ServicePort,
    Severity,
    Source,
    SourceIssue,
    TargetRef,
    VirtualService,
    deep_freeze,
)
from controlplane.sources.fields import (
    Fields,
    Problem,
    check_port,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_ip_or_cidr,
    is_port_name,
    parse_ip,
    type_name,
)

SECURITY_VERSIONS = ("v1", "v1beta1")
NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
DRY_RUN_ANNOTATION = "istio.io/dry-run"
TRAFFIC_DISTRIBUTION_ANNOTATION = "networking.istio.io/traffic-distribution"
INJECTION_LABEL = "istio-injection"


@dataclass
class Decoded:
    """The outcome of decoding one raw object."""

    kind: str = ""
    namespace: str = ""
    name: str = ""
    obj: ClusterObject | None = None
    """The domain object; None when rejected or when the kind is ignored."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """Whether any problem is an error (the object must not be used)."""
        return any(p.severity is Severity.ERROR for p in self.problems)

    def issues(self, file: str, line: int, *, kept_previous: bool = False) -> list[SourceIssue]:
        """The problems as issues located at ``file:line``.

        ``kept_previous`` notes on each error that an earlier good version stays in force.
        """
        suffix = " (the previous version stays in force)" if kept_previous else ""
        return [
            SourceIssue(
                file=file,
                line=line,
                kind=self.kind,
                namespace=self.namespace,
                name=self.name,
                field=p.field,
                message=p.message + (suffix if p.severity is Severity.ERROR else ""),
                severity=p.severity,
            )
            for p in self.problems
        ]


Decoder = Callable[[Fields, str, str], ClusterObject | None]


def decode(raw: Any) -> Decoded:
    """Validates one raw object and turns it into a domain object."""
    out = Decoded()
    not_an_object = _not_an_object(raw)
    if not_an_object:
        out.problems.append(Problem("", f"not a Kubernetes object: {not_an_object}"))
        return out
    top = Fields(raw, "", out.problems)
    api_version = top.string("apiVersion", required=True)
    out.kind = top.string("kind", required=True)
    meta = top.mapping("metadata", required=True)
    if meta is not None:
        out.name = meta.string("name", required=True)
        if out.name and not is_dns1123_subdomain(out.name):
            meta.error("name", f"{out.name!r} is not a valid name (lower-case DNS-1123 subdomain)")
    if not api_version or not out.kind:
        return out
    group = api_version.rpartition("/")[0]
    spec = _KINDS.get((group, out.kind))
    if spec is None:
        reason = _IGNORED.get((group, out.kind), f"unknown kind {api_version} {out.kind}; ignored")
        out.problems.append(Problem("kind", reason, Severity.WARNING))
        if meta is not None and isinstance(meta.data.get("namespace"), str):
            out.namespace = meta.data["namespace"]
        return out
    _decode_known(out, top, meta, api_version, spec)
    return out


def _decode_known(
    out: Decoded,
    top: Fields,
    meta: Fields | None,
    api_version: str,
    spec: tuple[tuple[str, ...], Decoder, bool],
) -> None:
    """The part of :func:`decode` for kinds we read: version, namespace, the decoder."""
    versions, decoder, namespaced = spec
    group, _, version = api_version.rpartition("/")
    if version not in versions:
        top.error(
            "apiVersion",
            f"{api_version} is not a version of {out.kind} we read "
            f"(use {' or '.join(f'{group}/{v}'.lstrip('/') for v in versions)})",
        )
    if meta is None:
        return
    if namespaced:
        out.namespace = meta.string("namespace") or "default"
        if not is_dns1123_label(out.namespace):
            meta.error("namespace", f"{out.namespace!r} is not a valid namespace name")
    elif meta.has("namespace"):
        meta.warn("namespace", f"{out.kind} is not namespaced; metadata.namespace is ignored")
    obj = decoder(top, out.namespace, out.name)
    if out.rejected:
        # What would be ignored in an object that is rejected anyway is only noise.
        out.problems = [p for p in out.problems if p.severity is Severity.ERROR]
    else:
        out.obj = obj


def _not_an_object(raw: Any) -> str:
    """Why ``raw`` cannot be a Kubernetes object at all ('' when it might be one)."""
    if not isinstance(raw, Mapping):
        return f"expected a mapping with apiVersion, kind and metadata, got {type_name(raw)}"
    if "apiVersion" not in raw and "kind" not in raw:
        return "no apiVersion and kind (a fragment of one, or some other YAML?)"
    return ""


# --- core ---------------------------------------------------------------------------------


def _labels(meta: Fields | None) -> tuple[FrozenMap[str, str], FrozenMap[str, str]]:
    if meta is None:
        return EMPTY, EMPTY
    return meta.str_map("labels") or EMPTY, meta.str_map("annotations") or EMPTY


def _namespace(top: Fields, _ns: str, name: str) -> Namespace:
    labels, annotations = _labels(top.mapping("metadata"))
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


def _pod(top: Fields, ns: str, name: str) -> Pod:
    meta = top.mapping("metadata")
    labels, annotations = _labels(meta)
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


def _service(top: Fields, ns: str, name: str) -> Service:
    labels, annotations = _labels(top.mapping("metadata"))
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


def _service_account(top: Fields, ns: str, name: str) -> ServiceAccount:
    labels, annotations = _labels(top.mapping("metadata"))
    return ServiceAccount(namespace=ns, name=name, labels=labels, annotations=annotations)


# --- Istio security -----------------------------------------------------------------------


def _selector(spec: Fields) -> FrozenMap[str, str] | None:
    selector = spec.mapping("selector")
    if selector is None:
        return None
    selector.reject_unknown({"matchLabels"})
    labels = selector.str_map("matchLabels")
    if not labels:
        spec.warn(
            "selector",
            "an empty selector selects the whole namespace, as if it were left out",
        )
        return None
    return labels


def _peer_authentication(top: Fields, ns: str, name: str) -> PeerAuthentication:
    spec = top.mapping("spec") or Fields({}, "spec", top.problems)
    spec.reject_unknown({"selector", "mtls", "portLevelMtls"})
    selector = _selector(spec)
    mode = _mtls_mode(spec.mapping("mtls"))
    port_modes: dict[int, MtlsMode] = {}
    levels = spec.mapping("portLevelMtls")
    if levels is not None:
        if selector is None:
            spec.error(
                "portLevelMtls",
                "port-level mTLS needs a workload selector (Istio ignores it on "
                "namespace- and mesh-wide policies)",
            )
        for key in levels.data:
            path = levels.at(str(key))
            port = check_port(key, path, top.problems)
            entry = levels.mapping(str(key)) if isinstance(key, str) else None
            if entry is None and isinstance(key, int):
                value = levels.data[key]
                entry = Fields(value, path, top.problems) if isinstance(value, Mapping) else None
            if entry is None:
                top.problems.append(Problem(path, "must be a mapping with a mode"))
                continue
            if port is not None:
                port_modes[port] = _mtls_mode(entry)
    if selector is not None and ns == DEFAULT_ROOT_NAMESPACE:
        spec.warn(
            "selector",
            f"a selector policy in the root namespace ({ns}) is ignored, as in Istio; "
            "put it in the workloads' namespace",
        )
    return PeerAuthentication(
        namespace=ns, name=name, selector=selector, mode=mode, port_level_mtls=FrozenMap(port_modes)
    )


def _mtls_mode(mtls: Fields | None) -> MtlsMode:
    if mtls is None:
        return MtlsMode.UNSET
    mtls.reject_unknown({"mode"})
    text = mtls.string("mode", default="UNSET")
    try:
        return MtlsMode[text]
    except KeyError:
        mtls.error("mode", f"{text!r} is not one of {', '.join(m.name for m in MtlsMode)}")
        return MtlsMode.UNSET


_SOURCE_FIELDS = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "requestPrincipals": "request_principals",
    "notRequestPrincipals": "not_request_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
    "remoteIpBlocks": "remote_ip_blocks",
    "notRemoteIpBlocks": "not_remote_ip_blocks",
    "trustDomains": "trust_domains",
    "notTrustDomains": "not_trust_domains",
}
_OPERATION_FIELDS = {
    "hosts": "hosts",
    "notHosts": "not_hosts",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
}
_WHEN_KEYS = {
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
}
_WHEN_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")
_ACTIONS = {a.value: a for a in AuthorizationAction}


def _authorization_policy(top: Fields, ns: str, name: str) -> AuthorizationPolicy:
    _, annotations = _labels(top.mapping("metadata"))
    spec = top.mapping("spec") or Fields({}, "spec", top.problems)
    spec.reject_unknown({"selector", "targetRef", "targetRefs", "action", "provider", "rules"})
    selector = _selector(spec)
    action_text = spec.string("action", default="ALLOW")
    action = _ACTIONS.get(action_text, AuthorizationAction.ALLOW)
    if action_text not in _ACTIONS:
        spec.error("action", f"{action_text!r} is not one of {', '.join(_ACTIONS)}")
    provider = ""
    provider_fields = spec.mapping("provider")
    if provider_fields is not None:
        provider = provider_fields.string("name", required=True)
    if action is AuthorizationAction.CUSTOM and not provider:
        spec.error("provider", "a CUSTOM policy needs provider.name")
    if action is not AuthorizationAction.CUSTOM and provider_fields is not None:
        spec.error("provider", "provider is only allowed with action CUSTOM")
    target_refs = _target_refs(spec)
    if target_refs and selector is not None:
        spec.error("targetRefs", "selector and targetRef(s) cannot be used together")
    if action in (AuthorizationAction.AUDIT, AuthorizationAction.CUSTOM):
        spec.warn(
            "action", f"{action.value} policies are not enforced by ztunnel (a waypoint's job)"
        )
    if target_refs:
        spec.warn("targetRefs", "policies bound by targetRef apply at waypoints, not in ztunnel")
    rules = tuple(_rule(r) for r in spec.mappings("rules"))
    if action in (AuthorizationAction.ALLOW, AuthorizationAction.DENY) and not target_refs:
        for i, rule in enumerate(rules):
            _warn_l7(spec, i, rule, action)
    dry_run = annotations.get(DRY_RUN_ANNOTATION, "false").lower() == "true"
    return AuthorizationPolicy(
        namespace=ns,
        name=name,
        action=action,
        selector=selector,
        target_refs=target_refs,
        rules=rules,
        provider=provider,
        dry_run=dry_run,
    )


def _warn_l7(spec: Fields, index: int, rule: Rule, action: AuthorizationAction) -> None:
    """Says what ztunnel makes of a rule that needs L7 attributes."""
    l7 = rule.l7_attributes()
    if not l7:
        return
    uses = f"uses L7 attributes ({', '.join(l7)}) that ztunnel cannot see"
    if action is AuthorizationAction.ALLOW:
        spec.warn(f"rules[{index}]", f"{uses}: ztunnel drops this rule (it allows nothing)")
    elif rule.matches_anything_at_l4():
        spec.warn(f"rules[{index}]", f"{uses}: ztunnel enforces its L4 part only (denies more)")
    else:
        spec.warn(
            f"rules[{index}]",
            f"{uses}: without them the rule matches nothing, so it has no effect in "
            "ztunnel; enforce it with a waypoint",
        )


def _target_refs(spec: Fields) -> tuple[TargetRef, ...]:
    entries = spec.mappings("targetRefs")
    single = spec.mapping("targetRef")
    if single is not None:
        if entries:
            spec.error("targetRef", "use either targetRef or targetRefs, not both")
        entries = [single, *entries]
    refs = []
    for ref in entries:
        ref.reject_unknown({"group", "kind", "name", "namespace"})
        refs.append(
            TargetRef(
                kind=ref.string("kind", required=True),
                name=ref.string("name", required=True),
                group=ref.string("group"),
                namespace=ref.string("namespace"),
            )
        )
    return tuple(refs)


def _rule(rule: Fields) -> Rule:
    rule.reject_unknown({"from", "to", "when"})
    sources = []
    for entry in rule.mappings("from", nonempty=True):
        entry.reject_unknown({"source"})
        source = entry.mapping("source", required=True)
        if source is not None:
            sources.append(_source(source))
    operations = []
    for entry in rule.mappings("to", nonempty=True):
        entry.reject_unknown({"operation"})
        operation = entry.mapping("operation", required=True)
        if operation is not None:
            operations.append(_operation(operation))
    conditions = [_condition(c) for c in rule.mappings("when", nonempty=True)]
    return Rule(tuple(sources), tuple(operations), tuple(conditions))


def _source(source: Fields) -> Source:
    source.reject_unknown(set(_SOURCE_FIELDS))
    values: dict[str, tuple[str, ...]] = {}
    for key, attr in _SOURCE_FIELDS.items():
        values[attr] = source.str_list(key)
        for i, value in enumerate(values[attr]):
            path = f"{key}[{i}]"
            if "ip_blocks" in attr:
                if not is_ip_or_cidr(value):
                    source.error(path, f"{value!r} is not an IP address or CIDR block")
            elif "service_accounts" in attr:
                _check_service_account(source, path, value)
            else:
                _check_wildcard(source, path, value)
                if "principals" in attr and value.startswith("spiffe://"):
                    source.warn(
                        path,
                        f"{value!r} never matches: principals are written without "
                        "'spiffe://' (<trust-domain>/ns/<namespace>/sa/<account>)",
                    )
    if not any(values.values()):
        source.error(None, "must not be empty (name at least one field)")
    if (values["principals"] or values["not_principals"]) and (
        values["service_accounts"] or values["not_service_accounts"]
    ):
        source.error("serviceAccounts", "cannot be used together with principals")
    return Source(**values)


def _check_wildcard(fields: Fields, path: str, value: str) -> None:
    if not value:
        fields.error(path, "must not be empty")
    elif "*" in value[1:-1] or (value.count("*") > 1 and value != "*"):
        fields.error(path, f"{value!r}: '*' is allowed only alone, as a prefix or as a suffix")


def _check_service_account(fields: Fields, path: str, value: str) -> None:
    parts = value.split("/")
    if "*" in value or len(parts) > 2 or not all(parts):
        fields.error(path, f"{value!r} must be 'serviceaccount' or 'namespace/serviceaccount'")


def _operation(operation: Fields) -> Operation:
    operation.reject_unknown({*_OPERATION_FIELDS, "ports", "notPorts"})
    values: dict[str, Any] = {}
    for key, attr in _OPERATION_FIELDS.items():
        values[attr] = operation.str_list(key)
        for i, value in enumerate(values[attr]):
            if not value:
                operation.error(f"{key}[{i}]", "must not be empty")
    for key, attr in (("ports", "ports"), ("notPorts", "not_ports")):
        ports = [
            check_port(v, f"{operation.at(key)}[{i}]", operation.problems)
            for i, v in enumerate(operation.sequence(key))
        ]
        values[attr] = tuple(p for p in ports if p is not None)
    if not any(values.values()) and not operation.problems:
        operation.error(None, "must not be empty (name at least one field)")
    return Operation(**values)


def _condition(when: Fields) -> Condition:
    when.reject_unknown({"key", "values", "notValues"})
    key = when.string("key", required=True)
    values = when.str_list("values")
    not_values = when.str_list("notValues")
    if key and key not in _WHEN_KEYS and not key.startswith(_WHEN_PREFIXES):
        when.error("key", f"{key!r} is not a supported condition key")
    if key and not values and not not_values:
        when.error(None, f"condition {key!r} needs values or notValues")
    if key == "destination.port":
        for i, v in enumerate((*values, *not_values)):
            check_port(v, when.at(f"values[{i}]"), when.problems)
    if key in ("source.ip", "remote.ip", "destination.ip"):
        for v in (*values, *not_values):
            if not is_ip_or_cidr(v):
                when.error("values", f"{v!r} is not an IP address or CIDR block")
    return Condition(key=key, values=values, not_values=not_values)


# --- Istio networking (kept for waypoints) ----------------------------------------------


def _virtual_service(top: Fields, ns: str, name: str) -> VirtualService:
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    hosts = spec.str_list("hosts")
    if not hosts:
        spec.error("hosts", "at least one host is required")
    for i, host in enumerate(hosts):
        if not host:
            spec.error(f"hosts[{i}]", "must not be empty")
    gateways = spec.str_list("gateways")
    for key in ("http", "tcp", "tls"):
        for route in spec.mappings(key):
            route.sequence("route")
            route.sequence("match")
    spec.str_list("exportTo")
    return VirtualService(
        namespace=ns, name=name, hosts=hosts, gateways=gateways, spec=deep_freeze(spec.data)
    )


def _destination_rule(top: Fields, ns: str, name: str) -> DestinationRule:
    spec = top.mapping("spec", required=True) or Fields({}, "spec", top.problems)
    host = spec.string("host", required=True)
    subsets: list[str] = []
    for subset in spec.mappings("subsets"):
        subset_name = subset.string("name", required=True)
        if subset_name in subsets:
            subset.error("name", f"duplicate subset {subset_name!r}")
        subsets.append(subset_name)
        subset.str_map("labels")
        subset.mapping("trafficPolicy")
    spec.mapping("trafficPolicy")
    spec.str_list("exportTo")
    return DestinationRule(
        namespace=ns, name=name, host=host, subsets=tuple(subsets), spec=deep_freeze(spec.data)
    )


_KINDS: dict[tuple[str, str], tuple[tuple[str, ...], Decoder, bool]] = {
    ("", "Namespace"): (("v1",), _namespace, False),
    ("", "Pod"): (("v1",), _pod, True),
    ("", "Service"): (("v1",), _service, True),
    ("", "ServiceAccount"): (("v1",), _service_account, True),
    ("security.istio.io", "PeerAuthentication"): (SECURITY_VERSIONS, _peer_authentication, True),
    ("security.istio.io", "AuthorizationPolicy"): (
        SECURITY_VERSIONS,
        _authorization_policy,
        True,
    ),
    ("networking.istio.io", "VirtualService"): (NETWORKING_VERSIONS, _virtual_service, True),
    ("networking.istio.io", "DestinationRule"): (NETWORKING_VERSIONS, _destination_rule, True),
}
"""(API group, kind) -> (versions read, decoder, namespaced)."""

_CONTROLLERS = "workload controllers are not expanded into pods here; write Pod objects"
_IGNORED: dict[tuple[str, str], str] = {
    ("networking.istio.io", "Gateway"): (
        "Istio ingress Gateways are not served yet; the object is ignored"
    ),
    ("gateway.networking.k8s.io", "Gateway"): (
        "Gateway API gateways (ingress and waypoints) are not served yet; ignored"
    ),
    ("gateway.networking.k8s.io", "HTTPRoute"): "HTTPRoutes need a waypoint; not served yet",
    ("gateway.networking.k8s.io", "GRPCRoute"): "GRPCRoutes need a waypoint; not served yet",
    ("networking.istio.io", "ServiceEntry"): "ServiceEntries are not served yet; ignored",
    ("networking.istio.io", "WorkloadEntry"): "WorkloadEntries are not served yet; ignored",
    ("networking.istio.io", "Sidecar"): "Sidecar resources do not apply in ambient mode",
    ("networking.istio.io", "EnvoyFilter"): "EnvoyFilters do not apply to ztunnel",
    ("security.istio.io", "RequestAuthentication"): (
        "JWT authentication needs a waypoint; not served yet"
    ),
    ("telemetry.istio.io", "Telemetry"): "Telemetry resources are not read; ignored",
    ("apps", "Deployment"): _CONTROLLERS,
    ("apps", "StatefulSet"): _CONTROLLERS,
    ("apps", "DaemonSet"): _CONTROLLERS,
    ("apps", "ReplicaSet"): _CONTROLLERS,
    ("batch", "Job"): _CONTROLLERS,
    ("batch", "CronJob"): _CONTROLLERS,
    ("", "Endpoints"): "endpoints are computed from Service selectors and Pods; ignored",
    ("discovery.k8s.io", "EndpointSlice"): (
        "endpoints are computed from Service selectors and Pods; ignored"
    ),
    ("", "ConfigMap"): "ConfigMaps are not read by the mesh; ignored",
    ("", "Secret"): "Secrets are not read by the mesh; ignored",
    ("networking.k8s.io", "NetworkPolicy"): "NetworkPolicies are the CNI's job, not the mesh's",
}
"""Kinds we know and deliberately ignore, with the reason given to the user."""


def known_kinds() -> list[str]:
    """``apiVersion kind`` of every kind decoded into a domain object."""
    return [
        f"{'/'.join(p for p in (group, versions[0]) if p)} {kind}"
        for (group, kind), (versions, _, _) in _KINDS.items()
    ]
