"""Envoy's xDS from the control plane, without sockets: the SotW and delta cores on Envoy's
types (ACK, NACK, stale nonces, ordering), who a proxy is, and what SDS gives it."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from api.xds import (
    DeltaRequest,
    DiscoveryRequest,
    DiscoveryResponse,
    Resource,
    decode_discovery_request,
    decode_discovery_response,
    encode_discovery_request,
    encode_discovery_response,
)
from controlplane.ca.authority import CertificateAuthority
from controlplane.ca.proxycerts import ProxyCertificates
from controlplane.envoy.proxy import EnvoyProxy, EnvoyResources
from controlplane.errors import ImpersonationDenied
from controlplane.model import ClusterState, Pod
from controlplane.workloadapi.mesh import MeshConfig
from controlplane.xds.core import ServerSnapshot, StreamCore
from controlplane.xds.envoy import (
    EnvoyNodeError,
    EnvoyServing,
    proxy_from_node,
    with_empty_assignments,
)
from controlplane.xds.envoytypes import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from controlplane.xds.metrics import Histogram
from controlplane.xds.sotw import SotwStreamCore
from ztunnel.identity.certs import certificate_identity
from ztunnel.identity.spiffe import SpiffeId

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
META = {
    "NAMESPACE": "demo",
    "SERVICE_ACCOUNT": "wp",
    "GATEWAY_NAME": "wp",
    "PROXY_KIND": "waypoint",
    "INSTANCE_IPS": "10.244.1.9,fd00::9",
}
NODE_ID = "waypoint~10.244.1.9~wp.demo~demo.svc.cluster.local"


def listener(name: str, port: int = 15008) -> Any:
    out = listener_pb2.Listener(name=name)
    out.address.socket_address.address = "10.244.1.9"
    out.address.socket_address.port_value = port
    return out


def cluster(name: str, timeout: int = 10) -> Any:
    out = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    out.eds_cluster_config.eds_config.ads.SetInParent()
    out.connect_timeout.seconds = timeout
    return out


def assignment(name: str, port: int = 5678) -> Any:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    address = out.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    address.address, address.port_value = "10.244.2.11", port
    return out


def route(name: str, weight: int = 80) -> Any:
    out = route_pb2.RouteConfiguration(name=name)
    r = out.virtual_hosts.add(name="backend", domains=["backend"]).routes.add()
    r.match.prefix = "/"
    r.route.weighted_clusters.clusters.add(name="v1").weight.value = weight
    r.route.weighted_clusters.clusters.add(name="v2").weight.value = 100 - weight
    return out


def snap(
    *, listeners: int = 15008, weight: int = 80, timeout: int = 10, extra: bool = False
) -> ServerSnapshot:
    clusters = {"a": cluster("a", timeout), "b": cluster("b")}
    endpoints = {"a": assignment("a"), "b": assignment("b")}
    if extra:
        clusters["c"], endpoints["c"] = cluster("c"), assignment("c")
    return ServerSnapshot.build(
        {
            LISTENER: {"main": listener("main", listeners)},
            ROUTE: {"r": route("r", weight)},
            CLUSTER: clusters,
            ENDPOINT: endpoints,
        }
    )


def sotw(core: SotwStreamCore, s: ServerSnapshot, type_url: str, *names: str, nonce: str = "",
         error: str | None = None) -> list[DiscoveryResponse]:  # fmt: skip
    return core.receive(
        DiscoveryRequest(type_url, node_id=NODE_ID, node_metadata=META,
                         resource_names=names, response_nonce=nonce, error=error),
        s,
        1.0,
    )  # fmt: skip


# --- state of the world -------------------------------------------------------------


def test_sotw_first_requests_answered_acks_are_quiet() -> None:
    core, s = SotwStreamCore("s1"), snap()
    (cds,) = sotw(core, s, CLUSTER)
    assert len(cds.resources) == 2 and cds.version_info == s.versions[CLUSTER]
    assert core.node_id == NODE_ID and core.node_metadata["PROXY_KIND"] == "waypoint"
    assert sotw(core, s, CLUSTER, nonce=cds.nonce) == []
    (eds,) = sotw(core, s, ENDPOINT, "a", "b")
    assert len(eds.resources) == 2
    assert sotw(core, s, ENDPOINT, "a", "b", nonce=eds.nonce) == []
    state = core.types[CLUSTER]
    assert state.acks == 1 and state.acked_version == s.versions[CLUSTER]
    assert core.update(s) == []


def test_sotw_wildcard_types_carry_everything_named_types_only_changes() -> None:
    core, s = SotwStreamCore("s1"), snap()
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a", "b"))):
        (first,) = sotw(core, s, type_url, *names)
        sotw(core, s, type_url, *names, nonce=first.nonce)
    changed = snap(timeout=3)  # cluster a changes; endpoints do not
    cds, eds_a = core.update(changed)
    assert cds.type_url == CLUSTER and len(cds.resources) == 2  # all clusters, always
    assert [_name(ENDPOINT, r.value) for r in eds_a.resources] == ["a"]  # a warms on it
    more = snap(timeout=3, extra=True)
    sotw(core, changed, CLUSTER, nonce=cds.nonce)
    sotw(core, changed, ENDPOINT, "a", "b", nonce=eds_a.nonce)
    (cds2,) = core.update(more)  # c is not subscribed yet: Envoy asks for it
    assert len(cds2.resources) == 3
    # Envoy asks for the new cluster's endpoints: the grown subscription gets all it names.
    (eds,) = sotw(core, more, ENDPOINT, "a", "b", "c", nonce=core.types[ENDPOINT].last_nonce)
    assert len(eds.resources) == 3
    sotw(core, more, ENDPOINT, "a", "b", "c", nonce=eds.nonce)
    moved = ServerSnapshot.build(
        {
            **{t: {n: _msg(t, r) for n, r in more.of(t).items()} for t in (CLUSTER, ENDPOINT)},
        }
    )
    assert core.update(moved) == []  # same bytes, same versions: nothing to send


def _msg(type_url: str, resource: Resource) -> Any:
    cls = {CLUSTER: cluster_pb2.Cluster, ENDPOINT: endpoint_pb2.ClusterLoadAssignment}[type_url]
    return cls.FromString(resource.value)


def test_sotw_nack_is_recorded_and_the_next_change_resends() -> None:
    core, s = SotwStreamCore("s1"), snap()
    (lds,) = sotw(core, s, LISTENER)
    sotw(core, s, LISTENER, nonce=lds.nonce)
    bad = snap(listeners=80)
    (push,) = core.update(bad)
    assert sotw(core, bad, LISTENER, nonce=push.nonce, error="cannot bind") == []
    state = core.types[LISTENER]
    assert state.nacks == 1 and state.last_nack is not None
    assert (
        state.last_nack.error == "cannot bind" and state.last_nack.version == bad.versions[LISTENER]
    )
    assert state.acked_version == s.versions[LISTENER]  # the client kept the last good one
    assert core.update(bad) == []  # no resend loop
    (fixed,) = core.update(snap(listeners=15009))
    assert len(fixed.resources) == 1
    assert core.status()["types"][LISTENER]["lastNack"]["error"] == "cannot bind"  # type: ignore[index]


def test_sotw_stale_nonce_changes_nothing() -> None:
    core, s = SotwStreamCore("s1"), snap()
    (rds,) = sotw(core, s, ROUTE, "r")
    (newer,) = core.update(snap(weight=50))
    assert sotw(core, s, ROUTE, "r", "x", nonce=rds.nonce, error="old") == []
    state = core.types[ROUTE]
    assert state.nacks == 0 and state.names == frozenset({"r"})
    sotw(core, s, ROUTE, "r", nonce=newer.nonce)
    assert state.acks == 1


def test_sotw_pushes_in_ads_order() -> None:
    core, s = SotwStreamCore("s1"), snap()
    for type_url, names in ((ROUTE, ("r",)), (LISTENER, ()), (ENDPOINT, ("a", "b")), (CLUSTER, ())):
        (first,) = sotw(core, s, type_url, *names)
        sotw(core, s, type_url, *names, nonce=first.nonce)
    everything = ServerSnapshot.build(
        {
            LISTENER: {"main": listener("main", 1)},
            ROUTE: {"r": route("r", 1)},
            CLUSTER: {"a": cluster("a", 1), "b": cluster("b")},
            ENDPOINT: {"a": assignment("a", 1), "b": assignment("b")},
        }
    )
    assert [r.type_url for r in core.update(everything)] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def test_sotw_wire_round_trip() -> None:
    request = DiscoveryRequest(ROUTE, "v1", NODE_ID, META, ("r",), "n1", "bad route")
    assert decode_discovery_request(encode_discovery_request(request)) == request
    response = DiscoveryResponse(ROUTE, "n2", "v2", (Resource("", "", b"\x0a\x01r"),))
    assert decode_discovery_response(encode_discovery_response(response)) == response


# --- delta, on Envoy's types -----------------------------------------------------------


def test_delta_envoy_pushes_in_ads_order_and_nack_resends_on_change() -> None:
    core, s = StreamCore("s1"), snap()
    for type_url, names in ((LISTENER, ()), (ROUTE, ("r",)), (CLUSTER, ()), (ENDPOINT, ("a",))):
        (first,) = core.receive(DeltaRequest(type_url, subscribe=names), s, 0.0)
        core.receive(DeltaRequest(type_url, response_nonce=first.nonce), s, 0.0)
    changed = snap(listeners=1, weight=1, timeout=1, extra=True)
    pushes = core.update(changed)
    assert [p.type_url for p in pushes] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    cds, eds = pushes[:2]
    assert {r.name for r in cds.resources} == {"a", "c"}
    assert [r.name for r in eds.resources] == ["a"]  # unchanged, but cluster a warms on it
    core.receive(DeltaRequest(CLUSTER, response_nonce=cds.nonce, error="bad cluster c"), s, 0.0)
    assert core.types[CLUSTER].nacks == 1
    (again,) = [p for p in core.update(snap(listeners=1, weight=1, timeout=2, extra=True))
                if p.type_url == CLUSTER]  # fmt: skip
    assert {r.name for r in again.resources} == {"a", "c"}  # what was rejected goes again


def test_delta_cluster_change_sends_its_unchanged_assignment_again() -> None:
    core, s = StreamCore("s1"), snap()
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a", "b"))):
        (first,) = core.receive(DeltaRequest(type_url, subscribe=names), s, 0.0)
        core.receive(DeltaRequest(type_url, response_nonce=first.nonce), s, 0.0)
    changed = snap(timeout=3)  # a DestinationRule edit: cluster a changes, endpoints do not
    cds, eds = core.update(changed)
    assert [r.name for r in cds.resources] == ["a"]
    assert eds.type_url == ENDPOINT and [r.name for r in eds.resources] == ["a"]
    assert eds.resources[0].version == s.of(ENDPOINT)["a"].version  # the same assignment
    core.receive(DeltaRequest(CLUSTER, response_nonce=cds.nonce), changed, 0.0)
    core.receive(DeltaRequest(ENDPOINT, response_nonce=eds.nonce), changed, 0.0)
    assert core.update(changed) == [] and core.assignments_due == set()  # once, no loop


def test_delta_reconnect_sends_the_assignment_of_a_cluster_changed_meanwhile() -> None:
    old, new = snap(), snap(timeout=3)
    held = {t: {n: r.version for n, r in old.of(t).items()} for t in (CLUSTER, ENDPOINT)}
    core = StreamCore("s2")
    (cds,) = core.receive(DeltaRequest(CLUSTER, initial_versions=held[CLUSTER]), new, 0.0)
    assert [r.name for r in cds.resources] == ["a"]
    (eds,) = core.receive(
        DeltaRequest(ENDPOINT, subscribe=("a", "b"), initial_versions=held[ENDPOINT]), new, 0.0
    )
    assert [r.name for r in eds.resources] == ["a"]  # held, unchanged, yet a warms on it


def test_sotw_cluster_change_sends_its_unchanged_assignment_again() -> None:
    core, s = SotwStreamCore("s1"), snap()
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a", "b"))):
        (first,) = sotw(core, s, type_url, *names)
        sotw(core, s, type_url, *names, nonce=first.nonce)
    changed = snap(timeout=3)
    cds, eds = core.update(changed)
    assert [_name(ENDPOINT, r.value) for r in eds.resources] == ["a"]
    assert eds.version_info == s.versions[ENDPOINT]  # nothing changed in EDS itself
    # Envoy re-sends its EDS request when it builds the new cluster (before this push
    # reached it): a stale nonce, and the push above answers it.
    assert sotw(core, changed, ENDPOINT, "a", "b", nonce=first.nonce) == []
    sotw(core, changed, CLUSTER, nonce=cds.nonce)
    sotw(core, changed, ENDPOINT, "a", "b", nonce=eds.nonce)
    assert core.update(changed) == []


def test_sotw_eds_rerequest_with_the_acked_nonce_is_answered_after_a_cluster_push() -> None:
    core, s = SotwStreamCore("s1"), snap()
    (eds,) = sotw(core, s, ENDPOINT, "a", "b")
    sotw(core, s, ENDPOINT, "a", "b", nonce=eds.nonce)
    assert sotw(core, s, ENDPOINT, "a", "b", nonce=eds.nonce) == []  # up to date: quiet
    (cds,) = sotw(core, s, CLUSTER)  # clusters a and b (re)created, outside an EDS push
    sotw(core, s, CLUSTER, nonce=cds.nonce)
    # Envoy asks again with the version and nonce it already acknowledged: answered.
    (again,) = sotw(core, s, ENDPOINT, "a", "b", nonce=eds.nonce)
    assert {_name(ENDPOINT, r.value) for r in again.resources} == {"a", "b"}
    assert again.version_info == eds.version_info
    sotw(core, s, ENDPOINT, "a", "b", nonce=again.nonce)
    assert sotw(core, s, ENDPOINT, "a", "b", nonce=again.nonce) == []  # once, no loop


# --- who the proxy is, and SDS ------------------------------------------------------------


def test_proxy_from_node_metadata() -> None:
    proxy = proxy_from_node(NODE_ID, META)
    assert proxy == EnvoyProxy(NODE_ID, "demo", "wp", "wp", "waypoint", "10.244.1.9")
    without_ips = {k: v for k, v in META.items() if k != "INSTANCE_IPS"}
    assert proxy_from_node(NODE_ID, without_ips).ip == "10.244.1.9"  # from Istio's node id
    with pytest.raises(EnvoyNodeError, match="SERVICE_ACCOUNT"):
        proxy_from_node(NODE_ID, {"NAMESPACE": "demo", "PROXY_KIND": "waypoint"})
    with pytest.raises(EnvoyNodeError, match="sidecar"):
        proxy_from_node(NODE_ID, {**META, "PROXY_KIND": "sidecar"})


def pod(name: str, node: str, sa: str, namespace: str = "demo") -> Pod:
    return Pod(namespace, name, node_name=node, service_account=sa, ip="10.244.1.9")


STATE = ClusterState(
    pods={
        ("demo", "wp"): pod("wp", "node1", "wp"),
        ("demo", "backend"): pod("backend", "node2", "backend"),
    }
)


def fake_resources(state: ClusterState, proxy: Any, mesh: MeshConfig) -> EnvoyResources:
    return EnvoyResources(
        listeners={"main": listener("main")},
        clusters={"a": cluster("a"), "static": cluster_pb2.Cluster(name="static")},
    )


def serving(state: ClusterState = STATE) -> tuple[EnvoyServing, CertificateAuthority]:
    key, cert = CertificateAuthority.create_root(NOW)
    ca = CertificateAuthority(key, cert)
    return EnvoyServing(
        MeshConfig(), ca, lambda: state, resources=fake_resources, clock=lambda: NOW
    ), ca


def test_attach_refuses_an_identity_not_on_the_callers_node() -> None:
    envoy, _ = serving()
    backend = {**META, "SERVICE_ACCOUNT": "backend", "GATEWAY_NAME": ""}
    with pytest.raises(ImpersonationDenied, match="node1"):
        asyncio.run(envoy.attach("node1", NODE_ID, backend))  # backend runs on node2
    with pytest.raises(ImpersonationDenied):
        asyncio.run(envoy.attach("node2", NODE_ID, META))  # wp runs on node1
    assert envoy.stats.refused == 2 and not envoy.connected
    assert envoy.builder.certificates.issued == 0  # no key was made for a refused proxy


def test_sds_serves_exactly_the_proxys_identity_and_the_root() -> None:
    envoy, ca = serving()
    proxy = asyncio.run(envoy.attach("node1", NODE_ID, META))
    snapshot = envoy.snapshot(proxy)
    secrets = {n: secret_pb2.Secret.FromString(r.value) for n, r in snapshot.of(SECRET).items()}
    assert set(secrets) == {"default", "ROOTCA"}
    chain = secrets["default"].tls_certificate.certificate_chain.inline_bytes
    leaf = x509.load_pem_x509_certificate(chain)
    assert certificate_identity(leaf) == SpiffeId("cluster.local", "demo", "wp")
    assert secrets["default"].tls_certificate.private_key.inline_bytes.startswith(b"-----BEGIN")
    assert secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes.decode() == ca.root_pem
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime >= ca.settings.default_ttl
    # A subscription to any other secret (another identity's) gets nothing.
    core = StreamCore("s1")
    foreign = "spiffe://cluster.local/ns/demo/sa/backend"
    (first,) = core.receive(DeltaRequest(SECRET, subscribe=(foreign,)), snapshot, 0.0)
    assert first.resources == ()
    core2 = SotwStreamCore("s2")
    (first2,) = sotw(core2, snapshot, SECRET, foreign, "default")
    assert [secret_pb2.Secret.FromString(r.value).name for r in first2.resources] == ["default"]
    # EDS clusters without endpoints get an empty assignment; other clusters none.
    assert set(snapshot.of(ENDPOINT)) == {"a"}
    envoy.detach(proxy)
    assert not envoy.snapshots and envoy.next_renewal() is None  # key dropped with the proxy


def test_refresh_returns_only_changed_proxies() -> None:
    envoy, _ = serving()
    proxy = asyncio.run(envoy.attach("node1", NODE_ID, META))
    assert asyncio.run(envoy.refresh(STATE)) == {}
    envoy.builder._resources = lambda state, p, mesh: EnvoyResources(listeners={"x": listener("x")})
    changed = asyncio.run(envoy.refresh(STATE))
    assert set(changed) == {proxy} and set(changed[proxy].of(LISTENER)) == {"x"}


def test_certificates_renew_at_half_life() -> None:
    key, cert = CertificateAuthority.create_root(NOW)
    certs = ProxyCertificates(CertificateAuthority(key, cert))
    identity = SpiffeId("cluster.local", "demo", "wp")
    first = certs.get(identity, NOW)
    assert certs.get(identity, NOW + dt.timedelta(hours=11)) is first
    assert certs.next_renewal() == first.renew_at
    assert first.renew_at <= NOW + dt.timedelta(hours=12)
    second = certs.get(identity, first.renew_at)
    assert second is not first and second.key_pem != first.key_pem and certs.issued == 2


def test_empty_assignments_only_for_eds_clusters_without_one() -> None:
    named = cluster("n")
    named.eds_cluster_config.service_name = "svc-n"
    out = with_empty_assignments(
        {"a": cluster("a"), "n": named, "s": cluster_pb2.Cluster(name="s")}, {"a": assignment("a")}
    )
    assert set(out) == {"a", "svc-n"} and not out["svc-n"].endpoints


def test_push_to_ack_histogram_buckets() -> None:
    h = Histogram(bounds=(0.01, 0.1))
    for value in (0.005, 0.05, 0.05, 3.0):
        h.observe(value)
    assert h.buckets() == [("0.01", 1.0), ("0.1", 3.0), ("+Inf", 4.0)]
    assert h.count == 4 and h.as_dict()["sum"] == pytest.approx(3.105)


def test_a_failing_translation_serves_secrets_first_and_keeps_the_last_good_after() -> None:
    def broken(state: ClusterState, proxy: Any, mesh: MeshConfig) -> EnvoyResources:
        raise RuntimeError("translation bug")

    envoy, _ = serving()
    envoy.builder._resources = broken
    proxy = asyncio.run(envoy.attach("node1", NODE_ID, META))
    first = envoy.snapshot(proxy)
    assert set(first.of(SECRET)) == {"default", "ROOTCA"} and not first.of(LISTENER)
    envoy.builder._resources = fake_resources
    good = asyncio.run(envoy.refresh(STATE))[proxy]
    assert set(good.of(LISTENER)) == {"main"}
    envoy.builder._resources = broken
    assert asyncio.run(envoy.refresh(STATE)) == {}
    assert envoy.snapshot(proxy) is good


# --- property: a SotW client model converges whatever the storm ------------------------

SOTW_NAMES = ["a", "b", "c", "d"]


def sotw_snapshot(clusters: dict[str, int], endpoints: dict[str, int]) -> ServerSnapshot:
    return ServerSnapshot.build(
        {
            CLUSTER: {n: cluster(n, t) for n, t in clusters.items()},
            ENDPOINT: {n: assignment(n, port) for n, port in endpoints.items()},
        }
    )


class SotwClient:
    """Envoy's SotW behaviour, reduced: wildcard types replace, named types merge, a
    NACKed response changes nothing; every response is answered at once."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, bytes]] = {CLUSTER: {}, ENDPOINT: {}}
        self.names: dict[str, tuple[str, ...]] = {CLUSTER: (), ENDPOINT: ()}
        self.version: dict[str, str] = {CLUSTER: "", ENDPOINT: ""}

    def answer(self, response: DiscoveryResponse, reject: bool) -> DiscoveryRequest:
        type_url = response.type_url
        if reject:
            return DiscoveryRequest(
                type_url,
                self.version[type_url],
                resource_names=self.names[type_url],
                response_nonce=response.nonce,
                error="rejected",
            )
        decoded = {
            _name(type_url, r.value): r.value for r in response.resources
        }  # SotW carries no names: they are inside the messages
        if type_url == CLUSTER:
            self.held[type_url] = decoded
        else:
            self.held[type_url].update(decoded)
        self.version[type_url] = response.version_info
        return DiscoveryRequest(
            type_url,
            response.version_info,
            resource_names=self.names[type_url],
            response_nonce=response.nonce,
        )


