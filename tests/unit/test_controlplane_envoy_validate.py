"""Envoy itself validates the translated resources (``envoy --mode validate``).

One VirtualService and one DestinationRule using every translated field, for a
service with two ports, become a static bootstrap (STATIC clusters with a placeholder
endpoint in place of EDS). Each run takes about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.envoy import translate_waypoint
from controlplane.envoy.bootstrap import static_bootstrap
from controlplane.model import (
    ClusterState,
    DestinationRule,
    FrozenMap,
    Service,
    ServicePort,
    Severity,
    VirtualService,
    deep_freeze,
)
from tests.envoy_validate import envoy_validate as envoy_validate  # noqa: PLC0414 - re-exported

VIRTUAL_SERVICE = """
hosts: [backend, backend.demo.svc.cluster.local]
gateways: [mesh]
http:
- name: jason
  match:
  - headers:
      end-user: {exact: jason}
      x-tier: {prefix: gold}
      x-id: {regex: '[0-9]+'}
      x-present: {}
    uri: {prefix: /api}
    method: {exact: GET}
    authority: {exact: backend}
    queryParams: {debug: {regex: '1|true'}, trace: {}}
    withoutHeaders: {x-debug: {}, x-env: {exact: dev}}
    ignoreUriCase: true
    port: 80
  - uri: {regex: '/v2/.*'}
  route:
  - destination: {host: backend, subset: v2}
  fault:
    abort: {httpStatus: 500, percentage: {value: 50}}
    delay: {fixedDelay: 250ms, percentage: {value: 1.5}}
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: '5xx,gateway-error,503'}
  timeout: 10s
  headers:
    request: {set: {x-a: '1'}, add: {x-b: '2'}, remove: [x-c]}
    response: {set: {x-d: '3'}, remove: [server]}
  mirror: {host: ratings.other, port: {number: 9080}}
  mirrorPercentage: {value: 12.5}
  rewrite: {uri: /v2, authority: backend.example}
  corsPolicy:
    allowOrigins: [{exact: 'https://a.example'}, {prefix: 'https://b.'}]
    allowMethods: [GET, POST]
    allowHeaders: [x-a]
    exposeHeaders: [x-b]
    maxAge: 1h
    allowCredentials: false
- match: [{uri: {exact: /old}}]
  redirect: {uri: /new, authority: new.example, port: 8443, scheme: https, redirectCode: 308}
- match: [{headers: {content-type: {prefix: application/grpc}}}]
  fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}}
  route: [{destination: {host: backend, subset: v2}}]
- match: [{uri: {exact: /down}}]
  directResponse: {status: 503, body: {string: maintenance}}
- match: [{uri: {prefix: /re/}}]
  uriRegexRewrite: {match: '^/re/(.*)$', rewrite: '/\\1'}
  route: [{destination: {host: backend, subset: v1}}]
- route:
  - destination: {host: backend, subset: v1}
    weight: 80
    headers: {response: {add: {x-version: v1}}}
  - destination: {host: backend, subset: v2}
    weight: 20
    headers: {request: {set: {x-canary: 'yes'}}, response: {remove: [x-internal]}}
  - destination: {host: ratings.other}
    weight: 0
  mirrors: [{destination: {host: backend, subset: v1}, percentage: {value: 5}}]
tcp:
- match: [{port: 8080}]
  route:
  - {destination: {host: backend, subset: v1}, weight: 70}
  - {destination: {host: backend, subset: v2}, weight: 30}
"""

DESTINATION_RULE = """
host: backend
trafficPolicy:
  loadBalancer:
    consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}, minimumRingSize: 1024}
  connectionPool:
    tcp: {maxConnections: 10, connectTimeout: 3s}
    http: {http1MaxPendingRequests: 1, http2MaxRequests: 1, maxRequestsPerConnection: 5,
           maxRetries: 2, idleTimeout: 30s}
  outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 5s,
                     baseEjectionTime: 30s, maxEjectionPercent: 50}
  portLevelSettings:
  - port: {number: 8080}
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {http: {http2MaxRequests: 100}}
  tls: {mode: ISTIO_MUTUAL}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
- name: v2
  labels: {version: v2}
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
"""


def _service(name: str, ns: str, ports: tuple[int, ...], vip: str) -> Service:
    return Service(
        ns,
        name,
        selector=FrozenMap({"app": name}),
        cluster_ips=(vip,),
        ports=tuple(ServicePort(p, 8080, f"http-{p}") for p in ports),
    )


def _bootstrap() -> dict[str, Any]:
    backend = _service("backend", "demo", (80, 8080), "fd00::10")
    ratings = _service("ratings", "other", (9080,), "10.96.0.11")
    vs, dr = yaml.safe_load(VIRTUAL_SERVICE), yaml.safe_load(DESTINATION_RULE)
    state = ClusterState(
        services={backend.key: backend, ratings.key: ratings},
        virtual_services={
            ("demo", "backend"): VirtualService(
                "demo", "backend", tuple(vs["hosts"]), tuple(vs["gateways"]), deep_freeze(vs)
            )
        },
        destination_rules={
            ("demo", "backend"): DestinationRule(
                "demo", "backend", "backend", ("v1", "v2"), deep_freeze(dr)
            )
        },
    )
    resources = translate_waypoint(state, [backend, ratings])
    assert not [i for i in resources.issues if i.severity is Severity.ERROR], resources.issues
    assert len(resources.routes) == 3
    assert len(resources.tcp_proxies) == 3
    assert len(resources.clusters) == 7
    return static_bootstrap(resources)


@pytest.mark.timeout(120)
def test_envoy_accepts_every_translated_field(tmp_path: Path) -> None:
    done = envoy_validate(_bootstrap(), tmp_path / "waypoint.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


@pytest.mark.timeout(120)
def test_envoy_validation_can_fail(tmp_path: Path) -> None:
    """The check above is a real one: a regex RE2 refuses (lookahead) fails validation."""
    config = _bootstrap()
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["match"] = {"safe_regex": {"regex": "/(?!admin)"}}
    done = envoy_validate(config, tmp_path / "broken.json")
    assert done.returncode != 0
