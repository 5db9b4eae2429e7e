"""``ambient waypoint run``: the click command (``waypoint/cli.py`` adds it to its group).

The flags map onto :class:`~waypoint.run.RunConfig`; defaults come from the pod's
environment as the lab sets it (``POD_NAMESPACE``, ``SERVICE_ACCOUNT``,
``GATEWAY_NAME``, ``INSTANCE_IP``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import click

from waypoint.bootstrap import DEFAULT_SERVER_NAME, WaypointConfig
from waypoint.errors import WaypointError


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise WaypointError(
            f"{what} {text!r} is not host:port", hint=f"pass {what} like 10.0.0.1:9411"
        )
    return host.strip("[]"), int(port)


@click.command("run")
@click.option("--namespace", envvar="POD_NAMESPACE", required=True, help="The pod's namespace.")
@click.option(
    "--service-account", envvar="SERVICE_ACCOUNT", default="", help="Default: the gateway name."
)
@click.option("--gateway-name", envvar="GATEWAY_NAME", required=True, help="The Gateway's name.")
@click.option(
    "--kind", type=click.Choice(["waypoint", "gateway"]), default="waypoint", show_default=True
)
@click.option(
    "--instance-ip", "instance_ips", multiple=True, envvar="INSTANCE_IP", help="The pod's IP(s)."
)
@click.option("--xds-address", required=True, help="The control plane's ADS, host:port (15012).")
@click.option(
    "--xds-root-cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The mesh root (root-cert.pem).",
)
@click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The node's bearer token ('ambient controlplane node-credential NODE').",
)
@click.option("--xds-server-name", default=DEFAULT_SERVER_NAME, show_default=True)
@click.option(
    "--xds-api",
    type=click.Choice(["delta", "sotw"]),
    default="delta",
    show_default=True,
    help="Incremental or state-of-the-world ADS.",
)
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--admin-port", default=15000, show_default=True, type=int)
@click.option("--telemetry-port", default=15030, show_default=True, type=int)
@click.option("--metrics-port", default=15020, show_default=True, type=int)
@click.option("--collector", default="", help="Trace collector host:port (default: no tracing).")
@click.option(
    "--cluster-folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="The cluster folder the exporter names workloads from.",
)
@click.option("--telemetry/--no-telemetry", default=True, show_default=True)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the bootstrap is written (default: a new temporary directory).",
)
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--envoy-log-level", default="warning", show_default=True)
@click.option(
    "--drain-seconds",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="On SIGTERM, the longest wait for Envoy's connections to end after its listeners "
    "stop accepting (keep it under the pod's terminationGracePeriodSeconds; 0: no drain). "
    "A second signal stops at once.",
)
def run(**flags: Any) -> None:
    """Run a waypoint's (or gateway's) Envoy, configured over xDS by the control plane."""
    from waypoint.run import RunConfig
    from waypoint.run import run as run_waypoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    collector = flags["collector"]
    proxy = WaypointConfig(
        namespace=flags["namespace"],
        service_account=flags["service_account"] or flags["gateway_name"],
        gateway_name=flags["gateway_name"],
        kind="gateway" if flags["kind"] == "gateway" else "waypoint",
        instance_ips=tuple(ip for value in flags["instance_ips"] for ip in value.split(",") if ip),
        xds_address=flags["xds_address"],
        root_cert=flags["xds_root_cert"],
        token_file=flags["auth_token_file"],
        xds_server_name=flags["xds_server_name"],
        ads_api="GRPC" if flags["xds_api"] == "sotw" else "DELTA_GRPC",
        admin_port=flags["admin_port"],
        telemetry_port=flags["telemetry_port"],
        collector=_host_port(collector, "--collector") if collector else None,
    )
    exporter = None
    if flags["telemetry"]:
        from waypoint.telemetry import ExporterConfig

        exporter = ExporterConfig(
            access_log_address=("127.0.0.1", flags["telemetry_port"]),
            metrics_address=("0.0.0.0", flags["metrics_port"]),
            cluster_folder=flags["cluster_folder"],
            trust_domain=flags["trust_domain"],
            proxy_kind=proxy.kind,
            pod_ip=proxy.instance_ips[0] if proxy.instance_ips else "",
        )
    work_dir = flags["work_dir"] or Path(tempfile.mkdtemp(prefix="ambient-waypoint-"))
    run_waypoint(
        RunConfig(
            proxy=proxy,
            work_dir=work_dir,
            concurrency=flags["concurrency"],
            log_level=flags["envoy_log_level"],
            exporter=exporter,
            drain_seconds=flags["drain_seconds"],
        )
    )