def _name(type_url: str, value: bytes) -> str:
    if type_url == CLUSTER:
        return str(cluster_pb2.Cluster.FromString(value).name)
    return str(endpoint_pb2.ClusterLoadAssignment.FromString(value).cluster_name)


contents = st.dictionaries(st.sampled_from(SOTW_NAMES), st.integers(1, 3))
steps: st.SearchStrategy[list[tuple[str, Any, Any]]] = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), contents, contents),
        st.tuples(st.just("subscribe"), st.sets(st.sampled_from(SOTW_NAMES)), st.just({})),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(steps=steps, rejects=st.lists(st.booleans(), min_size=40, max_size=40))
def test_sotw_client_converges_after_any_storm(
    steps: list[tuple[str, Any, Any]], rejects: list[bool]
) -> None:
    core, client = SotwStreamCore("s"), SotwClient()
    snapshot = sotw_snapshot({}, {})
    decisions = iter(rejects)
    inbox: list[DiscoveryResponse] = []

    def deliver(final: bool) -> None:
        while inbox:
            response = inbox.pop(0)
            request = client.answer(response, reject=not final and next(decisions, False))
            inbox.extend(core.receive(request, snapshot, 0.0))

    for type_url in (CLUSTER, ENDPOINT):
        inbox.extend(core.receive(DiscoveryRequest(type_url), snapshot, 0.0))
    last: tuple[dict[str, int], dict[str, int]] = ({}, {})
    for kind, first, second in steps:
        if kind == "snapshot":
            snapshot, last = sotw_snapshot(first, second), (first, second)
            inbox.extend(core.update(snapshot))
        else:
            client.names[ENDPOINT] = tuple(sorted(first))
            inbox.extend(
                core.receive(
                    DiscoveryRequest(
                        ENDPOINT,
                        client.version[ENDPOINT],
                        resource_names=client.names[ENDPOINT],
                        response_nonce=core.types[ENDPOINT].last_nonce,
                    ),
                    snapshot,
                    0.0,
                )
            )
        deliver(final=False)
    # One more change of one resource each, everything accepted: the client is on the
    # whole snapshot (what it rejected before is sent again with it).
    clusters, endpoints = dict(last[0]), dict(last[1])
    clusters["a"], endpoints["a"] = 9, 9
    snapshot = sotw_snapshot(clusters, endpoints)
    inbox.extend(core.update(snapshot))
    deliver(final=True)
    assert client.held[CLUSTER] == {n: r.value for n, r in snapshot.of(CLUSTER).items()}
    subscribed = set(client.names[ENDPOINT])
    wanted = {n: r.value for n, r in snapshot.of(ENDPOINT).items() if n in subscribed}
    assert {n: v for n, v in client.held[ENDPOINT].items() if n in wanted} == wanted
