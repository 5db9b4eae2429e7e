"""The `ambient` command: one root with a group per component.

Groups are imported lazily, so `ambient --help` or `ambient lab status` never pays for
BCC, gRPC or the Kubernetes client. Each component owns `<component>/cli.py` and
registers it in :data:`GROUPS`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any

import click

from ambient import __version__
from ambient.errors import AmbientError

# command name -> "module:attribute" of a click command or group
GROUPS: dict[str, str] = {
    "agent": "agent.cli:cli",
    "bench": "bench.cli:cli",
    "controlplane": "controlplane.cli:cli",
    "demo": "lab.demo_cli:cli",
    "lab": "lab.cli:cli",
    "maps": "agent.maps_cli:cli",
    "waypoint": "waypoint.cli:cli",
    "ztunnel": "ztunnel.cli:cli",
    "ztunnel-config": "ztunnel.cli:config_cli",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*GROUPS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in GROUPS:
            module_name, attr = GROUPS[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                raise click.ClickException(
                    f"the '{cmd_name}' commands cannot be loaded ({err}); "
                    "run 'make setup' to install what they need"
                ) from err
            command = getattr(module, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ambient")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level of this process.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.pass_context
def root(ctx: click.Context, log_level: str, debug: bool) -> None:
    """ambient-node: a sidecarless service mesh for Kubernetes nodes.

    eBPF capture into a node-local HBONE proxy (ztunnel), an Istio-compatible control
    plane, and a lab that runs the whole mesh in network namespaces on one machine.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=getattr(logging, log_level.upper()), handlers=[handler])


class LogFormatter(logging.Formatter):
    """The standard formatter, its time text made once per second, not once per line.

    ztunnel writes an access line per connection and side: ``strftime`` on each was a
    measurable part of a new connection's cost. The text is the same as the stock one.
    """

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            when = self.converter(record.created)
            self._second, self._text = second, time.strftime(self.default_time_format, when)
        msec_format = self.default_msec_format or "%s,%03d"
        return msec_format % (self._text, record.msecs)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the console script: user errors become one clear sentence."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = root.main(args=argv, prog_name="ambient", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except AmbientError as err:
        click.echo(f"error: {err.message}", err=True)
        if err.hint:
            click.echo(f"  hint: {err.hint}", err=True)
        sys.exit(err.exit_code)
    except Exception as err:
        if debug:
            raise
        click.echo(
            f"internal error: {type(err).__name__}: {err} "
            "(this is a bug; run again with --debug for the traceback)",
            err=True,
        )
        sys.exit(70)
    if isinstance(rv, int) and not isinstance(rv, bool):
        sys.exit(rv)
    return rv
