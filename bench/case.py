"""The case API: what a benchmark declares and what the harness asks of it.

A :class:`Case` measures one data path under several :class:`Variant` s (exactly one
is the baseline), with one or more :class:`Probe` s (bulk throughput, request/response
latency, ...), each yielding named :class:`Metric` s. The harness (``bench.runner``)
builds the case's environment once, then for every round and every probe runs each
variant in turn (rotating the order each round) and keeps every sample; medians and
ratios to the baseline come from ``bench.stats``.

Writing a case::

    @register
    class MyCase(Case):
        name = "my-case"
        description = "what it measures"
        data_path = "client pod -> ... -> server pod"
        variants = (Variant("iptables", "...", baseline=True), Variant("ebpf", "..."))
        probes = (Probe("rr", "...", (Metric("p50", "us", higher_is_better=False, ...),)),)

        @contextmanager
        def environment(self, settings: RunSettings) -> Iterator[None]:
            ...  # build the lab, start servers; always tear down
            yield

        def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
            return {"p50": 42.0}

Modules under ``bench/cases/`` are imported by :func:`load_cases`, so a new file there
that calls :func:`register` is picked up by ``make bench`` without other edits.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from bench.errors import CaseDefinitionError, UnknownCaseError

Measurement = Mapping[str, float]
"""What one measurement returns: metric name -> value (in the metric's unit)."""


@dataclass(frozen=True)
class Metric:
    """One number a probe reports."""

    name: str
    """Key in the measurement, unique within its probe (e.g. ``p99_us``)."""
    unit: str
    """Unit for tables and plots (``Gbit/s``, ``us``, ``conn/s``, ``s``, ``MB``)."""
    higher_is_better: bool
    """Direction: throughput is better higher, latency lower."""
    description: str
    """One sentence: what it is and what bounds it."""
    cost: bool = False
    """A resource figure (CPU, memory) rather than the probe's result; reported apart."""


@dataclass(frozen=True)
class Probe:
    """One kind of load (a bulk transfer, a request/response loop, ...)."""

    name: str
    """Short identifier, unique within its case (e.g. ``bulk-1``)."""
    description: str
    """What load is applied, with which tool, and what bounds the figure."""
    metrics: tuple[Metric, ...]
    """The numbers every measurement of this probe returns."""

    def metric(self, name: str) -> Metric:
        """The metric called ``name``."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"probe {self.name!r} has no metric {name!r}")


@dataclass(frozen=True)
class Variant:
    """One way of carrying the traffic (direct, through Envoy, through ztunnel, ...)."""

    name: str
    """Short identifier, unique within its case (e.g. ``direct``)."""
    description: str
    """The data path in words."""
    baseline: bool = False
    """The variant every other one is divided by; exactly one per case."""


@dataclass(frozen=True)
class RunSettings:
    """What the harness tells a case about this run."""

    rounds: int
    """How many times each (probe, variant) pair is measured."""
    duration_s: float
    """Length of one measurement (the load loop's time bound)."""
    quick: bool
    """Smoke-test mode (1 round, short measurements): figures are only indicative."""
    work_dir: Path
    """A folder of this case's own for certificates, configs and logs."""
    lab_prefix: str
    """Prefix for any lab the case builds, so concurrent runs never clash."""


class Case(abc.ABC):
    """A benchmark: a data path, its variants, its probes.

    Subclasses set the class attributes and implement :meth:`environment` and
    :meth:`measure`; :meth:`activate` is for cases whose variants cannot all be live at
    once (it wraps every single measurement of a variant).
    """

    name: ClassVar[str]
    """Identifier used by ``--case``."""
    description: ClassVar[str]
    """What the case measures, for the report and README."""
    data_path: ClassVar[str]
    """Which path the bytes take (namespaces, proxies, veths)."""
    variants: ClassVar[tuple[Variant, ...]]
    probes: ClassVar[tuple[Probe, ...]]

    @abc.abstractmethod
    def environment(self, settings: RunSettings) -> AbstractContextManager[None]:
        """Build everything the measurements need; tear it all down on exit."""

    def activate(self, variant: Variant) -> AbstractContextManager[None]:
        """Make ``variant`` live for one measurement (default: nothing to do)."""
        del variant
        return contextlib.nullcontext()

    def notes(self) -> tuple[str, ...]:
        """Lines for the report, asked for after the environment is torn down.

        For whole-run figures that are not per-measurement samples (for example each
        proxy's total CPU seconds and peak RSS over the run).
        """
        return ()

    @abc.abstractmethod
    def measure(self, variant: Variant, probe: Probe, round_index: int) -> Measurement:
        """Apply ``probe``'s load through ``variant`` once, bounded in time; return metrics."""

    def baseline(self) -> Variant:
        """The baseline variant."""
        return next(v for v in self.variants if v.baseline)

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"case {self.name!r} has no variant {name!r}")


def check_case(case: Case) -> None:
    """Raise :class:`CaseDefinitionError` unless the case's declarations are consistent."""
    where = f"benchmark case {getattr(case, 'name', type(case).__name__)!r}"
    for attr in ("name", "description", "data_path", "variants", "probes"):
        if not hasattr(case, attr):
            raise CaseDefinitionError(f"{where} does not set {attr!r}")
    baselines = [v.name for v in case.variants if v.baseline]
    if len(baselines) != 1:
        raise CaseDefinitionError(
            f"{where} has {len(baselines)} baseline variants ({baselines}); it needs exactly one",
            hint="mark one Variant(..., baseline=True)",
        )
    names = [v.name for v in case.variants]
    if len(set(names)) != len(names):
        raise CaseDefinitionError(f"{where} repeats a variant name: {names}")
    probe_names = [p.name for p in case.probes]
    if not probe_names or len(set(probe_names)) != len(probe_names):
        raise CaseDefinitionError(f"{where} needs probes with unique names, has {probe_names}")
    for probe in case.probes:
        metric_names = [m.name for m in probe.metrics]
        if not metric_names or len(set(metric_names)) != len(metric_names):
            raise CaseDefinitionError(
                f"{where}, probe {probe.name!r}: metrics must be unique and non-empty, "
                f"got {metric_names}"
            )


CaseT = TypeVar("CaseT", bound=type[Case])

_REGISTRY: dict[str, Callable[[], Case]] = {}


def register(cls: CaseT) -> CaseT:
    """Class decorator: make a :class:`Case` subclass selectable by its ``name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise CaseDefinitionError(f"two benchmark cases are called {name!r}")
    _REGISTRY[name] = cls
    return cls


def registered() -> dict[str, Callable[[], Case]]:
    """Every registered case factory by name (call :func:`load_cases` first)."""
    return dict(sorted(_REGISTRY.items()))


def load_cases(package: str = "bench.cases") -> dict[str, str]:
    """Import every module of ``package`` so their cases register.

    Returns the modules that could not be imported, with the reason, so one broken
    case (say, a missing kernel feature) is reported instead of stopping every other.
    """
    failures: dict[str, str] = {}
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        try:
            importlib.import_module(info.name)
        except Exception as err:  # a broken case module must not hide the others
            failures[info.name] = f"{type(err).__name__}: {err}"
    return failures


def select(names: tuple[str, ...]) -> list[Case]:
    """Instances of the named cases (all registered ones when ``names`` is empty)."""
    available = registered()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UnknownCaseError(
            f"unknown benchmark case(s): {', '.join(unknown)}",
            hint=f"known cases: {', '.join(available) or '(none)'}; see `python -m bench --list`",
        )
    chosen = names or tuple(available)
    cases = [available[n]() for n in chosen]
    for case in cases:
        check_case(case)
    return cases
