"""The lab's exceptions, rooted in :class:`ambient.errors.AmbientError`.

Each message names what was wrong and where; the hint says what to do. The CLI prints
them as one sentence plus a hint, without a traceback.
"""

from __future__ import annotations

from ambient.errors import AmbientError


class LabError(AmbientError):
    """Something about a lab went wrong."""


class LabSpecError(LabError):
    """A lab name, node count, pod or service definition is invalid."""

    exit_code = 2


class LabExistsError(LabError):
    """A lab (or a namespace carrying its prefix) with this name already exists."""


class LabNotFoundError(LabError):
    """No lab with this name is running (no state under the run folder)."""


class NoSuchObjectError(LabError):
    """A node, pod, namespace or service named by the caller is not in the lab."""


class LabNetworkError(LabError):
    """Creating or configuring a namespace, link, address or route failed."""


class LabProcessError(LabError):
    """A process in the lab could not be started, did not become ready, or timed out."""


class LabBusyError(LabError):
    """Another process holds the lab's state lock for too long."""
