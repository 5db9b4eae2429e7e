"""``ambient waypoint run``: the flags reach the run's configuration (no Envoy started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ambient.cli import main
from waypoint.run import RunConfig


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> RunConfig:
    """The RunConfig ``ambient waypoint run`` would run with ``flags``."""
    seen: list[RunConfig] = []
    monkeypatch.setattr("waypoint.run.run", seen.append)
    root = tmp_path / "root-cert.pem"
    root.write_text("not read here")
    argv = [
        "waypoint", "run", "--namespace", "istio-system", "--gateway-name", "gw",
        "--xds-address", "127.0.0.1:15012", "--xds-root-cert", str(root),
        "--work-dir", str(tmp_path / "work"), *flags,
    ]  # fmt: skip
    main(argv)
    (config,) = seen
    return config


def test_a_gateways_exporter_reports_as_the_gateway_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = invoke(tmp_path, monkeypatch, "--kind", "gateway", "--instance-ip", "10.1.0.50")
    exporter: Any = config.exporter
    assert config.proxy.kind == "gateway"
    assert (exporter.proxy_kind, exporter.pod_ip) == ("gateway", "10.1.0.50")


def test_a_waypoints_exporter_reports_as_a_waypoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter: Any = invoke(tmp_path, monkeypatch).exporter
    assert (exporter.proxy_kind, exporter.pod_ip) == ("waypoint", "")


def test_a_bad_collector_address_is_an_error_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        invoke(tmp_path, monkeypatch, "--collector", "zipkin")
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert "error: --collector 'zipkin' is not host:port" in err
    assert "hint: pass --collector like" in err
