"""--no-preserve-source-ip: listeners stay transparent, upstreams leave from the node."""

from __future__ import annotations

from click.testing import CliRunner

from ztunnel.app import Ztunnel
from ztunnel.cli import run_cmd
from ztunnel.config import ZtunnelConfig


def test_upstreams_carry_the_callers_address_by_default() -> None:
    assert Ztunnel(ZtunnelConfig()).sockets.transparent is True


def test_no_preserve_source_ip_turns_off_only_the_upstream_spoofing() -> None:
    config = ZtunnelConfig(preserve_source_ip=False)
    assert config.transparent  # the capture listeners still take any destination
    assert Ztunnel(config).sockets.transparent is False


def test_the_flag_is_offered() -> None:
    result = CliRunner().invoke(run_cmd, ["--help"])
    assert "--no-preserve-source-ip" in result.output
