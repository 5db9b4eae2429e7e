"""The agent's one configuration value, and its command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.capture import CaptureSettings
from agent.cli import cli
from agent.config import AgentConfig
from agent.errors import ConfigError


def test_exactly_one_cluster_source() -> None:
    with pytest.raises(ConfigError):
        AgentConfig(node_name="n1", node_id="lab-n1", config_dir=None)
    with pytest.raises(ConfigError):
        AgentConfig(node_name="n1", node_id="lab-n1", config_dir=Path("/x"), kubernetes=True)
    assert AgentConfig(node_name="n1", node_id="lab-n1", config_dir=None, kubernetes=True)


def test_pins_and_routing_follow_the_config() -> None:
    config = AgentConfig(
        node_name="ip-10-0-0-1.ec2.internal",
        node_id="ip-10-0-0-1.ec2.internal",
        config_dir=Path("/cfg"),
        bpffs_root=Path("/sys/fs/bpf/test"),
        capture=CaptureSettings(mark=0x77),
        route_table=200,
    )
    assert config.pin_dir == Path("/sys/fs/bpf/test/ip-10-0-0-1_ec2_internal")
    assert config.local_delivery.mark == 0x77
    assert config.local_delivery.table == 200
    assert not config.detach_on_exit
    assert not config.allow_host_namespace


@pytest.mark.parametrize("command", ["run", "cleanup", "check"])
def test_every_agent_command_documents_itself(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_named_namespace_is_identified_positively(tmp_path: Path) -> None:
    from agent.daemon import in_named_netns

    assert in_named_netns(tmp_path / "missing") is None
    assert in_named_netns(tmp_path) is None
    (tmp_path / "other").write_text("")
    assert in_named_netns(tmp_path) is None
    (tmp_path / "mine").symlink_to("/proc/self/ns/net")
    assert in_named_netns(tmp_path) == "mine"


def test_the_agent_refuses_an_unnamed_namespace_unless_allowed(tmp_path: Path) -> None:
    """The test process runs in no named namespace: the guard must stop, by default."""
    from agent.daemon import in_named_netns, refuse_host_namespace
    from agent.errors import AgentError

    if in_named_netns() is not None:
        pytest.skip("this test process runs inside a named network namespace")
    with pytest.raises(AgentError, match="refuses to run outside a named network namespace"):
        refuse_host_namespace(False, "ambient agent run")
    refuse_host_namespace(True, "ambient agent run")  # a real node, explicitly


def _config_from_flags(monkeypatch: pytest.MonkeyPatch, *flags: str) -> AgentConfig:
    """The AgentConfig `ambient agent run FLAGS` builds (nothing is started)."""
    import agent.check
    import agent.daemon
    import ambient.preflight

    built: list[AgentConfig] = []
    monkeypatch.setattr(ambient.preflight, "require", lambda *a, **k: None)
    monkeypatch.setattr(agent.check, "log_startup_check", lambda: None)
    monkeypatch.setattr(agent.daemon, "run_agent", built.append)
    result = CliRunner().invoke(cli, ["run", "--node", "n1", "--kubernetes", *flags])
    assert result.exit_code == 0, result.output
    return built[0]


def test_excluded_namespaces_default_to_the_system_and_mesh_namespaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from controlplane import DEFAULT_EXCLUDED_NAMESPACES

    default = frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    assert default == {"kube-system", "istio-system"}
    assert AgentConfig("n1", "n1", None, kubernetes=True).excluded_namespaces == default
    assert _config_from_flags(monkeypatch).excluded_namespaces == default


def test_exclude_namespace_flags_replace_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_from_flags(
        monkeypatch, "--exclude-namespace", "kube-system", "--exclude-namespace", "infra"
    )
    assert config.excluded_namespaces == {"kube-system", "infra"}
    assert _config_from_flags(monkeypatch, "--exclude-namespace", "").excluded_namespaces == set()


def test_the_metrics_show_the_excluded_namespaces() -> None:
    from prometheus_client import generate_latest

    from agent.metrics import AgentMetrics

    metrics = AgentMetrics("node1")
    metrics.show_excluded_namespaces({"kube-system", "istio-system"})
    text = generate_latest(metrics.registry).decode()
    assert 'ambient_agent_excluded_namespace{namespace="istio-system",node="node1"} 1.0' in text
    assert 'ambient_agent_excluded_namespace{namespace="kube-system",node="node1"} 1.0' in text
