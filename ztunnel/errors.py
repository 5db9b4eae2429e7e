"""ztunnel's exception tree, rooted in :class:`ambient.errors.AmbientError`.

Errors that travel on the wire carry the code the peer sees: an HTTP/2 error code
(RFC 9113 section 7) for connection and stream errors, an HTTP status for refused
tunnels, and Istio's ``response_flags`` value for what metrics record.
"""

from __future__ import annotations

from ambient.errors import AmbientError


class ZtunnelError(AmbientError):
    """Any failure inside ztunnel a user or operator can act on."""


class StateFileError(ZtunnelError):
    """The local state file (workloads, services, policies) is malformed.

    ``path`` is the file, ``entry`` names the object (``workloads[2]`` or its
    ``namespace/name``) and ``field`` the offending key, so the message points at
    the exact line to fix.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        entry: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = path
        if entry:
            where += f": {entry}"
        if field:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.entry = entry
        self.field = field


class IdentityError(ZtunnelError):
    """A SPIFFE identity or a certificate is invalid, missing or not the expected one.

    ``response_flag`` is what Istio's metrics record for a connection failing this way.
    """

    response_flag = "IDENTITY_ERROR"


class InvalidSpiffeIdError(IdentityError):
    """A string is not a ``spiffe://<td>/ns/<ns>/sa/<sa>`` identity."""


class CertificateError(IdentityError):
    """A certificate, key or CSR cannot be used (unparsable, no SAN, wrong key type)."""

    response_flag = "TLS_FAILURE"


class PeerIdentityError(IdentityError):
    """The TLS peer proved an identity, but not one we were willing to talk to."""


class HboneError(ZtunnelError):
    """A peer broke the HBONE (HTTP/2 CONNECT) protocol.

    ``error_code`` is the HTTP/2 error code sent in RST_STREAM or GOAWAY;
    ``stream_id`` is ``None`` when the whole connection is affected.
    """

    response_flag = "H2_HANDSHAKE_FAILURE"

    def __init__(
        self,
        message: str,
        *,
        error_code: int,
        stream_id: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.error_code = error_code
        self.stream_id = stream_id


class HboneConnectionError(HboneError):
    """The HTTP/2 connection is unusable; a GOAWAY with ``error_code`` was queued."""


class HboneStreamError(HboneError):
    """One tunnel (stream) failed; the connection serves other streams on."""


class PoolError(ZtunnelError):
    """The HBONE connection pool was asked something inconsistent (unknown connection)."""


class ConfigError(ZtunnelError):
    """A configuration value (flag or environment) is invalid."""

    exit_code = 2


class XdsResourceError(ZtunnelError):
    """A workload-API resource cannot be used; the xDS client NACKs it with this message."""

    def __init__(self, message: str, *, resource: str, field: str | None = None) -> None:
        where = f"resource {resource!r}" + (f" field {field!r}" if field else "")
        super().__init__(f"{where}: {message}", hint="the control plane sent an invalid resource")
        self.resource = resource
        self.field = field


class XdsStreamError(ZtunnelError):
    """The control plane ended the xDS stream with a gRPC status (e.g. UNAUTHENTICATED)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}", hint="see the control plane's log for the reason")
        self.code = code
        self.details = details
