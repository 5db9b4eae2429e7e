"""The control plane's exception tree, rooted in :class:`ambient.errors.AmbientError`.

Problems with one object of the cluster's configuration are not exceptions: sources
report them as :class:`controlplane.model.SourceIssue` values and keep going. These
exceptions are for failures a caller must handle: an unreadable path, a cluster that
cannot be reached, a message that cannot be built.
"""

from __future__ import annotations

from ambient.errors import AmbientError


class ControlPlaneError(AmbientError):
    """Any control-plane failure a user can act on."""


class SourceError(ControlPlaneError):
    """A cluster source cannot be read at all (missing folder, no cluster access)."""


class FolderSourceError(SourceError):
    """The configuration folder or file does not exist or cannot be listed."""


class KubernetesSourceError(SourceError):
    """The Kubernetes API cannot be configured or reached."""
