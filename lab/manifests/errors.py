"""Why a set of manifests was not applied; rooted in :class:`lab.errors.LabError`."""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.model import SourceIssue
from lab.errors import LabSpecError


class ManifestError(LabSpecError):
    """Manifests that cannot be applied: bad YAML, unknown kinds, fields, or images.

    The message lists every problem as ``file:line: kind/namespace/name: field: what``;
    nothing was applied.
    """

    def __init__(self, issues: Sequence[SourceIssue], *, hint: str | None = None) -> None:
        self.issues = tuple(issues)
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} in the manifests; nothing was applied"
        super().__init__(
            "\n".join([head, *(f"  {issue}" for issue in self.issues)]),
            hint=hint or "fix the fields named above and apply again",
        )
