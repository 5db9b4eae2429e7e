"""Errors of the L7 translation (Istio's routing API to Envoy resources)."""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.errors import ControlPlaneError
from controlplane.sources.fields import Problem


class L7ConfigError(ControlPlaneError):
    """A ``VirtualService`` or ``DestinationRule`` whose spec cannot be translated.

    ``problems`` keeps every field found wrong in one pass, each with its dotted path.
    """

    def __init__(self, kind: str, namespace: str, name: str, problems: Sequence[Problem]) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.problems = tuple(problems)
        listed = "; ".join(f"{p.field}: {p.message}" for p in self.problems)
        super().__init__(
            f"{kind} {namespace}/{name}: {listed}",
            hint=f"fix the listed fields of {kind} {name} in namespace {namespace}",
        )
