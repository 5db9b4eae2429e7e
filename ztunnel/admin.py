"""Admin, metrics and readiness endpoints: ``/config_dump`` and friends.

:func:`config_dump` is pure (state, certificates and config in; the JSON object
``istioctl ztunnel-config`` reads out, camelCase keys). :func:`serve_http` is a
deliberately small HTTP/1.1 server for these local endpoints (one request per
connection, bounded request size), so ztunnel needs no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from ztunnel.state.proxy_state import ProxyState
from ztunnel.state.security import (
    Authorization,
    Match,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel.state.workload import (
    GatewayAddress,
    NamespacedHostname,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)

MAX_REQUEST = 16 * 1024


def _gateway(gateway: GatewayAddress | None) -> dict[str, Any] | None:
    if gateway is None:
        return None
    dest = gateway.destination
    destination = (
        f"{dest.namespace}/{dest.hostname}" if isinstance(dest, NamespacedHostname) else str(dest)
    )
    return {"destination": destination, "hboneMtlsPort": gateway.hbone_mtls_port}


def workload_json(workload: Workload) -> dict[str, Any]:
    """One workload as ``/config_dump`` shows it."""
    return {
        "uid": workload.uid,
        "workloadIps": [str(a) for a in workload.addresses],
        "waypoint": _gateway(workload.waypoint),
        "networkGateway": _gateway(workload.network_gateway),
        "protocol": "HBONE" if workload.tunnel_protocol is TunnelProtocol.HBONE else "TCP",
        "networkMode": "Standard",
        "name": workload.name,
        "namespace": workload.namespace,
        "trustDomain": workload.identity.trust_domain,
        "serviceAccount": workload.identity.service_account,
        "network": workload.network,
        "workloadName": workload.workload_name,
        "workloadType": workload.workload_type.name.lower(),
        "canonicalName": workload.canonical_name,
        "canonicalRevision": workload.canonical_revision,
        "hostname": workload.hostname,
        "node": workload.node,
        "nativeTunnel": workload.native_tunnel,
        "authorizationPolicies": list(workload.authorization_policies),
        "status": "Healthy" if workload.status is WorkloadStatus.HEALTHY else "Unhealthy",
        "clusterId": workload.cluster_id,
        "locality": {
            "region": workload.locality.region,
            "zone": workload.locality.zone,
            "subzone": workload.locality.subzone,
        },
        "services": {
            key: {str(p.service_port): p.target_port for p in ports}
            for key, ports in sorted(workload.services.items())
        },
        "capacity": workload.capacity,
    }


def service_json(service: Service, state: ProxyState) -> dict[str, Any]:
    """One service, with its endpoints, as ``/config_dump`` shows it."""
    endpoints = {}
    for workload in state.endpoints(service):
        endpoints[workload.uid] = {
            "workloadUid": workload.uid,
            "port": {
                str(p.service_port): state.target_port(service, workload, p.service_port)
                for p in service.ports
            },
            "status": "Healthy" if workload.status is WorkloadStatus.HEALTHY else "Unhealthy",
        }
    return {
        "name": service.name,
        "namespace": service.namespace,
        "hostname": service.hostname,
        "vips": [str(a) for a in service.addresses],
        "ports": {str(p.service_port): p.target_port for p in service.ports},
        "endpoints": endpoints,
        "subjectAltNames": list(service.subject_alt_names),
        "waypoint": _gateway(service.waypoint),
        "loadBalancer": None
        if service.load_balancing is None
        else {
            "mode": service.load_balancing.mode.name.title().replace("_", ""),
            "healthPolicy": service.load_balancing.health_policy.name.title().replace("_", ""),
        },
    }


def _string_match(match: StringMatch) -> dict[str, Any]:
    if match.kind is StringMatchKind.PRESENCE:
        return {"Presence": []}
    return {match.kind.value: match.value}


def _sa(match: ServiceAccountMatch) -> dict[str, str]:
    return {"namespace": match.namespace, "serviceAccount": match.service_account}


def match_json(match: Match) -> dict[str, Any]:
    """One match in ``/config_dump`` form (empty lists left out, as Istio does)."""
    out: dict[str, Any] = {}
    for name, value in vars(match).items():
        if not value:
            continue
        head, *rest = name.split("_")
        key = head + "".join(p.capitalize() for p in rest)
        items: list[Any] = []
        for item in value:
            if isinstance(item, StringMatch):
                items.append(_string_match(item))
            elif isinstance(item, ServiceAccountMatch):
                items.append(_sa(item))
            elif isinstance(item, int):
                items.append(item)
            else:
                items.append(str(item))
        out[key] = items
    return out


def policy_json(policy: Authorization) -> dict[str, Any]:
    """One policy as ``/config_dump`` shows it: rules as Rule -> Clause -> Match lists."""
    return {
        "name": policy.name,
        "namespace": policy.namespace,
        "scope": {"GLOBAL": "Global", "NAMESPACE": "Namespace"}.get(
            policy.scope.name, "WorkloadSelector"
        ),
        "action": policy.action.name.title(),
        "rules": [
            [[match_json(m) for m in clause.matches] for clause in rule.clauses]
            for rule in policy.rules
        ],
        "dryRun": policy.dry_run,
    }


def config_dump(
    state: ProxyState,
    certificates: list[dict[str, object]],
    config: Mapping[str, object],
) -> dict[str, Any]:
    """The whole ``/config_dump`` object."""
    return {
        "workloads": [
            workload_json(w) for w in sorted(state.workloads.values(), key=lambda w: w.uid)
        ],
        "services": [
            service_json(s, state) for s in sorted(state.services.values(), key=lambda s: s.key)
        ],
        "policies": [policy_json(p) for p in sorted(state.policies.values(), key=lambda p: p.key)],
        "certificates": certificates,
        "config": dict(config),
    }


# --- a tiny HTTP/1.1 server -----------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP request to a local endpoint."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Response:
    """What to answer."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        """A pretty JSON response."""
        return cls(status, json.dumps(value, indent=2).encode() + b"\n", "application/json")


Handler = Callable[[Request], Awaitable[Response]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def parse_request(head: bytes) -> Request:
    """Parse a request head (request line and headers); raise ``ValueError`` if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {lines[0]!r}")
    method, target, _ = parts
    url = urllib.parse.urlsplit(target)
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            headers[name.strip().lower()] = value.strip()
    return Request(
        method, url.path, urllib.parse.parse_qs(url.query, keep_blank_values=True), headers
    )


def serve_http(
    handler: Handler,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
    """A connection callback for :func:`asyncio.start_server` answering one request."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if len(head) > MAX_REQUEST:
                raise ValueError("request head too large")
            response = await handler(parse_request(head[:-4]))
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            response = Response(400, b"bad request\n")
        reason = _REASONS.get(response.status, "Status")
        head_out = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head_out.encode() + response.body)
            await writer.drain()
        writer.close()

    return on_connection
