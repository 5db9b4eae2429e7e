"""The root command: help, version, lazy groups, and user errors without tracebacks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ambient import __version__
from ambient.cli import GROUPS, LogFormatter, main, root
from ambient.errors import UsageError
from ambient.output import render


def test_version() -> None:
    result = CliRunner().invoke(root, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_has_help(group: str) -> None:
    result = CliRunner().invoke(root, [group, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_root_help_lists_groups() -> None:
    result = CliRunner().invoke(root, ["--help"])
    for group in GROUPS:
        assert group in result.output


def test_user_error_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    @root.command("fail-for-test")
    def _fail() -> None:
        raise UsageError("the flag --x is wrong", hint="use --y")

    try:
        with pytest.raises(SystemExit) as exc:
            main(["fail-for-test"])
    finally:
        root.commands.pop("fail-for-test")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: the flag --x is wrong" in err
    assert "hint: use --y" in err
    assert "Traceback" not in err


def test_unknown_command_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ambient", "no-such-group"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "No such command" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_render_formats() -> None:
    rows = [{"name": "a", "ips": ["10.0.0.1", "10.0.0.2"], "labels": {"app": "x"}}, {"name": "bb"}]
    table = render(rows, "table").splitlines()
    assert table[0].split() == ["NAME", "IPS", "LABELS"]
    assert table[1].split() == ["a", "10.0.0.1,10.0.0.2", "app=x"]
    assert table[2].split() == ["bb", "-", "-"]
    assert json.loads(render(rows, "json")) == rows
    assert "- name: a" in render(rows, "yaml")
    with pytest.raises(ValueError):
        render(rows, "xml")
    assert isinstance(root, click.Group)


def test_generated_imports_are_rebased_under_api_gen() -> None:
    from ambient.buildenv import rebase_imports

    text = "import grpc\nfrom istio.ca import ca_pb2 as x\nimport istio.workload.workload_pb2\n"
    assert rebase_imports(text, {"istio"}) == (
        "import grpc\nfrom api.gen.istio.ca import ca_pb2 as x\n"
        "import api.gen.istio.workload.workload_pb2\n"
    )
    assert rebase_imports("from istioctl import x\n", {"istio"}) == "from istioctl import x\n"


def test_log_formatter_writes_the_stock_time_text_while_making_it_once_a_second() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    ours, stock = LogFormatter(fmt), logging.Formatter(fmt)
    # Within one second, across a second, backwards (clock steps), and far apart.
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.5, 1_699_999_999.25, 2e9):
        record = logging.LogRecord("ztunnel.access", logging.INFO, "p", 1, "line", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == stock.format(record)
    record = logging.LogRecord("x", logging.INFO, "p", 1, "m", None, None)
    assert ours.formatTime(record, "%Y") == stock.formatTime(record, "%Y")
