"""The `ambient ztunnel` commands, and `ambient ztunnel-config` (reads /config_dump)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ambient.output import emit, output_option

if TYPE_CHECKING:
    from ztunnel.config import ZtunnelConfig
    from ztunnel.steering import Steering

log = logging.getLogger("ztunnel")

LOG_LEVEL_NAMES = ("error", "warn", "info", "debug", "trace", "off")
"""The levels ``--log-level`` and ``/logging`` take (``trace`` is ``debug`` here)."""


@click.group(name="ztunnel")
def cli() -> None:
    """ztunnel, the node-local L4 proxy."""


@cli.command("run")
@click.option(
    "--node", "node_name", default="", help="Node this ztunnel serves (empty: all workloads)."
)
@click.option(
    "--state-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Local mode: workloads, services, policies (YAML).",
)
@click.option(
    "--cluster-folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="Local mode: a folder of Kubernetes/Istio YAML, translated as istiod would.",
)
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Local mode: the local CA's key and root (created if missing).",
)
@click.option(
    "--xds-address",
    default="",
    help="Control-plane mode: delta xDS (and the CA) at host:port, e.g. 127.0.0.1:15012.",
)
@click.option("--ca-address", default="", help="The CA at host:port (default: --xds-address).")
@click.option(
    "--xds-root-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The control plane's root-cert.pem (TLS to 15012, and the mesh root).",
)
@click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Bearer token for xDS and the CA ('ambient controlplane node-credential NODE').",
)
@click.option("--xds-server-name", default="", help="Name in the control plane's certificate.")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option(
    "--transparent/--no-transparent",
    default=True,
    show_default=True,
    help="Transparent listeners and source-preserving upstreams (root).",
)
@click.option(
    "--preserve-source-ip/--no-preserve-source-ip",
    default=True,
    show_default=True,
    help="Connect to local pods from the caller's pod IP (else from the node's address).",
)
@click.option(
    "--proxy-address",
    default="0.0.0.0",
    show_default=True,
    help="Bind address of proxy, metrics and readiness listeners.",
)
@click.option("--hbone-port", default=15008, show_default=True, type=int)
@click.option("--outbound-port", default=15001, show_default=True, type=int)
@click.option("--inbound-plaintext-port", default=15006, show_default=True, type=int)
@click.option("--metrics-port", default=15020, show_default=True, type=int)
@click.option("--readiness-port", default=15021, show_default=True, type=int)
@click.option("--admin-port", default=15000, show_default=True, type=int)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes sharing the listeners (default: the number of CPUs).",
)
@click.option(
    "--worker-balance",
    type=click.Choice(["least-loaded", "kernel"]),
    default="least-loaded",
    show_default=True,
    help="How workers share new connections: an eBPF program sends each to the "
    "lowest-numbered worker with few open (sequential connections stay on one warm "
    "worker, parallel ones spread), or the kernel's 4-tuple hash. Needs root; without "
    "it the kernel's hash, with a warning.",
)
@click.option("--pool-max-streams", default=100, show_default=True, type=int)
@click.option(
    "--access-log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVEL_NAMES),
    default="info",
    show_default=True,
)
def run_cmd(**flags: Any) -> None:
    """Run ztunnel in the current network namespace until /quitquitquit (then drain)."""
    from ztunnel.workers import METRICS_DIR_ENV, SharedLogLevel, run_workers

    scratch: list[Path] = []

    if flags["transparent"] and os.geteuid() != 0:
        from ambient.preflight import require

        require("root", what="ambient ztunnel run --transparent")
    if flags["workers"] is None:
        flags["workers"] = os.cpu_count() or 1
    if flags["workers"] > 1 and METRICS_DIR_ENV not in os.environ:
        # The workers' metric values are summed at scrape time through files in this
        # directory; it must be set before prometheus_client is first imported.
        scratch.append(Path(tempfile.mkdtemp(prefix="ztunnel-metrics-")))
        os.environ[METRICS_DIR_ENV] = str(scratch[-1])
    from ztunnel.app import load_or_create_ca, run
    from ztunnel.config import ZtunnelConfig
    from ztunnel.identity.store import utc_now

    if flags["workers"] > 1 and not (flags["xds_address"] or flags["ca_address"]):
        # Every worker must sign with the same CA: make (or load) it once, before forking.
        if flags["ca_dir"] is None:
            scratch.append(Path(tempfile.mkdtemp(prefix="ztunnel-ca-")))
            flags["ca_dir"] = scratch[-1]
        load_or_create_ca(flags["ca_dir"], flags["trust_domain"], utc_now())
    config = ZtunnelConfig(**flags)
    _lean_log_records()
    from ztunnel import malloc

    malloc.tune()  # before the workers fork: a relayed read's buffer from the heap
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the standard loop works, only slower
        runner = asyncio.run
    else:
        runner = uvloop.run

    # With several workers, /logging (answered by one of them) reaches all of them.
    shared_log_level = SharedLogLevel() if config.workers > 1 else None

    steering = _load_steering(config)

    def serve(worker: int = 0) -> None:
        with contextlib.suppress(KeyboardInterrupt), _profiled():
            runner(
                run(
                    config,
                    shared_log_level=shared_log_level,
                    steering=steering.for_worker(worker) if steering else None,
                )
            )

    if config.workers == 1:
        serve()
        return
    try:
        code = run_workers(config.workers, serve)
    finally:
        for path in scratch:  # what this run created for its workers goes with it
            shutil.rmtree(path, ignore_errors=True)
    if code:
        raise SystemExit(code)


def _load_steering(config: ZtunnelConfig) -> Steering | None:
    """The least-loaded worker steering, loaded before the workers fork; None (with a
    warning when it was asked for and failed) leaves the kernel's hash."""
    from ztunnel.steering import SteeringError, load

    if config.workers < 2 or config.worker_balance != "least-loaded":
        return None
    try:
        steering = load(config.workers)
    except SteeringError as err:
        log.warning(
            "worker steering unavailable, the kernel's hash spreads connections over the "
            "%d workers: %s%s",
            config.workers,
            err.message,
            f" ({err.hint})" if err.hint else "",
        )
        return None
    log.info("worker steering: least-loaded over %d workers (eBPF)", config.workers)
    return steering


