"""The node agent's exception tree."""

from __future__ import annotations

from ambient.errors import AmbientError


class AgentError(AmbientError):
    """Base of every error the node agent reports."""


class KernelHeadersError(AgentError):
    """BCC has no kernel headers to compile our programs with."""
