"""The xDS edge: workload-API messages (as the control plane builds them) to ztunnel's types."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from api.messages import security, workload
from controlplane.sources import FolderSource
from controlplane.workloadapi import translate
from ztunnel.errors import XdsResourceError
from ztunnel.identity.spiffe import SpiffeId
from ztunnel.proxy.hbone import Authority, TunnelRequest
from ztunnel.proxy.inbound import Admit, Refuse, decide_hbone, decide_plaintext
from ztunnel.state.proxy_state import LoadBalancer, Upstream
from ztunnel.state.security import Action, Scope, StringMatch, StringMatchKind
from ztunnel.state.workload import NamespacedHostname, TunnelProtocol, WorkloadStatus
from ztunnel.xds.translate import (
    authorization_from_proto,
    service_from_proto,
    state_from_snapshot,
    workload_from_proto,
)

CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-v1, namespace: demo, labels: {app: backend}}
spec:
  nodeName: node2
  serviceAccountName: backend
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.2.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: demo, labels: {app: frontend}}
spec: {nodeName: node1, serviceAccountName: frontend}
status: {podIP: 10.244.1.7, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: demo, labels: {app: stranger}}
spec: {nodeName: node1, serviceAccountName: stranger}
status: {podIP: 10.244.1.8, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-from-frontend, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/frontend]}}]
    to: [{operation: {ports: ["8080"]}}]
"""


def test_control_plane_snapshot_becomes_a_working_proxy_state(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(textwrap.dedent(CLUSTER))
    cluster = FolderSource(tmp_path).load()
    assert not cluster.errors, cluster.errors
    snapshot = translate(cluster)
    state = state_from_snapshot(snapshot.addresses, snapshot.authorizations)

    backend = state.workload_by_ip("10.244.2.5")
    assert backend is not None and backend.tunnel_protocol is TunnelProtocol.HBONE
    assert backend.identity == SpiffeId("cluster.local", "demo", "backend")
    assert backend.node == "node2" and backend.status is WorkloadStatus.HEALTHY
    picked = state.resolve("10.96.0.10", 80, LoadBalancer())
    assert isinstance(picked, Upstream) and (str(picked.address), picked.port) == (
        "10.244.2.5",
        8080,
    )

    def hbone(peer: str, port: int = 8080) -> Admit | Refuse:
        request = TunnelRequest(Authority("10.244.2.5", port), forwarded_for="10.244.1.7:5555")
        return decide_hbone(
            state,
            request,
            peer_identity=SpiffeId("cluster.local", "demo", peer),
            peer_ip=ipaddress.ip_address("172.30.0.1"),
            node="node2",
        )

    assert isinstance(hbone("frontend"), Admit)
    denied = hbone("stranger")
    assert isinstance(denied, Refuse) and denied.status == 401
    assert isinstance(hbone("frontend", 9090), Refuse)
    plaintext = decide_plaintext(
        state,
        source_ip=ipaddress.ip_address("172.30.0.9"),
        destination_ip=ipaddress.ip_address("10.244.2.5"),
        destination_port=8080,
        node="node2",
    )
    assert isinstance(plaintext, Refuse) and "istio_converted_static_strict" in plaintext.reason


def test_messages_translate_field_by_field() -> None:
    msg = workload.Workload(
        uid="Kubernetes//Pod/demo/a",
        name="a",
        namespace="demo",
        addresses=[ipaddress.ip_address("10.0.0.1").packed],
        tunnel_protocol=1,
        service_account="sa",
        node="n1",
        status=1,
        authorization_policies=["demo/p"],
    )
    msg.services["demo/s.demo.svc.cluster.local"].ports.add(service_port=80, target_port=8080)
    msg.waypoint.hostname.namespace = "demo"
    msg.waypoint.hostname.hostname = "wp.demo.svc.cluster.local"
    msg.waypoint.hbone_mtls_port = 15008
    msg.capacity.value = 3
    w = workload_from_proto(msg)
    assert [str(a) for a in w.addresses] == ["10.0.0.1"]
    assert w.status is WorkloadStatus.UNHEALTHY and w.capacity == 3
    assert w.target_port("demo/s.demo.svc.cluster.local", 80) == 8080
    assert w.waypoint is not None
    assert w.waypoint.destination == NamespacedHostname("demo", "wp.demo.svc.cluster.local")

    svc = workload.Service(name="s", namespace="demo", hostname="s.demo.svc.cluster.local")
    svc.addresses.add(network="", address=ipaddress.ip_address("10.96.0.1").packed)
    svc.ports.add(service_port=80, target_port=8080)
    s = service_from_proto(svc)
    assert s.key == "demo/s.demo.svc.cluster.local" and s.port(80) is not None

    pol = security.Authorization(name="p", namespace="demo", scope=2, action=1)
    match = pol.rules.add().clauses.add().matches.add()
    match.not_principals.add().presence.SetInParent()
    match.principals.add(prefix="cluster.local/ns/demo/")
    match.source_ips.add(address=ipaddress.ip_address("10.244.0.0").packed, length=16)
    match.service_accounts.add(namespace="demo", serviceAccount="x")
    match.destination_ports.append(8080)
    a = authorization_from_proto(pol)
    assert (a.scope, a.action) == (Scope.WORKLOAD_SELECTOR, Action.DENY)
    m = a.rules[0].clauses[0].matches[0]
    assert m.not_principals == (StringMatch(StringMatchKind.PRESENCE),)
    assert m.principals == (StringMatch(StringMatchKind.PREFIX, "cluster.local/ns/demo/"),)
    assert m.source_ips == (ipaddress.ip_network("10.244.0.0/16"),)
    assert m.destination_ports == (8080,) and m.service_accounts[0].service_account == "x"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: workload.Workload(uid="u", tunnel_protocol=2), "tunnel_protocol"),
        (lambda: workload.Workload(uid="u", addresses=[b"\x01\x02"]), "addresses"),
        (lambda: workload.Workload(name="no-uid", namespace="demo"), "uid"),
        (lambda: workload.Workload(uid="u", workload_type=9), "workload_type"),
    ],
)
def test_unusable_messages_name_resource_and_field(build, field: str) -> None:
    with pytest.raises(XdsResourceError) as info:
        workload_from_proto(build())
    assert info.value.field == field and info.value.resource
