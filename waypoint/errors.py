"""The waypoint component's exception tree."""

from __future__ import annotations

from ambient.errors import AmbientError


class WaypointError(AmbientError):
    """A waypoint or gateway process cannot be configured or run."""


class EnvoyExitedError(WaypointError):
    """The Envoy process of a waypoint or gateway ended."""

    def __init__(self, returncode: int, log_tail: str = "") -> None:
        detail = f": {log_tail.strip().splitlines()[-1]}" if log_tail.strip() else ""
        super().__init__(
            f"envoy exited with status {returncode}{detail}",
            hint="run 'envoy --mode validate -c <bootstrap>' on the written bootstrap, and "
            "check that the control plane at --xds-address is reachable",
        )
        self.returncode = returncode
