"""``envoy --mode validate`` of a configuration, for the tests that let Envoy judge ours."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ambient.errors import AmbientError
from bench.envoy.proxy import envoy_argv, envoy_binary


def envoy_validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` of ``config`` (written to ``path``); skips the test when
    the envoy binary cannot run here."""
    try:
        binary = envoy_binary()
        subprocess.run([str(binary), "--version"], capture_output=True, timeout=30, check=True)
    except (AmbientError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the envoy binary cannot run here: {err}")
    path.write_text(json.dumps(config))
    return subprocess.run(
        envoy_argv(path, concurrency=1, mode="validate"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
