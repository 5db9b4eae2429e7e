"""Typed doors to the delta-xDS and CA wire messages (``xds-protos`` and ``api/istio/ca``).

The gRPC shells of the control plane and of ztunnel move bytes; these functions turn
those bytes into frozen dataclasses and back, so that nothing past this module touches
a generated message (``envoy.service.discovery.v3``, ``istio.v1.auth``). Malformed
bytes raise :class:`WireFormatError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.errors import AmbientError

DELTA_ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
"""The gRPC method path of delta ADS (bidirectional stream)."""
SOTW_ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
"""The gRPC method path of state-of-the-world ADS (bidirectional stream)."""
CA_METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
"""The gRPC method path of Istio's CA (unary)."""
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
"""The CA request metadata key naming the identity a node asks for (Istio's name)."""


class WireFormatError(AmbientError):
    """Bytes on a gRPC stream are not the message they should be."""


@dataclass(frozen=True)
class DeltaRequest:
    """One ``DeltaDiscoveryRequest``: a subscription, an ACK or a NACK."""

    type_url: str
    """The resource type this request is about."""
    node_id: str = ""
    """``node.id`` (sent on the first request of a stream; empty after)."""
    node_metadata: Mapping[str, str] = field(default_factory=dict)
    """``node.metadata`` entries whose values are strings (NAME, NAMESPACE, NODE_NAME...)."""
    subscribe: tuple[str, ...] = ()
    """``resource_names_subscribe`` (empty on the first request: wildcard)."""
    unsubscribe: tuple[str, ...] = ()
    """``resource_names_unsubscribe``."""
    initial_versions: Mapping[str, str] = field(default_factory=dict)
    """``initial_resource_versions``: what the client still holds after a reconnect."""
    response_nonce: str = ""
    """The nonce of the response this request acknowledges (empty on a first request)."""
    error: str | None = None
    """``error_detail.message`` of a NACK; None for an ACK or a subscription."""


@dataclass(frozen=True)
class Resource:
    """One resource of a delta response: its name, version and serialized message."""

    name: str
    version: str
    value: bytes
    """The inner message (``Address``, ``Authorization``), serialized."""


@dataclass(frozen=True)
class DeltaResponse:
    """One ``DeltaDiscoveryResponse``: resources added or changed, names removed."""

    type_url: str
    nonce: str
    resources: tuple[Resource, ...] = ()
    removed: tuple[str, ...] = ()
    system_version: str = ""


def _discovery() -> Any:
    from envoy.service.discovery.v3 import discovery_pb2

    return discovery_pb2


def _parse(cls: Any, data: bytes, what: str) -> Any:
    from google.protobuf.message import DecodeError

    try:
        return cls.FromString(data)
    except DecodeError as err:
        raise WireFormatError(f"cannot decode a {what}: {err}") from err


def _strings(struct: Any) -> dict[str, str]:
    """The string-valued entries of a ``google.protobuf.Struct``."""
    return {
        str(key): str(value.string_value)
        for key, value in struct.fields.items()
        if value.WhichOneof("kind") == "string_value"
    }


def encode_request(request: DeltaRequest) -> bytes:
    """Serialize a :class:`DeltaRequest`."""
    d = _discovery()
    msg = d.DeltaDiscoveryRequest(
        type_url=request.type_url,
        resource_names_subscribe=list(request.subscribe),
        resource_names_unsubscribe=list(request.unsubscribe),
        initial_resource_versions=dict(request.initial_versions),
        response_nonce=request.response_nonce,
    )
    if request.node_id:
        msg.node.id = request.node_id
        for key, value in request.node_metadata.items():
            msg.node.metadata.fields[key].string_value = value
    if request.error is not None:
        msg.error_detail.code = 3  # INVALID_ARGUMENT, as Envoy and ztunnel send
        msg.error_detail.message = request.error
    data: bytes = msg.SerializeToString()
    return data


