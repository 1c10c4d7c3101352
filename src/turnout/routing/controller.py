"""A closed-loop λ controller: hold a route's spending target online while the traffic mix drifts.

A route's budget is a target for the running mean of a per-request quantity:
the cost of each answer (``target mean cost per request``) or 1/0 for "this
answer came from model M" (``target share of M``). λ is calibrated once at
start-up on a sample of training prompts; when live traffic drifts (more code
prompts, longer answers) the same λ spends more or less than the target.
:class:`LambdaController` corrects λ from the spend it observes, both ways.

**The loop.** It works in log-λ space (λ spans orders of magnitude, and a
relative overshoot should move it by a relative step). The measured error is
``e = log(m / target)``, where ``m`` is an exponentially weighted mean over the
last ``window`` answers (bias-corrected, so the first answers are not weighed
against zeros), clipped to ±``max_error``. Then::

    I     += e / window                         (a full window of error e adds e)
    log λ  = log λ0 + kp · e + ki · I           clamped to [log λ_min, log λ_max]

The start-up λ0 is the feed-forward; the proportional term reacts within a
window; the integral removes the steady-state error (a drifted mix needs a
different λ for good, not a transient push).

**Anti-windup.** While λ sits at a bound and the error pushes it further
out, the integral is set back to the value that puts λ exactly on the bound
(back-calculation), and it is clamped so that ``ki · I`` alone never leaves
the bounds. A target the fleet
cannot reach (cheaper than the cheapest model) therefore pins λ at
``λ_max`` without storing up a debt, and λ leaves the bound within a window of
the target becoming reachable again.

**Why not the previous tightening.** ``gateway.budget`` only ever raised λ
(never back down when traffic got cheaper), in steps looked up on the
calibration sample. This controller is two-sided and needs only the observed
figures; ``bench/budget_drift.py`` measures both against a drifting RouterBench
stream.

Example::

    ctl = LambdaController(target=0.002, lam0=calibrated_lambda)
    lam = ctl.lam()                # read by every decision
    ctl.observe(0.0031)            # each answer's actual cost (or 1.0/0.0 for a share target)
    ctl.describe()                 # what a decision reports
"""

from __future__ import annotations

import math
import threading
from typing import Any

from turnout.errors import RoutingError

#: default bounds around the start-up λ: two decades each way
DEFAULT_RANGE = 100.0
#: a running mean under target · exp(-MAX_ERROR) (or over target · exp(MAX_ERROR)) counts as that far off
MAX_ERROR = 1.0
#: log-λ closer than this to a bound is at it (the back-calculation lands there up to rounding)
_EPS = 1e-9


