"""The benchmark harness's exception tree, rooted in :class:`ambient.errors.AmbientError`."""

from __future__ import annotations

from ambient.errors import AmbientError


class BenchError(AmbientError):
    """Something stopped a benchmark run; the message names the case and what failed."""


class BenchConfigError(BenchError):
    """A flag of ``python -m bench`` is out of range."""

    exit_code = 2


class UnknownCaseError(BenchError):
    """A case name given with ``--case`` is not registered."""

    exit_code = 2


class CaseDefinitionError(BenchError):
    """A case declares variants, probes or metrics inconsistently (a programming error)."""


class ToolError(BenchError):
    """A load generator or proxy binary is missing, failed, or printed something unusable."""


class MeasurementError(BenchError):
    """A measurement produced no usable numbers (no requests completed, zero bytes)."""


class ResultsError(BenchError):
    """A results file cannot be read or does not have the shape the harness writes."""
