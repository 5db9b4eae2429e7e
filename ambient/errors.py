"""The root of every component's exception tree.

Each component (agent, ztunnel, controlplane, lab, ...) derives its own tree from
:class:`AmbientError`. The CLI prints such errors as one clear sentence plus a hint and
exits non-zero; anything else escaping a command is a bug and is reported as one.
"""

from __future__ import annotations


class AmbientError(Exception):
    """An error a user can act on.

    ``hint`` says what to do about it (install a package, fix a field, run as root).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class PreflightError(AmbientError):
    """The machine lacks something the command needs (root, a kernel feature, a tool)."""

    exit_code = 2


class UsageError(AmbientError):
    """A flag, file or argument given by the user is wrong."""

    exit_code = 2
