"""The waypoint pod's Envoy bootstrap and its supervisor (``ambient waypoint run``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.envoy_validate import envoy_validate
from waypoint.bootstrap import WaypointConfig, render_bootstrap
from waypoint.errors import EnvoyExitedError, WaypointError
from waypoint.run import RunConfig, _dechunk, active_downstream, supervise, write_bootstrap
from waypoint.run_cli import run as run_command
from ztunnel.identity.certs import LocalCA


def _config(tmp_path: Path, **overrides: Any) -> WaypointConfig:
    root = tmp_path / "root-cert.pem"
    root.write_bytes(LocalCA.create(dt.datetime.now(dt.UTC)).root_pem)
    fields: dict[str, Any] = {
        "namespace": "demo",
        "service_account": "w",
        "gateway_name": "w",
        "kind": "waypoint",
        "instance_ips": ("10.1.0.9",),
        "xds_address": "10.0.0.1:15012",
        "root_cert": root,
    }
    return WaypointConfig(**(fields | overrides))


def test_bootstrap_names_the_proxy_and_its_control_plane(tmp_path: Path) -> None:
    config = _config(tmp_path)
    bootstrap = render_bootstrap(config, "tok3n")
    node = bootstrap["node"]
    assert node["id"] == "waypoint~10.1.0.9~w.demo~demo.svc.cluster.local"
    assert node["cluster"] == "w.demo"
    assert node["metadata"] | {} == {
        "NAMESPACE": "demo",
        "SERVICE_ACCOUNT": "w",
        "GATEWAY_NAME": "w",
        "PROXY_KIND": "waypoint",
        "INSTANCE_IPS": "10.1.0.9",
        "CLUSTER_ID": "Kubernetes",
    }
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    ads = bootstrap["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    (service,) = ads["grpc_services"]
    assert {"key": "authorization", "value": "Bearer tok3n"} in service["initial_metadata"]
    xds = bootstrap["static_resources"]["clusters"][0]
    assert xds["type"] == "STATIC"
    tls = xds["transport_socket"]["typed_config"]
    assert tls["sni"] == "istiod.istio-system.svc"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(config.root_cert)}
    assert validation["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": "istiod.istio-system.svc"
    }
    names = [e["name"] for e in bootstrap["bootstrap_extensions"]]
    assert names == ["envoy.bootstrap.internal_listener"]


def test_gateway_node_id_and_tracing(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        kind="gateway",
        gateway_name="istio-ingressgateway",
        namespace="istio-system",
        collector=("10.0.0.5", 9411),
        xds_address="istiod.istio-system.svc:15012",
    )
    bootstrap = render_bootstrap(config, None)
    assert bootstrap["node"]["id"].startswith("router~10.1.0.9~istio-ingressgateway.")
    assert bootstrap["node"]["metadata"]["TRACING"] == "1"
    assert (
        "initial_metadata" not in bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    )
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert clusters["xds-grpc"]["type"] == "STRICT_DNS"
    assert {"ambient_telemetry", "ambient_tracing"} <= set(clusters)


def test_bad_xds_address_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WaypointError, match="not host:port"):
        render_bootstrap(_config(tmp_path, xds_address="nowhere"), None)


@pytest.mark.timeout(120)
def test_envoy_accepts_the_bootstrap(tmp_path: Path) -> None:
    config = _config(tmp_path, collector=("127.0.0.1", 9411))
    done = envoy_validate(render_bootstrap(config, "t"), tmp_path / "bootstrap.json")
    assert done.returncode == 0, f"{done.stdout[-1500:]}{done.stderr[-1500:]}"


def test_bootstrap_file_is_private_and_reads_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret\n")
    run = RunConfig(_config(tmp_path, token_file=token), tmp_path / "work")
    path = write_bootstrap(run)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "Bearer secret" in path.read_text()
    json.loads(path.read_text())


def _fake_envoy(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "envoy"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_sigterm_is_forwarded_and_the_exporter_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    envoy = _fake_envoy(
        tmp_path, f"trap 'echo bye > {marker}; exit 0' TERM\nwhile :; do sleep 0.05; done"
    )
    exporter_states: list[str] = []

    async def exporter(_: Any) -> None:
        exporter_states.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            exporter_states.append("stopped")

    async def scenario() -> None:
        stop = asyncio.Event()
        config = RunConfig(_config(tmp_path), tmp_path / "work", envoy=envoy, exporter=object())
        task = asyncio.ensure_future(supervise(config, exporter=exporter, stop=stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert marker.read_text().strip() == "bye"
    assert exporter_states == ["started", "stopped"]


def test_envoy_dying_ends_the_run_with_its_last_words(tmp_path: Path) -> None:
    envoy = _fake_envoy(
        tmp_path,
        "echo '[critical][main] listener bind failed' >&2; echo '[info] bye' >&2; exit 3",
    )
    config = RunConfig(_config(tmp_path), tmp_path / "work", envoy=envoy)
    with pytest.raises(EnvoyExitedError, match=r"status 3: \[critical\]\[main\] listener bind"):
        asyncio.run(supervise(config, stop=asyncio.Event()))


def test_cli_maps_flags_onto_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RunConfig] = []
    monkeypatch.setattr("waypoint.run.run", seen.append)
    root = _config(tmp_path).root_cert
    result = CliRunner().invoke(
        run_command,
        [
            "--namespace", "demo", "--gateway-name", "w", "--instance-ip", "10.1.0.9",
            "--xds-address", "10.0.0.1:15012", "--xds-root-cert", str(root),
            "--collector", "10.0.0.5:9411", "--no-telemetry", "--work-dir", str(tmp_path / "w"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.proxy.service_account == "w"
    assert config.proxy.collector == ("10.0.0.5", 9411)
    assert config.exporter is None


def test_drain_counts_only_socket_listeners() -> None:
    stats = (
        "http.main.downstream_cx_active: 4\n"
        "listener.10.1.0.9_15008.downstream_cx_active: 2\n"
        "listener.10.1.0.9_15008.worker_0.downstream_cx_active: 2\n"
        "listener.[__1]_15021.downstream_cx_active: 0\n"
        "listener.admin.downstream_cx_active: 1\n"
        "listener.admin.main_thread.downstream_cx_active: 1\n"
        "listener.envoy_internal_connect_originate.downstream_cx_active: 3\n"
    )
    assert active_downstream(stats) == {"10.1.0.9_15008": 2}
    assert active_downstream("") == {}


def test_admin_chunked_body_is_decoded() -> None:
    assert _dechunk("5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n") == "hello, world"


def test_drain_seconds_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RunConfig] = []
    monkeypatch.setattr("waypoint.run.run", seen.append)
    root = _config(tmp_path).root_cert
    base = [
        "--namespace", "demo", "--gateway-name", "w", "--xds-address", "10.0.0.1:15012",
        "--xds-root-cert", str(root), "--no-telemetry", "--work-dir", str(tmp_path / "w"),
    ]  # fmt: skip
    assert CliRunner().invoke(run_command, base).exit_code == 0
    assert CliRunner().invoke(run_command, [*base, "--drain-seconds", "7.5"]).exit_code == 0
    assert [config.drain_seconds for config in seen] == [20.0, 7.5]
    assert CliRunner().invoke(run_command, [*base, "--drain-seconds", "-1"]).exit_code != 0
