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
