"""Test tiers: unit (no root), integration (root: netns, BPF), e2e (lab scenarios).

Tests marked ``root`` skip with a reason when not run as root; tests marked ``bpf``
also skip, naming what is missing, when BCC or the kernel cannot load our programs.
Nothing passes silently: a skip always says why.
"""

from __future__ import annotations

import pytest

from ambient import preflight


def _skip_reason(marker: str) -> str | None:
    names = {"root": ("root", "netns"), "bpf": ("root", "kernel", "bpf", "bpffs", "bcc")}[marker]
    for check in preflight.run_checks(names):
        if check.status == "FAIL":
            return f"needs {check.name}: {check.detail} ({check.fix})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker in ("root", "bpf"):
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = _skip_reason(marker)
            reason = reasons[marker]
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
