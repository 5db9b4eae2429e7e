"""Security scan (checkov), yamllint and hadolint over deploy/ (offline once installed).

checkov lives in its own virtual environment (its pins clash with ours); the first run
on a machine installs it from deploy/checkov-requirements.txt (a registry is needed then).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy import checks

pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")


@pytest.fixture(scope="module")
def non_default_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deploy") / "non-default.yaml"
    path.write_text(checks.manifest_text(checks.NON_DEFAULT_VALUES))
    return path


@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["committed", "non-default"])
def test_checkov_finds_nothing_unjustified(which: str, non_default_manifest: Path) -> None:
    path = checks.MANIFEST if which == "committed" else non_default_manifest
    report = checks.checkov_report(path)
    assert report.failed == ()
    assert report.passed > 100
    assert report.skipped, "the scan ran no check we justify: did checkov read the file?"
    for check_id, obj, why in report.skipped:
        assert len(why.split()) >= 3, f"{check_id} on {obj} is skipped without a reason"


@pytest.mark.timeout(900)
def test_checkov_reports_an_unjustified_finding(tmp_path: Path) -> None:
    text = re.sub(
        r"checkov.io/skip\d+: CKV_K8S_19=", "not-a-skip: CKV_K8S_19=", checks.MANIFEST.read_text()
    )
    assert text != checks.MANIFEST.read_text()
    path = tmp_path / "unjustified.yaml"
    path.write_text(text)
    failed = checks.checkov_report(path).failed
    assert [f.split()[0] for f in failed] == ["CKV_K8S_19"]


def test_yamllint_is_clean_on_our_yaml_and_renders(tmp_path: Path) -> None:
    rendered = tmp_path / "default.yaml"
    rendered.write_text(checks.manifest_text())
    files = [*checks.yaml_files(), rendered]
    assert checks.MANIFEST in files and checks.CHART / "values.yaml" in files
    assert checks.yamllint_problems(files) == []


def test_yamllint_reports_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\n")
    assert any("duplication" in p for p in checks.yamllint_problems([bad]))


def test_dockerfile_passes_hadolint() -> None:
    assert checks.DOCKERFILE.read_text().strip(), "deploy/Dockerfile is empty"
    assert checks.hadolint_problems() == []


def test_hadolint_reports_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install -y curl\n")
    found = checks.hadolint_problems(bad)
    assert any("DL3008" in p or "DL3006" in p for p in found), found