def decode_request(data: bytes) -> DeltaRequest:
    """Parse a ``DeltaDiscoveryRequest``."""
    msg = _parse(_discovery().DeltaDiscoveryRequest, data, "DeltaDiscoveryRequest")
    metadata = _strings(msg.node.metadata)
    nack = msg.HasField("error_detail") and (msg.error_detail.code or msg.error_detail.message)
    return DeltaRequest(
        type_url=str(msg.type_url),
        node_id=str(msg.node.id),
        node_metadata=metadata,
        subscribe=tuple(msg.resource_names_subscribe),
        unsubscribe=tuple(msg.resource_names_unsubscribe),
        initial_versions=dict(msg.initial_resource_versions),
        response_nonce=str(msg.response_nonce),
        error=(str(msg.error_detail.message) or "rejected") if nack else None,
    )


def encode_response(response: DeltaResponse) -> bytes:
    """Serialize a :class:`DeltaResponse`, each resource packed in an ``Any``."""
    d = _discovery()
    msg = d.DeltaDiscoveryResponse(
        type_url=response.type_url,
        nonce=response.nonce,
        system_version_info=response.system_version,
        removed_resources=list(response.removed),
    )
    for resource in response.resources:
        entry = msg.resources.add(name=resource.name, version=resource.version)
        entry.resource.type_url = response.type_url
        entry.resource.value = resource.value
    data: bytes = msg.SerializeToString()
    return data


def decode_response(data: bytes) -> DeltaResponse:
    """Parse a ``DeltaDiscoveryResponse``; a resource of another type is an error."""
    msg = _parse(_discovery().DeltaDiscoveryResponse, data, "DeltaDiscoveryResponse")
    resources = []
    for entry in msg.resources:
        if entry.HasField("resource") and entry.resource.type_url != msg.type_url:
            raise WireFormatError(
                f"resource {entry.name!r} is a {entry.resource.type_url}, "
                f"in a response of type {msg.type_url}"
            )
        resources.append(Resource(str(entry.name), str(entry.version), bytes(entry.resource.value)))
    return DeltaResponse(
        type_url=str(msg.type_url),
        nonce=str(msg.nonce),
        resources=tuple(resources),
        removed=tuple(msg.removed_resources),
        system_version=str(msg.system_version_info),
    )


# --- state of the world (Envoy's ``ads_config.api_type: GRPC``) -----------------------


@dataclass(frozen=True)
class DiscoveryRequest:
    """One state-of-the-world ``DiscoveryRequest``: a subscription, an ACK or a NACK."""

    type_url: str
    version_info: str = ""
    """The version the client last accepted for this type (empty before the first)."""
    node_id: str = ""
    node_metadata: Mapping[str, str] = field(default_factory=dict)
    resource_names: tuple[str, ...] = ()
    """The whole subscription (empty for Listener and Cluster: every resource)."""
    response_nonce: str = ""
    error: str | None = None
    """``error_detail.message`` of a NACK; None for an ACK or a subscription."""


@dataclass(frozen=True)
class DiscoveryResponse:
    """One state-of-the-world ``DiscoveryResponse``."""

    type_url: str
    nonce: str
    version_info: str
    resources: tuple[Resource, ...] = ()


def encode_discovery_request(request: DiscoveryRequest) -> bytes:
    """Serialize a :class:`DiscoveryRequest`."""
    msg = _discovery().DiscoveryRequest(
        type_url=request.type_url,
        version_info=request.version_info,
        resource_names=list(request.resource_names),
        response_nonce=request.response_nonce,
    )
    if request.node_id:
        msg.node.id = request.node_id
        for key, value in request.node_metadata.items():
            msg.node.metadata.fields[key].string_value = value
    if request.error is not None:
        msg.error_detail.code = 3
        msg.error_detail.message = request.error
    data: bytes = msg.SerializeToString()
    return data