class LambdaController:
    """PI control of log λ on an exponentially weighted window of observed spend, with anti-windup and bounds.

    ``target``: the running mean to hold (USD per request, or a share in
    (0, 1]). ``lam0``: the start-up λ (calibrated); ``lam_min``/``lam_max``
    bound λ (default ``lam0 / 100`` and ``lam0 · 100``; ``lam_min=0`` lets λ
    reach 0, "best quality", at the lower bound). ``kp``: log-λ step per unit
    of log error; ``ki``: log-λ step per window of unit log error;
    ``window``: the averaging length in answers; ``warmup``: answers before
    the first correction (default half a window). Thread-safe.
    """

    def __init__(
        self,
        target: float,
        lam0: float,
        *,
        lam_min: float | None = None,
        lam_max: float | None = None,
        kp: float = 1.0,
        ki: float = 1.0,
        window: int = 200,
        warmup: int | None = None,
        max_error: float = MAX_ERROR,
    ) -> None:
        if not (math.isfinite(target) and target > 0):
            raise RoutingError(f"controller: the target must be a positive number, got {target!r}")
        if not (math.isfinite(lam0) and lam0 >= 0):
            raise RoutingError(f"controller: lam0 must be >= 0, got {lam0!r}")
        if window < 1 or kp < 0 or ki < 0 or max_error <= 0:
            raise RoutingError("controller: needs window >= 1, kp >= 0, ki >= 0 and max_error > 0")
        hi = float(lam_max) if lam_max is not None else (lam0 * DEFAULT_RANGE if lam0 > 0 else None)
        if hi is None:
            raise RoutingError("controller: lam0 is 0, so give lam_max (λ's upper bound) explicitly")
        lo = float(lam_min) if lam_min is not None else lam0 / DEFAULT_RANGE
        if not 0 <= lo <= lam0 <= hi or hi <= 0:
            raise RoutingError(f"controller: needs 0 <= lam_min <= lam0 <= lam_max (got {lo}, {lam0}, {hi})")
        self.target, self.lam0, self.lam_min, self.lam_max = float(target), float(lam0), lo, hi
        self.kp, self.ki, self.window, self.max_error = float(kp), float(ki), int(window), float(max_error)
        self.warmup = int(warmup) if warmup is not None else max(1, self.window // 2)
        # log space needs a positive floor: with lam_min = 0, six decades under lam_max stand for 0
        self._u_min = math.log(lo) if lo > 0 else math.log(hi) - 6 * math.log(10)
        self._u_max = math.log(hi)
        self._u0 = min(max(math.log(lam0), self._u_min), self._u_max) if lam0 > 0 else self._u_min
        self._decay = 1.0 - 1.0 / self.window
        self._lock = threading.Lock()
        self._u = self._u0
        self._integral = 0.0
        self._s = 0.0  # exponentially weighted sum of observations
        self._w = 0.0  # the same sum of weights (bias correction)
        self._n = 0
        self._error = 0.0

    def lam(self) -> float:
        """The λ in force now."""
        with self._lock:
            return self._lam_locked()

    def _lam_locked(self) -> float:
        if self.lam_min == 0 and self._u <= self._u_min + _EPS:
            return 0.0
        return math.exp(self._u)

    def observe(self, value: float) -> float:
        """Account one answer (its actual cost, or 1.0/0.0 for a share target); returns the λ now in force."""
        if not (math.isfinite(value) and value >= 0):
            raise RoutingError(f"controller: an observation must be a finite number >= 0, got {value!r}")
        with self._lock:
            self._s = self._decay * self._s + value
            self._w = self._decay * self._w + 1.0
            self._n += 1
            if self._n < self.warmup:
                return self._lam_locked()
            mean = self._s / self._w
            e = math.log(mean / self.target) if mean > 0 else -self.max_error
            e = min(max(e, -self.max_error), self.max_error)
            self._error = e
            integral = self._integral + e / self.window
            if self.ki > 0:
                # back-calculation: past a bound, in the direction the error pushes, the integral is set to what
                # puts λ exactly on the bound, so nothing is stored up beyond it
                p = self._u0 + self.kp * e
                if e > 0 and p + self.ki * integral > self._u_max:
                    integral = (self._u_max - p) / self.ki
                elif e < 0 and p + self.ki * integral < self._u_min:
                    integral = (self._u_min - p) / self.ki
                # and the integral alone may never hold λ beyond a bound
                lo, hi = (self._u_min - self._u0) / self.ki, (self._u_max - self._u0) / self.ki
                integral = min(max(integral, lo), hi)
            self._integral = integral
            self._u = min(max(self._u0 + self.kp * e + self.ki * integral, self._u_min), self._u_max)
            return self._lam_locked()

    def _at_bound(self) -> bool:
        return self._u <= self._u_min + _EPS or self._u >= self._u_max - _EPS

    @property
    def running_mean(self) -> float | None:
        """The weighted running mean of the observations (None before the first)."""
        with self._lock:
            return self._s / self._w if self._w > 0 else None

    def describe(self) -> dict[str, Any]:
        """What a decision reports: target, λ (start-up and now), the running mean, the error and the integral."""
        with self._lock:
            return {
                "target": self.target,
                "lambda": self._lam_locked(),
                "lambda_start": self.lam0,
                "running_mean": self._s / self._w if self._w > 0 else None,
                "observed": self._n,
                "log_error": self._error,
                "integral": self._integral,
                "saturated": self._at_bound(),
            }

    def get_state(self) -> dict[str, Any]:
        """Settings and running state as plain JSON values (to persist, or to keep in shared counters)."""
        with self._lock:
            return {
                "target": self.target,
                "lam0": self.lam0,
                "lam_min": self.lam_min,
                "lam_max": self.lam_max,
                "kp": self.kp,
                "ki": self.ki,
                "window": self.window,
                "warmup": self.warmup,
                "max_error": self.max_error,
                "u": self._u,
                "integral": self._integral,
                "s": self._s,
                "w": self._w,
                "n": self._n,
                "error": self._error,
            }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LambdaController:
        """Rebuild a controller from :meth:`get_state`'s output, running state included."""
        c = cls(
            state["target"],
            state["lam0"],
            lam_min=state["lam_min"],
            lam_max=state["lam_max"],
            kp=state["kp"],
            ki=state["ki"],
            window=state["window"],
            warmup=state["warmup"],
            max_error=state["max_error"],
        )
        c._u, c._integral, c._s, c._w = float(state["u"]), float(state["integral"]), float(state["s"]), float(state["w"])
        c._n, c._error = int(state["n"]), float(state["error"])
        return c


__all__ = ["DEFAULT_RANGE", "MAX_ERROR", "LambdaController"]
