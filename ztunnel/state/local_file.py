"""The local state file: workloads, services and policies without a control plane.

Like Istio ztunnel's local-config mode, one YAML document holds three lists in the
camelCase shape ``/config_dump`` prints::

    workloads:
    - name: backend-v1
      namespace: demo
      serviceAccount: backend
      workloadIps: [10.244.2.5]
      protocol: HBONE
      node: node2
      services: {demo/backend.demo.svc.cluster.local: {80: 8080}}
    services:
    - name: backend
      namespace: demo
      hostname: backend.demo.svc.cluster.local
      vips: [/10.96.0.10]
      ports: {80: 8080}
    policies:
    - name: allow-frontend
      namespace: demo
      scope: Namespace
      action: Allow
      rules: [[[{principals: [cluster.local/ns/demo/sa/frontend]}]]]

Principals and namespaces take Istio's wildcards (``*``, ``x*``, ``*x``) or the
``{Exact|Prefix|Suffix|Presence: v}`` form. Every error names the file, the entry
and the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ztunnel.errors import StateFileError
from ztunnel.state.proxy_state import ProxyState
from ztunnel.state.security import (
    Action,
    Authorization,
    Clause,
    IPNetwork,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel.state.workload import (
    GatewayAddress,
    HealthPolicy,
    IPAddress,
    LoadBalancing,
    LoadBalancingMode,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)

T = TypeVar("T")

DEFAULT_CLUSTER_ID = "Kubernetes"


@dataclass(frozen=True)
class LocalState:
    """The contents of a local state file, as domain objects."""

    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple[Authorization, ...] = ()

    def to_proxy_state(self) -> ProxyState:
        """An indexed :class:`ProxyState` over these objects."""
        return ProxyState(self.workloads, self.services, self.policies)


class _Entry:
    """One mapping of the file, with the file and entry names errors must carry."""

    def __init__(self, source: str, entry: str, data: object, allowed: frozenset[str]) -> None:
        self.source = source
        self.entry = entry
        if not isinstance(data, Mapping):
            raise self.error(f"expected a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise self.error(
                "unknown field",
                field=unknown[0],
                hint=f"known fields: {', '.join(sorted(allowed))}",
            )
        self.data: Mapping[str, Any] = data

    def error(
        self, message: str, *, field: str | None = None, hint: str | None = None
    ) -> StateFileError:
        return StateFileError(message, path=self.source, entry=self.entry, field=field, hint=hint)

    def rename(self, entry: str) -> None:
        self.entry = entry

    def get(self, field: str, kind: type[T], default: T) -> T:
        value = self.data.get(field, default)
        if value is None:
            return default
        # bool is an int in Python; a port given as `true` is a mistake, not 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"expected {kind.__name__}, got {value!r}", field=field)
        return value

    def required(self, field: str) -> str:
        value = self.get(field, str, "")
        if not value:
            raise self.error("is required", field=field)
        return value

    def convert(self, field: str, raw: object, parse: Callable[[object], T]) -> T:
        try:
            return parse(raw)
        except (ValueError, TypeError, KeyError) as err:
            raise self.error(str(err), field=field) from err

    def enum(self, field: str, kind: type[Any], default: Any, names: Mapping[str, Any]) -> Any:
        raw = self.data.get(field)
        if raw is None:
            return default
        value = names.get(str(raw).lower())
        if value is None:
            raise self.error(
                f"unknown value {raw!r}", field=field, hint=f"one of: {', '.join(sorted(names))}"
            )
        assert isinstance(value, kind)
        return value

    def items(self, field: str) -> list[Any]:
        return self.get(field, list, [])


def _parse_ip(raw: object) -> IPAddress:
    return ipaddress.ip_address(str(raw))


def _parse_network(raw: object) -> IPNetwork:
    return ipaddress.ip_network(str(raw), strict=False)


def _parse_port(raw: object, *, allow_zero: bool = False) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a port")
    port = int(str(raw))
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port


def _parse_network_address(raw: object) -> NetworkAddress:
    text = str(raw)
    network, _, address = text.rpartition("/")
    return NetworkAddress(address=ipaddress.ip_address(address), network=network)


def _parse_port_map(raw: object) -> tuple[Port, ...]:
    if not isinstance(raw, Mapping):
        raise TypeError(f"expected a mapping of service port to target port, got {raw!r}")
    return tuple(
        Port(service_port=_parse_port(k), target_port=_parse_port(v, allow_zero=True))
        for k, v in sorted(raw.items(), key=lambda kv: int(str(kv[0])))
    )


def _parse_gateway(raw: object) -> GatewayAddress:
    if isinstance(raw, str):
        raw = {"destination": raw}
    if not isinstance(raw, Mapping) or set(raw) - {"destination", "hboneMtlsPort"}:
        raise ValueError("a gateway is {destination: <ns/hostname | network/ip>, hboneMtlsPort: N}")
    dest = str(raw["destination"])
    head, _, tail = dest.rpartition("/")
    destination: NamespacedHostname | NetworkAddress
    try:
        destination = NetworkAddress(address=ipaddress.ip_address(tail), network=head)
    except ValueError:
        if not head:
            raise ValueError(
                f"gateway destination {dest!r} is neither ns/hostname nor an IP"
            ) from None
        destination = NamespacedHostname(namespace=head, hostname=tail)
    return GatewayAddress(destination, _parse_port(raw.get("hboneMtlsPort", 15008)))


def _parse_string_match(raw: object) -> StringMatch:
    if isinstance(raw, str):
        return StringMatch.from_pattern(raw)
    if isinstance(raw, Mapping) and len(raw) == 1:
        ((kind, value),) = raw.items()
        for member in StringMatchKind:
            if member.value == kind:
                return StringMatch(member, "" if member is StringMatchKind.PRESENCE else str(value))
    raise ValueError(
        f"{raw!r} is not a string match (a pattern or {{Exact|Prefix|Suffix|Presence: v}})"
    )


def _parse_service_account(raw: object) -> ServiceAccountMatch:
    if isinstance(raw, str):
        namespace, sep, name = raw.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"service account {raw!r} is not <namespace>/<name>")
        return ServiceAccountMatch(namespace, name)
    if isinstance(raw, Mapping):
        return ServiceAccountMatch(str(raw["namespace"]), str(raw["serviceAccount"]))
    raise ValueError(f"{raw!r} is not a service account match")


_MATCH_FIELDS: dict[str, tuple[str, Callable[[object], Any]]] = {}
for _attr, _parse in (
    ("namespaces", _parse_string_match),
    ("principals", _parse_string_match),
    ("source_ips", _parse_network),
    ("destination_ips", _parse_network),
    ("destination_ports", _parse_port),
    ("service_accounts", _parse_service_account),
):
    for _name in (_attr, f"not_{_attr}"):
        _head, *_rest = _name.split("_")
        _MATCH_FIELDS[_head + "".join(p.capitalize() for p in _rest)] = (_name, _parse)


def _parse_match(entry: _Entry, where: str, raw: object) -> Match:
    match = _Entry(entry.source, f"{entry.entry}: {where}", raw, frozenset(_MATCH_FIELDS))
    values: dict[str, tuple[Any, ...]] = {}
    for key, (attr, parse) in _MATCH_FIELDS.items():
        values[attr] = tuple(match.convert(key, item, parse) for item in match.items(key))
    return Match(**values)


def _parse_rules(entry: _Entry) -> tuple[Rule, ...]:
    rules = []
    for r, rule in enumerate(entry.items("rules")):
        if not isinstance(rule, list):
            raise entry.error(f"rule {r} must be a list of clauses", field="rules")
        clauses = []
        for c, clause in enumerate(rule):
            if not isinstance(clause, list):
                raise entry.error(f"rules[{r}][{c}] must be a list of matches", field="rules")
            clauses.append(
                Clause(
                    tuple(
                        _parse_match(entry, f"rules[{r}][{c}][{m}]", x)
                        for m, x in enumerate(clause)
                    )
                )
            )
        rules.append(Rule(tuple(clauses)))
    return tuple(rules)


_WORKLOAD_FIELDS = frozenset(
    [
        "uid",
        "name",
        "namespace",
        "workloadIps",
        "hostname",
        "network",
        "protocol",
        "trustDomain",
        "serviceAccount",
        "waypoint",
        "networkGateway",
        "node",
        "canonicalName",
        "canonicalRevision",
        "workloadType",
        "workloadName",
        "nativeTunnel",
        "services",
        "authorizationPolicies",
        "status",
        "clusterId",
        "locality",
        "capacity",
    ]
)
_SERVICE_FIELDS = frozenset(
    [
        "name",
        "namespace",
        "hostname",
        "vips",
        "ports",
        "subjectAltNames",
        "waypoint",
        "loadBalancer",
    ]
)
_POLICY_FIELDS = frozenset(["name", "namespace", "scope", "action", "rules", "dryRun"])


def _lower_names(kind: type[Any], **extra: Any) -> dict[str, Any]:
    names = {m.name.lower(): m for m in kind}
    names.update(extra)
    return names


def _parse_workload(source: str, index: int, raw: object) -> Workload:
    entry = _Entry(source, f"workloads[{index}]", raw, _WORKLOAD_FIELDS)
    name = entry.required("name")
    namespace = entry.required("namespace")
    entry.rename(f"workloads[{index}] ({namespace}/{name})")
    services_raw = entry.get("services", dict, {})
    services = {
        str(key): entry.convert("services", ports, _parse_port_map)
        for key, ports in services_raw.items()
    }
    for key in services:
        if "/" not in key:
            raise entry.error(
                f"service key {key!r} is not <namespace>/<hostname>", field="services"
            )
    locality = _Entry(
        source,
        entry.entry + ": locality",
        entry.get("locality", dict, {}),
        frozenset({"region", "zone", "subzone"}),
    )
    waypoint = entry.data.get("waypoint")
    gateway = entry.data.get("networkGateway")
    cluster_id = entry.get("clusterId", str, "")
    return Workload(
        uid=entry.get("uid", str, f"{cluster_id or DEFAULT_CLUSTER_ID}//Pod/{namespace}/{name}"),
        name=name,
        namespace=namespace,
        addresses=tuple(
            entry.convert("workloadIps", ip, _parse_ip) for ip in entry.items("workloadIps")
        ),
        hostname=entry.get("hostname", str, ""),
        network=entry.get("network", str, ""),
        tunnel_protocol=entry.enum(
            "protocol",
            TunnelProtocol,
            TunnelProtocol.NONE,
            {
                "hbone": TunnelProtocol.HBONE,
                "tcp": TunnelProtocol.NONE,
                "none": TunnelProtocol.NONE,
            },
        ),
        trust_domain=entry.get("trustDomain", str, ""),
        service_account=entry.get("serviceAccount", str, ""),
        waypoint=None if waypoint is None else entry.convert("waypoint", waypoint, _parse_gateway),
        network_gateway=None
        if gateway is None
        else entry.convert("networkGateway", gateway, _parse_gateway),
        node=entry.get("node", str, ""),
        canonical_name=entry.get("canonicalName", str, ""),
        canonical_revision=entry.get("canonicalRevision", str, ""),
        workload_type=entry.enum(
            "workloadType", WorkloadType, WorkloadType.POD, _lower_names(WorkloadType)
        ),
        workload_name=entry.get("workloadName", str, ""),
        native_tunnel=entry.get("nativeTunnel", bool, False),
        services=services,
        authorization_policies=tuple(str(p) for p in entry.items("authorizationPolicies")),
        status=entry.enum(
            "status", WorkloadStatus, WorkloadStatus.HEALTHY, _lower_names(WorkloadStatus)
        ),
        cluster_id=cluster_id,
        locality=Locality(
            region=locality.get("region", str, ""),
            zone=locality.get("zone", str, ""),
            subzone=locality.get("subzone", str, ""),
        ),
        capacity=entry.get("capacity", int, 1),
    )


def _parse_service(source: str, index: int, raw: object) -> Service:
    entry = _Entry(source, f"services[{index}]", raw, _SERVICE_FIELDS)
    name = entry.required("name")
    namespace = entry.required("namespace")
    hostname = entry.get("hostname", str, f"{name}.{namespace}.svc.cluster.local")
    entry.rename(f"services[{index}] ({namespace}/{hostname})")
    lb_raw = entry.data.get("loadBalancer")
    load_balancing = None
    if lb_raw is not None:
        lb = _Entry(
            source, entry.entry + ": loadBalancer", lb_raw, frozenset({"mode", "healthPolicy"})
        )
        load_balancing = LoadBalancing(
            mode=lb.enum(
                "mode",
                LoadBalancingMode,
                LoadBalancingMode.UNSPECIFIED_MODE,
                _lower_names(LoadBalancingMode),
            ),
            health_policy=lb.enum(
                "healthPolicy", HealthPolicy, HealthPolicy.ONLY_HEALTHY, _lower_names(HealthPolicy)
            ),
        )
    waypoint = entry.data.get("waypoint")
    return Service(
        name=name,
        namespace=namespace,
        hostname=hostname,
        addresses=tuple(
            entry.convert("vips", v, _parse_network_address) for v in entry.items("vips")
        ),
        ports=entry.convert("ports", entry.get("ports", dict, {}), _parse_port_map),
        subject_alt_names=tuple(str(s) for s in entry.items("subjectAltNames")),
        waypoint=None if waypoint is None else entry.convert("waypoint", waypoint, _parse_gateway),
        load_balancing=load_balancing,
    )


def _parse_policy(source: str, index: int, raw: object) -> Authorization:
    entry = _Entry(source, f"policies[{index}]", raw, _POLICY_FIELDS)
    name = entry.required("name")
    namespace = entry.required("namespace")
    entry.rename(f"policies[{index}] ({namespace}/{name})")
    scope = entry.enum(
        "scope",
        Scope,
        None,
        {
            "global": Scope.GLOBAL,
            "namespace": Scope.NAMESPACE,
            "workloadselector": Scope.WORKLOAD_SELECTOR,
        },
    )
    if scope is None:
        raise entry.error(
            "is required", field="scope", hint="Global, Namespace or WorkloadSelector"
        )
    action = entry.enum("action", Action, None, _lower_names(Action))
    if action is None:
        raise entry.error("is required", field="action", hint="Allow or Deny")
    return Authorization(
        name=name,
        namespace=namespace,
        scope=scope,
        action=action,
        rules=_parse_rules(entry),
        dry_run=entry.get("dryRun", bool, False),
    )


def _unique(source: str, kind: str, keys: list[str]) -> None:
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key in seen:
            raise StateFileError(
                f"duplicate {kind} {key!r}",
                path=source,
                entry=f"{kind}s[{index}]",
                hint=f"each {kind} key must appear once",
            )
        seen.add(key)


def parse_state(data: object, source: str = "<state>") -> LocalState:
    """Translate a parsed YAML document into domain objects; ``source`` names it in errors."""
    if data is None:
        return LocalState()
    top = _Entry(source, "", data, frozenset({"workloads", "services", "policies"}))
    workloads = tuple(_parse_workload(source, i, w) for i, w in enumerate(top.items("workloads")))
    services = tuple(_parse_service(source, i, s) for i, s in enumerate(top.items("services")))
    policies = tuple(_parse_policy(source, i, p) for i, p in enumerate(top.items("policies")))
    _unique(source, "workload", [w.uid for w in workloads])
    _unique(source, "service", [s.key for s in services])
    _unique(source, "policie", [p.key for p in policies])
    return LocalState(workloads, services, policies)


def load_state_file(path: Path) -> LocalState:
    """Read and translate the local state file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise StateFileError(
            f"cannot read: {err.strerror}", path=str(path), hint="check the --state-file path"
        ) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise StateFileError(f"not valid YAML: {err}", path=str(path), entry=where) from err
    return parse_state(data, str(path))
