"""When to ask for a workload certificate, as a pure state object.

Istio's rules: renew when half the validity has passed; on failure retry with
exponential backoff (capped at 150 s) and jitter; keep serving the old certificate
until it expires, so that rotation never drops a connection. The shell asks
:meth:`CertificateRotation.next_attempt` when to wake, calls the CA, and reports
:meth:`~CertificateRotation.issued` or :meth:`~CertificateRotation.failed`.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from ztunnel.identity.certs import CertifiedKey
from ztunnel.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff after a failed certificate request."""

    initial: dt.timedelta = dt.timedelta(seconds=1)
    """The delay after the first failure."""
    maximum: dt.timedelta = dt.timedelta(seconds=150)
    """The cap on any delay (Istio: 150 s)."""
    multiplier: float = 2.0
    """Growth per consecutive failure."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""


def refresh_time(cert: CertifiedKey) -> dt.datetime:
    """The half-life of ``cert``: ``not_before + (not_after - not_before) / 2``."""
    return cert.not_before + (cert.not_after - cert.not_before) / 2


def backoff_delay(failures: int, policy: RetryPolicy, rng: random.Random) -> dt.timedelta:
    """The delay after ``failures`` consecutive failures (``failures >= 1``)."""
    base = policy.initial * (policy.multiplier ** max(failures - 1, 0))
    base = min(base, policy.maximum)
    factor = rng.uniform(1 - policy.jitter, 1 + policy.jitter)
    return min(base * factor, policy.maximum)


class CertificateRotation:
    """The certificates of one identity over time, and when to request the next."""

    def __init__(
        self,
        identity: SpiffeId,
        now: dt.datetime,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._certs: list[CertifiedKey] = []
        self.failures = 0
        self.last_error: str | None = None
        self._next_attempt: dt.datetime = now

    def next_attempt(self) -> dt.datetime:
        """When the next certificate request should be made."""
        return self._next_attempt

    def due(self, now: dt.datetime) -> bool:
        """Whether a request should be made at ``now``."""
        return now >= self._next_attempt

    def issued(self, cert: CertifiedKey, now: dt.datetime) -> None:
        """A new certificate arrived: use it from now on, renew at its half-life."""
        self._prune(now)
        self._certs.append(cert)
        self.failures = 0
        self.last_error = None
        self._next_attempt = max(refresh_time(cert), now)

    def failed(self, now: dt.datetime, error: str = "") -> dt.timedelta:
        """A request failed at ``now``; schedule the retry and return its delay."""
        self.failures += 1
        self.last_error = error or "certificate request failed"
        delay = backoff_delay(self.failures, self.policy, self._rng)
        self._next_attempt = now + delay
        return delay

    def current(self, now: dt.datetime) -> CertifiedKey | None:
        """The certificate new connections use at ``now``: the newest one valid then.

        An older one is kept until it expires, so a renewal whose validity has not
        started yet (clock skew) or a failing CA never leaves the identity without one.
        """
        valid = [c for c in self._certs if c.valid_at(now)]
        return max(valid, key=lambda c: c.not_before) if valid else None

    def certificates(self, now: dt.datetime) -> tuple[CertifiedKey, ...]:
        """Every certificate not yet expired at ``now``, oldest first."""
        return tuple(c for c in self._certs if now < c.not_after)

    def state(self, now: dt.datetime) -> str:
        """``Initializing``, ``Available`` or ``Unavailable: <why>``, as config_dump shows."""
        if self.current(now) is not None:
            return "Available"
        if not self._certs and self.failures == 0:
            return "Initializing"
        return f"Unavailable: {self.last_error or 'certificate expired'}"

    def _prune(self, now: dt.datetime) -> None:
        self._certs = [c for c in self._certs if now < c.not_after]
