"""The waypoint component's exception tree."""

from __future__ import annotations

import signal

from ambient.errors import AmbientError


class WaypointError(AmbientError):
    """A waypoint or gateway process cannot be configured or run."""


class EnvoyExitedError(WaypointError):
    """The Envoy process of a waypoint or gateway ended."""

    def __init__(self, returncode: int, log_tail: str = "") -> None:
        lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
        worst = [line for line in lines if "[critical]" in line or "[error]" in line]
        last = (worst or lines or [""])[-1]
        if returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with status {returncode}"
        super().__init__(
            f"envoy {how}" + (f": {last}" if last else ""),
            hint="run 'envoy --mode validate -c <bootstrap>' on the written bootstrap, and "
            "check that the control plane at --xds-address is reachable",
        )
        self.returncode = returncode
