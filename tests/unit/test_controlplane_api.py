"""Our .proto definitions: field numbers as in Istio's contract, and wire round-trips."""

from __future__ import annotations

from typing import Any

import pytest

from api.messages import security, workload

# The contract table (shared/reference/istio-contract.md, sections 1 and 2): the numbers
# Istio's ztunnel and istiod use. Changing one of ours breaks interoperability.
CONTRACT: dict[str, dict[str, int]] = {
    "istio.workload.Address": {"workload": 1, "service": 2},
    "istio.workload.Workload": {
        "uid": 20, "name": 1, "namespace": 2, "addresses": 3, "hostname": 21, "network": 4,
        "tunnel_protocol": 5, "trust_domain": 6, "service_account": 7, "waypoint": 8,
        "network_gateway": 19, "node": 9, "canonical_name": 10, "canonical_revision": 11,
        "workload_type": 12, "workload_name": 13, "native_tunnel": 14,
        "application_tunnel": 23, "services": 22, "authorization_policies": 16,
        "status": 17, "cluster_id": 18, "locality": 24, "network_mode": 25,
        "extensions": 26, "capacity": 27,
    },
    "istio.workload.Service": {
        "name": 1, "namespace": 2, "hostname": 3, "addresses": 4, "ports": 5,
        "subject_alt_names": 6, "waypoint": 7, "load_balancing": 8, "ip_families": 9,
        "extensions": 10, "canonical": 11, "ingress_use_waypoint": 12,
        "weighted_waypoints": 13, "visibility": 14,
    },
    "istio.workload.Port": {"service_port": 1, "target_port": 2, "app_protocol": 3},
    "istio.workload.PortList": {"ports": 1},
    "istio.workload.NetworkAddress": {"network": 1, "address": 2, "length": 3},
    "istio.workload.NamespacedHostname": {"namespace": 1, "hostname": 2},
    "istio.workload.GatewayAddress": {"hostname": 1, "address": 2, "hbone_mtls_port": 3},
    "istio.workload.ApplicationTunnel": {"protocol": 1, "port": 2},
    "istio.workload.LoadBalancing": {"routing_preference": 1, "mode": 2, "health_policy": 3},
    "istio.workload.Locality": {"region": 1, "zone": 2, "subzone": 3},
    "istio.workload.Extension": {"name": 1, "config": 2},
    "istio.workload.WeightedWaypoint": {"destination": 1, "weight": 2},
    "istio.security.Authorization": {
        "name": 1, "namespace": 2, "scope": 3, "action": 4, "rules": 5, "dry_run": 6,
        "extensions": 7,
    },
    "istio.security.Rule": {"clauses": 1},
    "istio.security.Clause": {"matches": 2},
    "istio.security.Match": {
        "namespaces": 1, "not_namespaces": 2, "principals": 3, "not_principals": 4,
        "source_ips": 5, "not_source_ips": 6, "destination_ips": 7,
        "not_destination_ips": 8, "destination_ports": 9, "not_destination_ports": 10,
        "service_accounts": 11, "not_service_accounts": 12, "extensions": 13,
    },
    "istio.security.Address": {"address": 1, "length": 2},
    "istio.security.ServiceAccountMatch": {"namespace": 1, "serviceAccount": 2},
    "istio.security.StringMatch": {"exact": 1, "prefix": 2, "suffix": 3, "presence": 4},
}  # fmt: skip

