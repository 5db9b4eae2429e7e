"""Preflight checks name what is missing in one sentence."""

from __future__ import annotations

import pytest

from ambient import preflight
from ambient.errors import PreflightError


def test_require_names_the_missing_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(PreflightError) as exc:
        preflight.require("root", what="ambient lab up")
    assert "ambient lab up needs root" in str(exc.value)
    assert exc.value.hint == "run it as root (sudo)"


def test_old_kernel_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.release", lambda: "5.4.0-100-generic")
    check = preflight.check_kernel_version()
    assert check.status == "FAIL"
    assert "5.7" in check.fix


def test_new_kernel_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.release", lambda: "6.8.0-31-generic")
    assert preflight.check_kernel_version().status == "PASS"


def test_all_checks_return_results() -> None:
    results = preflight.run_checks()
    assert [r.name for r in results] == list(preflight.CHECKS)
    assert all(r.status in {"PASS", "WARN", "FAIL"} for r in results)


def test_bcc_check_does_not_import_bcc() -> None:
    import sys

    had = "bcc" in sys.modules
    result = preflight.check_bcc()
    assert result.status in {"PASS", "WARN", "FAIL"}
    if not had:
        assert "bcc" not in sys.modules, "the check must not load libbcc into the caller"


def test_bcc_missing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    check = preflight.check_bcc()
    assert check.status == "FAIL"
    assert "make setup" in check.fix


def test_main_is_silent_when_all_pass_and_one_sentence_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("platform.release", lambda: "6.8.0")
    assert preflight.main(["kernel"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setattr("platform.release", lambda: "5.4.0-100-generic")
    assert preflight.main(["kernel"]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: ambient-node needs kernel: Linux 5.4.0-100-generic")
    assert "\n" not in out
    assert preflight.main(["nonsense"]) == 2
