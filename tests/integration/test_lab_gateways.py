"""``ambient lab apply -f`` of gateway objects in a real lab: the tutorial's waypoint and
ingress gateway pods and Services, ``outside`` reaching the gateway by name and address,
proxies started against a registered control plane, and ``delete -f`` removing them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab, mesh
from lab.manifests.apply import apply_manifests, delete_manifests
from tests.integration.meshlab import REPO, ambient, two_node_lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

TUTORIAL = REPO / "deploy" / "examples" / "tutorial"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with two_node_lab("lg", tmp_path) as built:
        yield built


def test_tutorial_gateways_reachable_from_outside_and_deleted(lab: Lab) -> None:
    result = apply_manifests(lab, [TUTORIAL])
    keys = {p.key for p in lab.pods}
    assert {"tutorial/waypoint", "istio-system/istio-ingressgateway"} <= keys
    waypoint = lab.pod("tutorial/waypoint")
    assert waypoint.service_account == "waypoint"
    assert waypoint.labels["istio.io/dataplane-mode"] == "none"
    svc = lab.service("waypoint", "tutorial")
    assert {p.port for p in svc.ports} == {15008, 15020, 15021}
    assert 80 in {p.port for p in lab.service("istio-ingressgateway", "istio-system").ports}
    gateway = lab.pod("istio-system/istio-ingressgateway")
    assert any(gateway.ip in n and "curl http://istio-ingressgateway" in n for n in result.notes)
    assert any("no control plane is registered" in n for n in result.notes)
    # Something answering on the gateway pod's port 80 is reached from outside, by the
    # gateway's name and by its address.
    lab.start_workload(gateway, "http-echo", ["--text", "at the gateway", "--listen", ":80"])
    for url in ("http://istio-ingressgateway.istio-system/", f"http://{gateway.ip}/"):
        done = lab.exec("outside", ["curl", "-s", "-m", "3", url])
        assert done.stdout.startswith("at the gateway"), (url, done)
    # Idempotent; then delete -f takes the proxies (the ingress with the namespace's Gateway).
    again = apply_manifests(lab, [TUTORIAL])
    assert again.actions == ()
    delete_manifests(lab, [TUTORIAL])
    assert not [p for p in lab.pods if p.namespace in ("tutorial", "istio-system")]
    assert not [s for s in lab.services if s.namespace == "istio-system"]
    done = lab.exec(
        "outside", ["curl", "-s", "-m", "2", "http://istio-ingressgateway.istio-system/"]
    )
    assert done.returncode != 0


def test_proxies_start_against_the_registered_control_plane(lab: Lab) -> None:
    token = lab.run_dir / "node.token"
    token.write_text("t0ken\n")
    mesh.register(
        lab.run_dir,
        mesh.MeshEndpoint(
            xds_address=f"{lab.fabric.ip}:15012",
            xds_server_name="istiod.istio-system.svc",
            root_cert=str(lab.run_dir / "root-cert.pem"),
            tokens={n.name: str(token) for n in lab.nodes},
        ),
    )
    apply_manifests(lab, [TUTORIAL / "app.yaml", TUTORIAL / "waypoint.yaml"])
    procs = {p.name: p for p in lab.processes}
    proxy = procs["waypoint.tutorial-proxy"]
    argv = " ".join(proxy.argv)
    assert "waypoint run" in argv and "--gateway-name waypoint" in argv
    assert f"--auth-token-file {token}" in argv
    if "traces" in procs:  # the collector runs on the fabric, and Envoy is told where
        assert f"--collector {lab.fabric.ip}:{mesh.TRACES_PORT}" in argv


def test_cli_prints_the_gateway_address(lab: Lab) -> None:
    done = ambient(lab, "apply", "-f", str(TUTORIAL))
    assert done.returncode == 0, done.stderr
    gateway = lab.pod("istio-system/istio-ingressgateway")
    assert f"answers outside the mesh at {gateway.ip}" in done.stderr
    assert "istio-injection" in done.stderr  # the sidecar-mode warning


def test_reapplying_restarts_a_proxy_that_died(lab: Lab) -> None:
    mesh.register(
        lab.run_dir,
        mesh.MeshEndpoint(
            xds_address=f"{lab.fabric.ip}:15012",
            xds_server_name="istiod.istio-system.svc",
            root_cert=str(lab.run_dir / "root-cert.pem"),
        ),
    )
    apply_manifests(lab, [TUTORIAL / "app.yaml", TUTORIAL / "waypoint.yaml"])
    first = next(p for p in lab.processes if p.name == "waypoint.tutorial-proxy")
    first_pid = first.pid
    lab.stop(first)  # (here it would exit anyway: no control plane answers)
    again = apply_manifests(lab, [TUTORIAL / "app.yaml", TUTORIAL / "waypoint.yaml"])
    assert again.actions == ()
    assert any("waypoint tutorial/waypoint: ambient waypoint run" in n for n in again.notes)
    second = next(p for p in lab.processes if p.name == "waypoint.tutorial-proxy")
    assert second.pid != first_pid


def test_connect_registers_and_starts_idle_proxies(lab: Lab) -> None:
    apply_manifests(lab, [TUTORIAL / "app.yaml", TUTORIAL / "waypoint.yaml"])
    assert not [p for p in lab.processes if p.name.endswith("-proxy")]
    root = lab.run_dir / "root.pem"
    root.write_text("not a real root\n")
    token = lab.run_dir / "n1.token"
    token.write_text("t\n")
    done = ambient(
        lab,
        "connect",
        "--xds-address",
        f"{lab.fabric.ip}:15012",
        "--xds-root-cert",
        str(root),
        "--token",
        f"node1={token}",
        "--token",
        f"node2={token}",
    )
    assert done.returncode == 0, done.stderr
    assert "waypoint tutorial/waypoint: ambient waypoint run" in done.stdout
    endpoint = mesh.registered(lab.run_dir)
    assert endpoint is not None and endpoint.tokens["node2"] == str(token)
    lab.refresh()
    proxy = next(p for p in lab.processes if p.name == "waypoint.tutorial-proxy")
    assert f"--xds-root-cert {root}" in " ".join(proxy.argv)
