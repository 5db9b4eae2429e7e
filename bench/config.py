"""The configuration of one benchmark run (built from the command line, then frozen)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchConfigError

DEFAULT_ROUNDS = 3
DEFAULT_DURATION_S = 3.0
QUICK_ROUNDS = 1
QUICK_DURATION_S = 1.0
MAX_DURATION_S = 60.0
MAX_ROUNDS = 50


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one ``python -m bench`` run."""

    cases: tuple[str, ...] = ()
    """Names of the cases to run; empty runs every registered case."""
    rounds: int = DEFAULT_ROUNDS
    """How many times each (probe, variant) pair is measured; medians are over these."""
    duration_s: float = DEFAULT_DURATION_S
    """Length of one measurement; every load loop stops at this bound."""
    quick: bool = False
    """Smoke-test mode: 1 round of 1 s unless rounds/duration are given explicitly."""
    results_root: Path = Path("bench/results")
    """Where run folders (``<UTC timestamp>/``) and the ``latest`` symlink go."""
    lab_prefix: str = "bnch"
    """Prefix of the labs the cases build (short: it ends up in interface names)."""
    plots: bool = True
    """Draw PNG plots (matplotlib, Agg backend) next to the Markdown report."""

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise BenchConfigError(
                f"--rounds must be between 1 and {MAX_ROUNDS}, got {self.rounds}"
            )
        if not 0.2 <= self.duration_s <= MAX_DURATION_S:
            raise BenchConfigError(
                f"--duration must be between 0.2 and {MAX_DURATION_S} s, got {self.duration_s}"
            )
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", self.lab_prefix):
            raise BenchConfigError(
                f"lab prefix {self.lab_prefix!r} must be 1-6 lowercase letters or digits",
                hint="it becomes part of namespace and interface names",
            )

    @classmethod
    def from_flags(
        cls,
        *,
        cases: tuple[str, ...],
        rounds: int | None,
        duration_s: float | None,
        quick: bool,
        results_root: Path,
        plots: bool = True,
        lab_prefix: str = "bnch",
    ) -> BenchConfig:
        """Apply the defaults of normal or ``--quick`` mode to what was not given."""
        default_rounds = QUICK_ROUNDS if quick else DEFAULT_ROUNDS
        default_duration = QUICK_DURATION_S if quick else DEFAULT_DURATION_S
        return cls(
            cases=cases,
            rounds=default_rounds if rounds is None else rounds,
            duration_s=default_duration if duration_s is None else duration_s,
            quick=quick,
            results_root=results_root,
            plots=plots,
            lab_prefix=lab_prefix,
        )
