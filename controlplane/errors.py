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


class CaError(ControlPlaneError):
    """The certificate authority cannot start or cannot sign."""


class CaConfigError(CaError):
    """The CA's key, certificate or chain (given or kept in the state folder) is unusable."""


class CsrRejected(CaError):
    """A certificate signing request is malformed or asks for something it may not."""


class AuthenticationError(ControlPlaneError):
    """A caller presented no credential, or one that does not verify (gRPC UNAUTHENTICATED)."""


class ImpersonationDenied(ControlPlaneError):
    """An authenticated node asked for an identity that has no pod on that node."""