ENUMS: dict[str, dict[str, int]] = {
    "istio.workload.TunnelProtocol": {"NONE": 0, "HBONE": 1, "LEGACY_ISTIO_MTLS": 2},
    "istio.workload.WorkloadStatus": {"HEALTHY": 0, "UNHEALTHY": 1},
    "istio.workload.WorkloadType": {"DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3},
    "istio.workload.AppProtocol": {
        "UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3, "TCP": 4, "TLS": 5,
    },
    "istio.workload.IPFamilies": {"AUTOMATIC": 0, "IPV4_ONLY": 1, "IPV6_ONLY": 2, "DUAL": 3},
    "istio.workload.NetworkMode": {"STANDARD": 0, "HOST_NETWORK": 1},
    "istio.security.Scope": {"GLOBAL": 0, "NAMESPACE": 1, "WORKLOAD_SELECTOR": 2},
    "istio.security.Action": {"ALLOW": 0, "DENY": 1},
}  # fmt: skip


def _pool() -> Any:
    return workload.DESCRIPTOR.pool


@pytest.mark.parametrize("message", sorted(CONTRACT))
def test_field_numbers_match_the_contract(message: str) -> None:
    descriptor = _pool().FindMessageTypeByName(message)
    ours = {f.name: f.number for f in descriptor.fields}
    assert ours == CONTRACT[message]


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values_match_the_contract(enum: str) -> None:
    descriptor = _pool().FindEnumTypeByName(enum)
    assert {v.name: v.number for v in descriptor.values} == ENUMS[enum]


def test_workload_reserves_field_15() -> None:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    workload.Workload.DESCRIPTOR.CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(15, 16)]


def full_workload() -> Any:
    return workload.Workload(
        uid="Kubernetes//Pod/demo/backend-v1",
        name="backend-v1",
        namespace="demo",
        addresses=[bytes([10, 244, 1, 5])],
        network="n1",
        tunnel_protocol=workload.HBONE,
        trust_domain="cluster.local",
        service_account="backend",
        node="node1",
        canonical_name="backend",
        canonical_revision="v1",
        workload_type=workload.POD,
        workload_name="backend",
        services={
            "demo/backend.demo.svc.cluster.local": workload.PortList(
                ports=[workload.Port(service_port=80, target_port=8080)]
            )
        },
        authorization_policies=["demo/allow"],
        status=workload.UNHEALTHY,
        cluster_id="Kubernetes",
        waypoint=workload.GatewayAddress(
            hostname=workload.NamespacedHostname(namespace="demo", hostname="wp"),
            hbone_mtls_port=15008,
        ),
    )


def test_address_round_trip() -> None:
    svc = workload.Service(
        name="backend",
        namespace="demo",
        hostname="backend.demo.svc.cluster.local",
        addresses=[workload.NetworkAddress(address=bytes([10, 96, 0, 10]))],
        ports=[workload.Port(service_port=80, target_port=0, app_protocol=workload.HTTP11)],
    )
    for msg in (workload.Address(workload=full_workload()), workload.Address(service=svc)):
        data = msg.SerializeToString(deterministic=True)
        back = workload.Address.FromString(data)
        assert back == msg
        assert back.SerializeToString(deterministic=True) == data


def test_authorization_round_trip() -> None:
    msg = security.Authorization(
        name="allow",
        namespace="demo",
        scope=security.WORKLOAD_SELECTOR,
        action=security.DENY,
        rules=[
            security.Rule(
                clauses=[
                    security.Clause(
                        matches=[
                            security.Match(
                                principals=[security.StringMatch(prefix="cluster.local/")],
                                not_namespaces=[security.StringMatch(presence={})],
                                source_ips=[security.Address(address=b"\n\0\0\0", length=8)],
                                destination_ports=[8080],
                                service_accounts=[
                                    security.ServiceAccountMatch(
                                        namespace="demo", serviceAccount="fe"
                                    )
                                ],
                            )
                        ]
                    )
                ]
            )
        ],
    )
    back = security.Authorization.FromString(msg.SerializeToString())
    assert back == msg
    assert back.rules[0].clauses[0].matches[0].not_namespaces[0].WhichOneof("match_type") == (
        "presence"
    )


def test_hand_encoded_bytes_decode_as_istio_sends_them() -> None:
    # Workload.uid is field 20 (tag 20<<3|2 = 0xa2 0x01), name field 1, addresses field 3.
    raw = b"\xa2\x01\x03u-1" + b"\x0a\x01a" + b"\x1a\x04\x0a\xf4\x01\x05" + b"\x28\x01"
    w = workload.Workload.FromString(raw)
    assert (w.uid, w.name, list(w.addresses), w.tunnel_protocol) == (
        "u-1",
        "a",
        [bytes([10, 244, 1, 5])],
        workload.HBONE,
    )
    # Clause.matches is field 2 (not 1): istiod's Rules.matches has the same number.
    clause = security.Clause.FromString(b"\x12\x02\x48\x50")
    assert list(clause.matches[0].destination_ports) == [80]