def decode_discovery_request(data: bytes) -> DiscoveryRequest:
    """Parse a ``DiscoveryRequest``."""
    msg = _parse(_discovery().DiscoveryRequest, data, "DiscoveryRequest")
    nack = msg.HasField("error_detail") and (msg.error_detail.code or msg.error_detail.message)
    return DiscoveryRequest(
        type_url=str(msg.type_url),
        version_info=str(msg.version_info),
        node_id=str(msg.node.id),
        node_metadata=_strings(msg.node.metadata),
        resource_names=tuple(msg.resource_names),
        response_nonce=str(msg.response_nonce),
        error=(str(msg.error_detail.message) or "rejected") if nack else None,
    )


def encode_discovery_response(response: DiscoveryResponse) -> bytes:
    """Serialize a :class:`DiscoveryResponse`, each resource packed in an ``Any``."""
    msg = _discovery().DiscoveryResponse(
        type_url=response.type_url, nonce=response.nonce, version_info=response.version_info
    )
    for resource in response.resources:
        entry = msg.resources.add()
        entry.type_url = response.type_url
        entry.value = resource.value
    data: bytes = msg.SerializeToString()
    return data


def decode_discovery_response(data: bytes) -> DiscoveryResponse:
    """Parse a ``DiscoveryResponse`` (resource names are not on the wire: left empty)."""
    msg = _parse(_discovery().DiscoveryResponse, data, "DiscoveryResponse")
    resources = []
    for entry in msg.resources:
        if entry.type_url != msg.type_url:
            raise WireFormatError(
                f"a resource of type {entry.type_url} in a response of type {msg.type_url}"
            )
        resources.append(Resource("", "", bytes(entry.value)))
    return DiscoveryResponse(
        str(msg.type_url), str(msg.nonce), str(msg.version_info), tuple(resources)
    )


# --- CA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateRequest:
    """One ``IstioCertificateRequest``."""

    csr: str
    """The PEM CSR."""
    validity_seconds: int = 0
    """``validity_duration``; 0 means the CA's default."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """String entries of ``metadata`` (``ImpersonatedIdentity``)."""


def _ca() -> Any:
    from api.messages import GeneratedCodeMissing

    try:
        return importlib.import_module("api.gen.istio.ca.ca_pb2")
    except ImportError as err:
        raise GeneratedCodeMissing(
            f"generated protobuf code api/gen/istio/ca/ca_pb2.py is missing ({err})",
            hint="run 'make setup' (or '.venv/bin/python -m ambient.buildenv prepare')",
        ) from err


def encode_certificate_request(request: CertificateRequest) -> bytes:
    """Serialize an ``IstioCertificateRequest``."""
    msg = _ca().IstioCertificateRequest(csr=request.csr, validity_duration=request.validity_seconds)
    for key, value in request.metadata.items():
        msg.metadata.fields[key].string_value = value
    data: bytes = msg.SerializeToString()
    return data


def decode_certificate_request(data: bytes) -> CertificateRequest:
    """Parse an ``IstioCertificateRequest``."""
    msg = _parse(_ca().IstioCertificateRequest, data, "IstioCertificateRequest")
    metadata = _strings(msg.metadata)
    return CertificateRequest(str(msg.csr), int(msg.validity_duration), metadata)


def encode_certificate_response(chain: tuple[str, ...]) -> bytes:
    """Serialize an ``IstioCertificateResponse`` (PEM strings, leaf first)."""
    data: bytes = _ca().IstioCertificateResponse(cert_chain=list(chain)).SerializeToString()
    return data


def decode_certificate_response(data: bytes) -> tuple[str, ...]:
    """Parse an ``IstioCertificateResponse`` into its PEM chain (leaf first)."""
    msg = _parse(_ca().IstioCertificateResponse, data, "IstioCertificateResponse")
    return tuple(str(pem) for pem in msg.cert_chain)
