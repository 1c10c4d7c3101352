"""Reliability parts of the pipeline: circuit breaker and jittered exponential backoff.

A :class:`CircuitBreaker` guards one (backend, model) pair. It opens after
``failures`` consecutive *retryable* failures (timeouts, resets, 5xx, garbage:
the provider is unwell; a 400 is the request's fault and does not count),
skips the pair for ``cooldown_s``, then lets exactly one probe through
(half-open): success closes it, failure re-opens it for another cooldown.
A probe that never reports back (its caller vanished between the call and the
verdict) frees its slot after ``probe_timeout_s``, so a breaker can never stay
half-open with no probe allowed: it would skip its endpoint until a restart.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open probe after the cooldown.

    Example::

        br = CircuitBreaker(failures=3, cooldown_s=10)
        if br.allow():
            ...  # call, then br.record_success() or br.record_failure()
    """

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic, *, probe_timeout_s: float = 300.0
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_started = 0.0

    def _probe_lost(self) -> bool:
        return self._probing and self._clock() - self._probe_started >= self.probe_timeout_s

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time."""
        if self._opened_at is None:
            return True
        if (self._probing and not self._probe_lost()) or self._clock() - self._opened_at < self.cooldown_s:
            return False
        self._probing = True
        self._probe_started = self._clock()
        return True

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """The call was abandoned (client gone): neither success nor failure; free the probe slot."""
        self._probing = False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (0-based): ``min(max_s, base_s * 2**n)`` scaled by a jitter in [0.5, 1]."""

    base_s: float = 0.1
    max_s: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, n: int) -> float:
        # Jitter spreads retries of many clients so they do not hit a recovering backend together.
        jitter: float = self.rng.uniform(0.5, 1.0)
        return min(self.max_s, self.base_s * 2.0**n) * jitter


__all__ = ["Backoff", "CircuitBreaker"]
