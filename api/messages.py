"""The one door to the generated protobuf code of ``api/gen`` (see api/README.md).

Generated modules are imported here by name, so that type checking never reads the
generated stubs (they lean on protobuf's untyped internals). Callers get the message
classes from this module, and the type URLs and resource names that go with them.
A checkout that has not run ``make setup`` gets one clear error instead of an
``ImportError`` from deep inside.
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
from types import ModuleType
from typing import Any

from ambient.errors import AmbientError

ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
"""Delta-xDS type of workloads and services."""
AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"
"""Delta-xDS type of L4 policies."""


class GeneratedCodeMissing(AmbientError):
    """``api/gen`` has not been generated (or is stale)."""


def _load(module: str) -> ModuleType:
    try:
        return importlib.import_module(f"api.gen.{module}")
    except ImportError as err:
        raise GeneratedCodeMissing(
            f"generated protobuf code api/gen/{module.replace('.', '/')}.py is missing ({err})",
            hint="run 'make setup' (or '.venv/bin/python -m ambient.buildenv prepare')",
        ) from err


workload: Any = _load("istio.workload.workload_pb2")
"""``istio.workload``: Address, Workload, Service, Port, PortList, NetworkAddress, ..."""
security: Any = _load("istio.security.authorization_pb2")
"""``istio.security``: Authorization, Rule, Clause, Match, StringMatch, Address, ..."""


def workload_resource_name(uid: str) -> str:
    """The xDS name of a workload Address resource: its uid."""
    return uid


def service_resource_name(namespace: str, hostname: str) -> str:
    """The xDS name of a service Address resource: ``<namespace>/<hostname>``."""
    return f"{namespace}/{hostname}"


def authorization_resource_name(namespace: str, name: str) -> str:
    """The xDS name of an Authorization resource: ``<namespace>/<name>``."""
    return f"{namespace}/{name}"


_ADDRESS_FIELDS = frozenset({"address", "addresses"})


def to_readable_dict(message: Any) -> dict[str, Any]:
    """A message as JSON-ready data (camelCase keys), with raw addresses as IP text."""
    from google.protobuf import json_format

    data: dict[str, Any] = json_format.MessageToDict(message)
    result = _readable(data, "")
    assert isinstance(result, dict)
    return result


def _readable(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _readable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_readable(v, key) for v in value]
    if key in _ADDRESS_FIELDS and isinstance(value, str):
        raw = base64.b64decode(value)
        if len(raw) in (4, 16):
            return str(ipaddress.ip_address(raw))
    return value
