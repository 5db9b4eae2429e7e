"""/config_dump shape (camelCase, as istioctl ztunnel-config reads it) and the tiny HTTP parser."""

from __future__ import annotations

import json

import pytest
import yaml

from ztunnel.admin import config_dump, parse_request
from ztunnel.state.local_file import parse_state

STATE = """
workloads:
- {name: backend-1, namespace: demo, serviceAccount: backend, workloadIps: [10.244.2.5],
   protocol: HBONE, node: node2, workloadType: deployment, workloadName: backend,
   services: {demo/backend.demo.svc.cluster.local: {80: 9090}},
   authorizationPolicies: [istio-system/istio_converted_static_strict]}
services:
- {name: backend, namespace: demo, vips: [/10.96.0.10], ports: {80: 8080},
   waypoint: {destination: demo/waypoint.demo.svc.cluster.local}}
policies:
- name: istio_converted_static_strict
  namespace: istio-system
  scope: WorkloadSelector
  action: Deny
  rules: [[[{notPrincipals: ["*"], destinationPorts: [8080]}]]]
- name: allow
  namespace: demo
  scope: Namespace
  action: Allow
  rules: [[[{principals: ["cluster.local/ns/demo/*"], serviceAccounts: [demo/frontend]}]]]
"""


def test_config_dump_has_istio_keys_and_values() -> None:
    state = parse_state(yaml.safe_load(STATE)).to_proxy_state()
    certs: list[dict[str, object]] = [
        {
            "identity": "spiffe://cluster.local/ns/demo/sa/backend",
            "state": "Available",
            "certChain": [],
        }
    ]
    dump = json.loads(json.dumps(config_dump(state, certs, {"nodeName": "node2"})))
    assert set(dump) == {"workloads", "services", "policies", "certificates", "config"}
    (workload,) = dump["workloads"]
    assert workload["uid"] == "Kubernetes//Pod/demo/backend-1"
    assert workload["workloadIps"] == ["10.244.2.5"]
    assert workload["protocol"] == "HBONE" and workload["status"] == "Healthy"
    assert workload["trustDomain"] == "cluster.local" and workload["serviceAccount"] == "backend"
    assert workload["workloadType"] == "deployment"
    assert workload["services"] == {"demo/backend.demo.svc.cluster.local": {"80": 9090}}
    assert workload["authorizationPolicies"] == ["istio-system/istio_converted_static_strict"]
    (service,) = dump["services"]
    assert service["vips"] == ["/10.96.0.10"] and service["ports"] == {"80": 8080}
    assert service["endpoints"] == {
        "Kubernetes//Pod/demo/backend-1": {
            "workloadUid": "Kubernetes//Pod/demo/backend-1",
            "port": {"80": 9090},
            "status": "Healthy",
        }
    }
    assert service["waypoint"] == {
        "destination": "demo/waypoint.demo.svc.cluster.local",
        "hboneMtlsPort": 15008,
    }
    allow, strict = dump["policies"]
    assert strict["scope"] == "WorkloadSelector" and strict["action"] == "Deny"
    assert strict["rules"] == [
        [[{"notPrincipals": [{"Presence": []}], "destinationPorts": [8080]}]]
    ]
    assert allow["scope"] == "Namespace" and allow["action"] == "Allow"
    assert allow["rules"][0][0][0] == {
        "principals": [{"Prefix": "cluster.local/ns/demo/"}],
        "serviceAccounts": [{"namespace": "demo", "serviceAccount": "frontend"}],
    }
    assert dump["certificates"] == certs


def test_config_dump_round_trips_through_the_state_loader() -> None:
    # The dump's policies are valid local-state policies again (same shape both ways).
    state = parse_state(yaml.safe_load(STATE)).to_proxy_state()
    policies = config_dump(state, [], {})["policies"]
    again = parse_state({"policies": policies}).to_proxy_state()
    assert again.policies == state.policies


def test_parse_request() -> None:
    request = parse_request(
        b"POST /logging?level=debug&reset HTTP/1.1\r\nHost: x\r\nAccept: text/plain"
    )
    assert (request.method, request.path) == ("POST", "/logging")
    assert request.query == {"level": ["debug"], "reset": [""]}
    assert request.headers == {"host": "x", "accept": "text/plain"}
    for bad in (b"GET /", b"GET / SPDY/3", b"GET / HTTP/1.1\r\nno-colon"):
        with pytest.raises(ValueError):
            parse_request(bad)