def _lean_log_records() -> None:
    """Log records without what ztunnel's lines never show (the logging HOWTO's advice).

    An access line per connection and side goes through :mod:`logging`: finding the
    caller's frame, the thread and the process id for each cost more than the line.
    """
    logging._srcfile = None  # no caller lookup: the format names no file or line
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


PROFILE_DIR_ENV = "ZTUNNEL_PROFILE_DIR"
"""When set, every ztunnel process (each worker) runs under cProfile and writes
``<dir>/ztunnel-<pid>.prof`` when it ends (``python -m pstats`` reads it)."""


@contextlib.contextmanager
def _profiled() -> Iterator[None]:
    directory = os.environ.get(PROFILE_DIR_ENV)
    if not directory:
        yield
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        Path(directory).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(Path(directory) / f"ztunnel-{os.getpid()}.prof"))


SECTIONS = {
    "workloads": (
        "workloads",
        ["namespace", "name", "workloadIps", "node", "protocol", "serviceAccount", "status"],
    ),
    "services": ("services", ["namespace", "name", "vips", "ports", "endpoints", "waypoint"]),
    "policies": ("policies", ["namespace", "name", "scope", "action", "rules", "dryRun"]),
    "certificates": (
        "certificates",
        ["identity", "state", "serial", "validFrom", "expirationTime"],
    ),
}


def _fetch(admin_url: str) -> dict[str, Any]:
    from ztunnel.errors import ZtunnelError

    url = admin_url.rstrip("/") + "/config_dump"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local admin URL
            data = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ZtunnelError(
            f"cannot read {url}: {err}",
            hint="is ztunnel running in this network namespace? Its admin is on 127.0.0.1:15000",
        ) from err
    assert isinstance(data, dict)
    return data


def _rows(section: str, dump: dict[str, Any]) -> list[dict[str, Any]]:
    key, columns = SECTIONS[section]
    rows = []
    for item in dump.get(key, []):
        row = dict(item)
        if section == "certificates":
            chain = row.get("certChain") or [{}]
            row.update(
                {
                    "serial": chain[0].get("serialNumber"),
                    "validFrom": chain[0].get("validFrom"),
                    "expirationTime": chain[0].get("expirationTime"),
                }
            )
        if section == "services":
            row["endpoints"] = len(row.get("endpoints", {}))
        if section == "policies":
            row["rules"] = len(row.get("rules", []))
        rows.append({c: row.get(c) for c in columns})
    return rows


def _log_level(admin_url: str, *, level: str | None, reset: bool) -> str:
    """POST ``/logging`` (reading, setting or resetting the level); the level it reports."""
    from ztunnel.errors import ZtunnelError

    query = ""
    if reset:
        query = "?reset"
    elif level:
        query = "?" + urllib.parse.urlencode({"level": level})
    url = admin_url.rstrip("/") + "/logging" + query
    request = urllib.request.Request(url, method="POST")  # noqa: S310 - a local admin URL
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            text = str(response.read().decode(errors="replace")).strip()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace").strip()
        raise ZtunnelError(
            f"ztunnel refused {url}: {detail or err.reason}",
            hint=f"levels: {', '.join(LOG_LEVEL_NAMES)} (Istio's scope:level form is taken too)",
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise ZtunnelError(
            f"cannot reach {url}: {err}",
            hint="is ztunnel running in this network namespace? Its admin is on 127.0.0.1:15000",
        ) from err
    prefix = "current log level is "
    if not text.startswith(prefix):
        raise ZtunnelError(f"unexpected answer from {url}: {text[:200]!r}")
    return text[len(prefix) :]


@click.command(name="ztunnel-config")
@click.argument("section", type=click.Choice([*SECTIONS, "all", "log"]))
@click.option(
    "--admin-url",
    default="http://127.0.0.1:15000",
    show_default=True,
    help="ztunnel's admin endpoint.",
)
@click.option("--level", help="log: set ztunnel's log level (error, warn, info, debug, off).")
@click.option("--reset", is_flag=True, help="log: back to the level ztunnel started with.")
@output_option
def config_cli(section: str, admin_url: str, level: str | None, reset: bool, output: str) -> None:
    """Show what a ztunnel knows, like istioctl ztunnel-config.

    SECTION is workloads, services, policies, certificates or all; or log, which
    shows the log level (and sets it with --level, or resets it with --reset: every
    worker follows within half a second).
    """
    if section != "log" and (level or reset):
        raise click.UsageError("--level and --reset go with the log section only")
    if level and reset:
        raise click.UsageError("give --level or --reset, not both")
    if section == "log":
        current = _log_level(admin_url, level=level, reset=reset)
        if output == "table":
            click.echo(f"current log level is {current}")
        else:
            emit({"level": current}, output)
        return
    dump = _fetch(admin_url)
    if section == "all":
        if output == "table":
            for name in SECTIONS:
                click.echo(f"# {name}")
                emit(_rows(name, dump), output, SECTIONS[name][1])
            return
        emit(dump, output)
        return
    if output == "table":
        emit(_rows(section, dump), output, SECTIONS[section][1])
    else:
        emit(dump.get(SECTIONS[section][0], []), output)
