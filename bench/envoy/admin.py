"""Reading a running Envoy's admin interface (on 127.0.0.1 inside its namespace)."""

from __future__ import annotations

import sys
import urllib.parse

from bench.errors import ToolError
from bench.procs import run_in_netns


def parse_envoy_stats(text: str) -> dict[str, int]:
    """Counters and gauges of Envoy's admin ``/stats`` text output (``name: value``)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def envoy_stats(netns: str, admin_port: int, name_filter: str) -> dict[str, int]:
    """Envoy's stats matching the regex ``name_filter``, read from its admin in ``netns``."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter={urllib.parse.quote(name_filter)}"
    code = (
        "import urllib.request\n"
        f"print(urllib.request.urlopen({url!r}, timeout=5).read().decode())\n"
    )
    run = run_in_netns(netns, [sys.executable, "-c", code], timeout_s=15)
    if run.returncode != 0:
        raise ToolError(f"cannot read Envoy stats in {netns}: {run.stderr.strip()[-300:]}")
    return parse_envoy_stats(run.stdout)


def handshake_summary(netns: str, admin_port: int) -> list[str]:
    """One line: the client sidecar's upstream TLS handshakes and how many were resumed."""
    stats = envoy_stats(netns, admin_port, r"^cluster\.outbound-.*\.ssl\.")
    handshakes = sum(v for k, v in stats.items() if k.endswith(".ssl.handshake"))
    resumed = sum(v for k, v in stats.items() if k.endswith(".ssl.session_reused"))
    errors = sum(v for k, v in stats.items() if k.endswith(".ssl.connection_error"))
    return [
        f"client sidecar: {handshakes} upstream TLS handshakes ({resumed} resumed "
        f"sessions, {errors} connection errors)"
    ]
