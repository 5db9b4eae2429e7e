"""Security scan (checkov), yamllint and hadolint over deploy/ (offline once installed).

checkov lives in its own virtual environment (its pins clash with ours); the first run
on a machine installs it from deploy/checkov-requirements.txt into ~/.cache (a registry
is needed then, and about two minutes).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy import checks

pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, checks.CheckovReport]:
    """One checkov run (it takes seconds to start) over three manifests."""
    tmp = tmp_path_factory.mktemp("deploy")
    non_default = tmp / "non-default.yaml"
    non_default.write_text(checks.manifest_text(checks.NON_DEFAULT_VALUES))
    committed = checks.MANIFEST.read_text()
    unjustified = tmp / "unjustified.yaml"
    # the DaemonSet loses the annotation justifying host networking
    text = re.sub(r"checkov.io/skip\d+: CKV_K8S_19=", "not-a-skip: CKV_K8S_19=", committed)
    assert text != committed
    unjustified.write_text(text)
    reports = checks.checkov_reports([checks.MANIFEST, non_default, unjustified])
    by_name = {"committed": checks.MANIFEST, "non-default": non_default}
    return {
        **{name: reports[path.resolve()] for name, path in by_name.items()},
        "unjustified": reports[unjustified.resolve()],
    }


@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["committed", "non-default"])
def test_checkov_finds_nothing_unjustified(
    which: str, scans: dict[str, checks.CheckovReport]
) -> None:
    report = scans[which]
    assert report.failed == ()
    assert report.passed > 100
    assert report.skipped, "the scan ran no check we justify: did checkov read the file?"
    for check_id, obj, why in report.skipped:
        assert len(why.split()) >= 3, f"{check_id} on {obj} is skipped without a reason"


@pytest.mark.timeout(900)
def test_checkov_reports_an_unjustified_finding(scans: dict[str, checks.CheckovReport]) -> None:
    assert [f.split()[0] for f in scans["unjustified"].failed] == ["CKV_K8S_19"]


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


def test_the_image_copies_every_package_the_project_installs() -> None:
    """A package missing from the Dockerfile would import fine here and fail in the image."""
    import tomllib

    pyproject = tomllib.loads((checks.REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = set(re.findall(r"^COPY (\w+) \./\1$", checks.DOCKERFILE.read_text(), re.MULTILINE))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
