"""The Vagrantfile parses and validates (`vagrant validate`, offline, no provider needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT = shutil.which("vagrant")

pytestmark = pytest.mark.skipif(
    VAGRANT is None, reason="vagrant is not installed (make setup installs Debian's package)"
)


def _validate(cwd: Path) -> subprocess.CompletedProcess[str]:
    assert VAGRANT is not None
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_HOME": str(cwd / ".vh")}
    return subprocess.run(
        # --ignore-provider: no VirtualBox or libvirt plugin here; their blocks are skipped
        [VAGRANT, "validate", "--ignore-provider"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_vagrantfile_validates(tmp_path: Path) -> None:
    (tmp_path / "Vagrantfile").write_text((REPO / "Vagrantfile").read_text())
    done = _validate(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout


def test_validate_catches_a_broken_vagrantfile(tmp_path: Path) -> None:
    text = (REPO / "Vagrantfile").read_text().replace("vm.vm.hostname", "vm.vm.hostnmae")
    (tmp_path / "Vagrantfile").write_text(text)
    done = _validate(tmp_path)
    assert done.returncode != 0
    assert "hostnmae" in done.stdout + done.stderr


def test_two_vms_and_both_providers() -> None:
    text = (REPO / "Vagrantfile").read_text()
    assert 'config.vm.provider "libvirt"' in text
    assert 'config.vm.provider "virtualbox"' in text
    assert '"node1" =>' in text and '"node2" =>' in text
    assert "make test" in text and "ambient agent check" in text
