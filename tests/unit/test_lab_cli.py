"""The `ambient lab` commands that need no root: help, parsing, status from saved state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ambient.cli import root
from lab import cli as lab_cli
from lab.errors import LabNotFoundError, LabSpecError
from lab.model import LabState, Pod, ServicePort
from lab.state import StateStore

COMMANDS = [
    "up",
    "status",
    "down",
    "exec",
    "add-pod",
    "remove-pod",
    "add-service",
    "label",
    "start",
    "stop",
]


def _saved_lab(run_root: Path, name: str) -> LabState:
    run_dir = run_root / name
    pod = Pod(
        name="web",
        namespace="demo",
        node="node2",
        netns=f"{name}-pod-web.demo",
        ip="10.244.2.2",
        host_ifname="veth0000000000",
        uid="u-1",
        service_account="default",
        labels={"app": "web"},
    )
    state = LabState(
        name=name,
        octet=7,
        node_count=2,
        run_dir=str(run_dir),
        config_dir=str(run_dir / "config"),
        namespaces={"demo": {}},
        netns=[f"{name}-fabric", f"{name}-node1", f"{name}-node2", pod.netns],
        pods={pod.key: pod},
        phase="ready",
    )
    StateStore(run_dir).save(state)
    return state


@pytest.mark.parametrize("command", COMMANDS)
def test_every_lab_command_has_help(command: str) -> None:
    result = CliRunner().invoke(root, ["lab", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--name" in result.output


def test_status_with_no_lab_prints_only_the_header(tmp_path: Path) -> None:
    result = CliRunner().invoke(root, ["lab", "status", "--run-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        "LAB",
        "KIND",
        "NAME",
        "NAMESPACE",
        "NODE",
        "IP",
        "NETNS",
        "DETAIL",
    ]


def test_status_reads_the_saved_state(tmp_path: Path) -> None:
    _saved_lab(tmp_path, "t1")
    result = CliRunner().invoke(
        root, ["lab", "status", "--run-root", str(tmp_path), "--name", "t1", "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["name"] == "t1"
    assert [n["ip"] for n in data["nodes"]] == ["172.30.7.11", "172.30.7.12"]
    assert data["pods"][0]["ip"] == "10.244.2.2"
    assert "t1-node1" in data["missing_netns"]  # saved, but never built on this machine
    table = CliRunner().invoke(root, ["lab", "status", "--run-root", str(tmp_path)])
    web = next(line for line in table.output.splitlines() if " web " in line)
    assert "10.244.2.2" in web
    assert "NETNS MISSING" in web


def test_lab_name_is_resolved_when_one_lab_runs(tmp_path: Path) -> None:
    with pytest.raises(LabNotFoundError):
        lab_cli._resolve_name(None, tmp_path)
    _saved_lab(tmp_path, "t1")
    assert lab_cli._resolve_name(None, tmp_path) == "t1"
    _saved_lab(tmp_path, "t2")
    with pytest.raises(LabSpecError, match="t1, t2"):
        lab_cli._resolve_name(None, tmp_path)
    assert lab_cli._resolve_name("t2", tmp_path) == "t2"


def test_a_lab_with_only_state_left_is_not_a_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netns = tmp_path / "netns"
    netns.mkdir()
    (netns / "t2-fabric").touch()
    assert lab_cli._has_namespaces("t2", netns)
    assert not lab_cli._has_namespaces("t1", netns)
    assert not lab_cli._has_namespaces("t", netns)  # prefixes are whole names
    assert not lab_cli._has_namespaces("t2", tmp_path / "absent")
    runs = tmp_path / "runs"
    _saved_lab(runs, "t1")
    _saved_lab(runs, "t2")
    monkeypatch.setattr(lab_cli, "_has_namespaces", lambda lab: lab == "t2")
    assert lab_cli._resolve_name(None, runs) == "t2"
    _saved_lab(runs, "t3")
    monkeypatch.setattr(lab_cli, "_has_namespaces", lambda lab: lab != "t1")
    with pytest.raises(LabSpecError, match="t2, t3") as err:
        lab_cli._resolve_name(None, runs)
    assert "t1 left only state behind" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("80:8080/http", ServicePort(80, 8080, "http")),
        ("9000", ServicePort(9000, 9000, "")),
        ("443/https", ServicePort(443, 443, "https")),
    ],
)
def test_service_port_flag(text: str, want: ServicePort) -> None:
    assert lab_cli._service_port(text) == want


@pytest.mark.parametrize("text", ["http", "80:x", ""])
def test_bad_service_port_flag(text: str) -> None:
    with pytest.raises(LabSpecError, match="PORT"):
        lab_cli._service_port(text)


def test_key_value_flags() -> None:
    assert lab_cli._pairs(("app=web", "v="), "label") == {"app": "web", "v": ""}
    with pytest.raises(LabSpecError, match="key=value"):
        lab_cli._pairs(("novalue",), "label")
