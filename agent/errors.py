"""The node agent's exception tree."""

from __future__ import annotations

from ambient.errors import AmbientError


class AgentError(AmbientError):
    """Base of every error the node agent reports."""


class KernelHeadersError(AgentError):
    """BCC has no kernel headers to compile our programs with."""


class ProgramLoadError(AgentError):
    """A capture program did not compile, load or pin."""


class AttachError(AgentError):
    """A program, qdisc, rule or route could not be put in place."""


class PinnedStateError(AgentError):
    """Pinned maps are missing, unreadable or of another layout."""


class ConfigError(AgentError):
    """The agent's configuration (flags, settings) is invalid."""

    exit_code = 2
