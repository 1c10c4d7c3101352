"""Route budgets: a spending target turned into λ at start-up, and tightened while a route overspends.

A route's ``budget`` is either a target mean cost per request (USD) or, per
model, a target share of the route's requests (``{gpt-4o: 0.2}``: at most one
request in five to the most expensive model). Either way the policy needs λ,
the quality points one USD is worth.

**Start-up: calibrate on the fleet's prices.** ``turnout train`` stores a
*calibration sample* in the router artifact (:func:`turnout.routing.calibration.calibration_sample`): the
router's predicted quality on up to :data:`CALIBRATION_PROMPTS` training
prompts and each prompt's estimated token count. The gateway prices that
sample exactly as it prices a live request — the fleet's prices, the prompt's
tokens, :data:`~turnout.routing.calibration.EXPECTED_OUTPUT_TOKENS` of output — and
finds the smallest λ whose choices meet the target on it
(:func:`turnout.routing.policy.calibrate_lambda`). The training table's own
prices never enter: a router trained on GPT-4 outcomes routes a fleet of other
models at other prices.

**Run time: tighten on actual spend.** Predicted costs are estimates (answers
run longer or shorter than 256 tokens; live prompts differ from training
ones). :class:`RouteBudget` tracks the route's actual running mean cost per
answered request (and each model's share of them). Once ``warmup`` answers
are in and the running figure is above target by a factor ``r``, the target
the sample is calibrated against is lowered to ``target / r``, so λ rises
until the actual spend comes back under target. It only tightens: λ never
drops below the start-up value.

**One route, many replicas.** The running totals live in the gateway's
:class:`turnout.state.StateStore` (in-process by default, Redis when ``state`` names one), under
``budget:<route>:requests``, ``budget:<route>:spend_usd`` and ``budget:<route>:answers:<model>``
(models with a target share only). Every answer is written at once (:meth:`RouteBudget.observe`, a
coroutine on the event loop: one increment for the count, one for the spend, one for its model's
share), and the increments return the new totals, so the answering replica steers on fresh figures.
What the *other* replicas wrote is read back at most every ``refresh_s`` (0.5 s by default): the
gateway awaits :meth:`RouteBudget.refresh` before a decision when its figures are older than that
(one MGET). Deciding itself (:meth:`RouteBudget.lam`) never does I/O, so it can run on the offload
threads. Replicas sharing a Redis therefore steer one route budget together, each a fraction of a
second behind the others at most. Each derives λ from the shared totals itself, and each one's λ only
tightens. Totals in Redis outlive restarts, like keys' spend: delete the ``budget:<route>:*`` keys to
start a route's figures afresh. A read that fails keeps the figures read before (logged, tried again
``refresh_s`` later); a write that fails raises :class:`~turnout.errors.StateError` to the caller
(the gateway logs and counts it and still serves the answer).

Every decision carries the λ in force and :meth:`RouteBudget.describe` (target,
start-up λ, running mean, adjusted target), so the ``/v1/route`` dry run and
the request log show why a request was routed where it was.

**Holding the target both ways: ``controller: pi``.** Tightening only ever raises λ: traffic that gets
cheaper (shorter answers, easier prompts) leaves the route under its target for good, paying for
quality it could have had. With ``controller="pi"`` the calibrated λ is only the start:
:class:`~turnout.routing.controller.LambdaController` (PI on log λ over an exponentially weighted window
of answers, with bounds and anti-windup) moves it up *and down* so the running figure holds the
target while the mix drifts. A cost target has one controller fed each answer's actual cost; a share
target has one per model, fed 1 when that model answered and 0 otherwise, and λ is the largest of
theirs (each share is met from its own λ upwards, as at calibration). λ stays within
``[λ0 / lambda_range, λ0 · lambda_range]`` (λ0 the calibrated λ; from 0 to the top of the calibration
grid when λ0 is 0). The controllers run on this replica's answers (the totals in the state store
are still written for ``describe``); replicas sharing a route each hold their own running mean at the
target, so their sum holds it too. Their running figures are plain values
(:meth:`RouteBudget.controller_state` / :meth:`RouteBudget.load_controller_state`), ready for a shared
store. ``bench/budget_modes.py`` compares the two modes on drifting RouterBench traffic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from turnout.errors import RoutingError, StateError
from turnout.routing.base import Prediction
from turnout.routing.controller import DEFAULT_RANGE, LambdaController
from turnout.routing.policy import calibrate_lambda, choose, lambda_grid
from turnout.state.base import StateStore
from turnout.state.memory import InMemoryCounters

log = logging.getLogger(__name__)

#: answers a route must have served before its running spend can tighten λ
WARMUP_REQUESTS = 20
#: λ values scanned when tightening (plus the start-up λ itself)
_GRID = 200
#: seconds a route budget's figures may lag what other replicas wrote to shared counters
REFRESH_S = 0.5
#: how the running spend steers λ: "tighten" (raise only) or "pi" (hold the target both ways)
CONTROLLERS = ("tighten", "pi")
DEFAULT_CONTROLLER = "pi"


@dataclass(frozen=True)
class PIGains:
    """The ``pi`` controller's settings (see :class:`~turnout.routing.controller.LambdaController`).

    ``kp``/``ki``: log-λ steps per unit of log error (per answer, per window); ``window``: answers
    averaged; ``lambda_range``: how far λ may move from its calibrated value, as a factor each way.
    """

    kp: float = 1.0
    ki: float = 1.0
    window: int = 200
    lambda_range: float = DEFAULT_RANGE

    @classmethod
    def given(
        cls, *, kp: float | None = None, ki: float | None = None, window: int | None = None, lambda_range: float | None = None
    ) -> PIGains:
        """The settings given (a config's), the defaults for the others."""
        d = cls()
        return cls(
            kp=d.kp if kp is None else kp,
            ki=d.ki if ki is None else ki,
            window=d.window if window is None else window,
            lambda_range=d.lambda_range if lambda_range is None else lambda_range,
        )


class RouteBudget:
    """A route's target, the λ calibrated for it, and the running spend that tightens it. Thread-safe.

    Build it with :meth:`calibrate`. :meth:`lam` is read by every decision
    (on the offload threads, no I/O); :meth:`observe` is awaited once per
    answered request of the route, with its actual cost, on the event loop.
    ``counters`` hold the running totals under ``budget:<route>:...`` (default:
    a fresh in-memory one); budgets of one route on several gateways sharing a
    Redis see each other's answers, read back (:meth:`refresh`) at most every
    ``refresh_s``.

    Example::

        budget = RouteBudget.calibrate(sample.priced(cands, prices), target_cost=0.002)
        lam = budget.lam()                       # the start-up λ until the route overspends
        await budget.observe("gpt-4o", 0.0041)   # after each answer
        budget.describe()                        # what decisions report
    """

    def __init__(
        self,
        pred: Prediction,
        *,
        target_cost: float | None = None,
        target_share: Mapping[str, float] | None = None,
        warmup: int = WARMUP_REQUESTS,
        counters: StateStore | None = None,
        route: str = "route",
        refresh_s: float = REFRESH_S,
        controller: str = DEFAULT_CONTROLLER,
        gains: PIGains | None = None,
    ) -> None:
        if controller not in CONTROLLERS:
            raise RoutingError(f"budget controller must be one of {', '.join(CONTROLLERS)}, got {controller!r}")
        if (target_cost is None) == (not target_share):
            raise RoutingError("a budget needs exactly one of target_cost or target_share")
        self.pred = pred
        self.target_cost = target_cost
        self.target_share = dict(target_share or {})
        unknown = sorted(set(self.target_share) - set(pred.models))
        if unknown:
            raise RoutingError(f"target_share names {', '.join(unknown)}, which are not candidates of this route")
        self.warmup = warmup
        self.base_lambda = self._solve(self._targets(1.0))
        grid = np.unique(np.concatenate([lambda_grid(pred, n=_GRID), [self.base_lambda]]))
        self._grid = grid[grid >= self.base_lambda]
        # the sample's mean cost / per-model shares at each grid λ, so tightening is a scan, not a search
        self._table = np.array([self._metrics(float(lam)) for lam in self._grid])
        self._lock = threading.Lock()
        self._lam = self.base_lambda
        self._adjust = 1.0
        self.route = route
        self.counters: StateStore = counters if counters is not None else InMemoryCounters()
        self.refresh_s = refresh_s
        # in-process counters see every write as it is made: nothing to read back
        self._shared = not getattr(self.counters, "in_process", False)
        self._key = f"budget:{route}:"
        self._read_at = -math.inf  # monotonic time of the last read-back of the totals
        # the running totals as last written or read: answered requests, their spend, each target model's answers
        self.requests = 0
        self.spend_usd = 0.0
        self._counts = dict.fromkeys(self.target_share, 0)
        self.controller = controller
        #: the PI controllers (controller="pi"): None -> the cost target's, a model -> its share target's
        self._pi: dict[str | None, LambdaController] = self._controllers(gains or PIGains()) if controller == "pi" else {}

    def _controllers(self, g: PIGains) -> dict[str | None, LambdaController]:
        lam0 = self.base_lambda
        if lam0 > 0:
            lo, hi = lam0 / g.lambda_range, lam0 * g.lambda_range
        else:  # the target is met at λ = 0: λ may rise up to where every sample prompt goes to its cheapest model
            lo, hi = 0.0, max(float(self._grid[-1]), 1e-9)
        made: dict[str | None, LambdaController] = {}
        targets: dict[str | None, float] = {None: self.target_cost} if self.target_cost is not None else {}
        targets.update(self.target_share)
        for key, target in targets.items():
            if target <= 0:
                raise RoutingError(
                    f"a pi controller needs a target share above 0 (got {key}: {target}); use "
                    "controller: tighten, or leave the model out of the candidates"
                )
            made[key] = LambdaController(target, lam0, lam_min=lo, lam_max=hi, kp=g.kp, ki=g.ki, window=g.window)
        return made

    @classmethod
    def calibrate(
        cls,
        pred: Prediction,
        *,
        target_cost: float | None = None,
        target_share: Mapping[str, float] | None = None,
        warmup: int = WARMUP_REQUESTS,
        counters: StateStore | None = None,
        route: str = "route",
        refresh_s: float = REFRESH_S,
        controller: str = DEFAULT_CONTROLLER,
        gains: PIGains | None = None,
    ) -> RouteBudget:
        """Calibrate λ on ``pred`` (the fleet-priced calibration sample); RoutingError when the target is unreachable."""
        return cls(
            pred,
            target_cost=target_cost,
            target_share=target_share,
            warmup=warmup,
            counters=counters,
            route=route,
            refresh_s=refresh_s,
            controller=controller,
            gains=gains,
        )

    # -- start-up -------------------------------------------------------------
    def _targets(self, adjust: float) -> list[float]:
        if self.target_cost is not None:
            return [self.target_cost * adjust]
        return [f * adjust for f in self.target_share.values()]

    def _metrics(self, lam: float) -> list[float]:
        idx = choose(self.pred, lam)
        if self.target_cost is not None:
            return [float(self.pred.cost[np.arange(len(idx)), idx].mean())]
        return [float((idx == self.pred.models.index(m)).mean()) for m in self.target_share]

    def _solve(self, targets: list[float]) -> float:
        if self.target_cost is not None:
            return calibrate_lambda(self.pred, target_cost=targets[0])
        # every share at or under its target: each is met from its own λ upwards, so take the largest
        lams = [calibrate_lambda(self.pred, target_share=t, model=m) for m, t in zip(self.target_share, targets)]
        lam = max(lams)
        if any(v > t + 1e-12 for v, t in zip(self._metrics(lam), targets)):
            raise RoutingError(f"no single lambda meets every share of {self.target_share} on the calibration sample")
        return lam

    # -- run time -------------------------------------------------------------
    def lam(self) -> float:
        """The λ in force now (no I/O: the figures are the last written or read back)."""
        return self._lam

    def stale(self) -> bool:
        """Whether the figures should be read back before the next decision (shared counters only)."""
        return self._shared and time.monotonic() - self._read_at >= self.refresh_s

    async def observe(self, model: str, cost_usd: float) -> None:
        """Account one answered request of the route (its fleet model and actual cost); may tighten λ.

        Two or three increments of the counters (network round trips with shared ones). Raises
        :class:`~turnout.errors.StateError` when they fail, leaving the totals short of this answer.
        With ``controller="pi"`` the answer first steers λ (local: a failing store does not stop it).
        """
        if self._pi:
            self._steer(model, cost_usd)
        c, k = self.counters, self._key
        requests = await c.incr(k + "requests", 1.0)
        spend = await c.incr(k + "spend_usd", cost_usd)
        counts = {model: await c.incr(k + "answers:" + model, 1.0)} if model in self._counts else {}
        others = [m for m in self._counts if m not in counts]
        if self.stale() and others:
            # the other target models' answers, which other replicas may have added to
            self._read_at = time.monotonic()
            counts.update(zip(others, await c.get_many([k + "answers:" + m for m in others])))
        self._apply(requests, spend, counts)

    async def refresh_if_stale(self) -> None:
        """:meth:`refresh` when the figures are older than ``refresh_s`` (shared counters only): before a decision."""
        if self.stale():
            await self.refresh()

    async def refresh(self) -> None:
        """Read back the totals every replica wrote (shared counters). A failure keeps the figures read before."""
        # marked first, so that the decisions running meanwhile do not read too
        self._read_at = time.monotonic()
        k = self._key
        keys = [k + "requests", k + "spend_usd", *(k + "answers:" + m for m in self._counts)]
        try:
            values = await self.counters.get_many(keys)
        except StateError as exc:
            # a soft signal: decide on the figures read before rather than fail the request. The next try waits
            # refresh_s from now, not from the start of this one (a timeout may have taken seconds).
            self._read_at = time.monotonic()
            log.warning("route %r budget: keeping the running figures read before: %s", self.route, exc)
            return
        self._apply(values[0], values[1], dict(zip(self._counts, values[2:])))

    def _apply(self, requests: float, spend: float, counts: Mapping[str, float]) -> None:
        with self._lock:
            n = round(requests)
            if n < self.requests:
                return  # an older snapshot than one already applied (two threads writing or reading at once)
            self.requests, self.spend_usd = n, spend
            for m, v in counts.items():
                self._counts[m] = round(v)
            if n < self.warmup or self._pi:  # the PI controllers steer λ themselves (:meth:`_steer`)
                return
            over = self._overshoot()
            # the target the sample is aimed at only ever goes down (λ only up), in proportion to the overshoot;
            # steps under 1% are not worth a new λ
            if over > 1.0 and 1.0 / over < self._adjust * 0.99:
                self._adjust = 1.0 / over
                self._lam = self._lookup(self._targets(self._adjust))

    def _steer(self, model: str, cost_usd: float) -> None:
        """Feed one answer to the PI controllers; λ is the largest of theirs (every target met)."""
        lams = [ctl.observe(cost_usd if key is None else float(model == key)) for key, ctl in self._pi.items()]
        with self._lock:
            self._lam = max(lams)

    def controller_state(self) -> dict[str, Any]:
        """The PI controllers' settings and running figures as JSON values (``{}`` in tighten mode)."""
        return {"cost" if k is None else k: ctl.get_state() for k, ctl in self._pi.items()}

    def load_controller_state(self, state: Mapping[str, Any]) -> None:
        """Take up :meth:`controller_state`'s output (after a restart, or from another replica)."""
        if set(state) != {"cost" if k is None else k for k in self._pi}:
            raise RoutingError(
                f"route {self.route!r}: the controller state is for {sorted(state)}, this budget "
                f"controls {sorted('cost' if k is None else k for k in self._pi)}"
            )
        self._pi = {k: LambdaController.from_state(state["cost" if k is None else k]) for k in self._pi}
        with self._lock:
            self._lam = max(ctl.lam() for ctl in self._pi.values())

    def _overshoot(self) -> float:
        if self.target_cost is not None:
            return (self.spend_usd / self.requests) / self.target_cost
        return max((self._counts.get(m, 0) / self.requests) / t if t > 0 else math.inf for m, t in self.target_share.items())

    def _lookup(self, targets: list[float]) -> float:
        ok = np.all(self._table <= np.asarray(targets) + 1e-12, axis=1)
        hits = np.flatnonzero(ok)
        # none reachable on the sample: the largest λ (every prompt to its cheapest model) is the tightest there is
        return float(self._grid[hits[0]] if hits.size else self._grid[-1])

    def describe(self) -> dict[str, Any]:
        """What a decision reports: the target, the calibration, the running figures and the λ they led to."""
        with self._lock:
            d: dict[str, Any] = (
                {"target_cost_per_request": self.target_cost}
                if self.target_cost is not None
                else {"target_share": dict(self.target_share)}
            )
            d.update(
                {
                    "lambda": self._lam,
                    "lambda_calibrated": self.base_lambda,
                    "calibration_prompts": int(self.pred.quality.shape[0]),
                    "requests": self.requests,
                    "running_mean_cost": self.spend_usd / self.requests if self.requests else None,
                    "tightened": self._adjust < 1.0,
                    "controller": self.controller,
                }
            )
            if self._pi:
                d["pi"] = {"cost" if k is None else k: ctl.describe() for k, ctl in self._pi.items()}
            if self.target_share:
                d["running_share"] = {
                    m: (self._counts.get(m, 0) / self.requests if self.requests else None) for m in self.target_share
                }
            if self._adjust < 1.0:
                d["adjusted_target"] = (
                    self._targets(self._adjust)[0]
                    if self.target_cost is not None
                    else dict(zip(self.target_share, self._targets(self._adjust)))
                )
            return d

    def reason(self) -> str:
        """One line for the decision's reasons."""
        lam = self._lam
        what = (
            f"mean cost ${self.target_cost:.6g}/request"
            if self.target_cost is not None
            else ", ".join(f"{m} <= {t:.0%}" for m, t in self.target_share.items())
        )
        line = (
            f"budget {what}: lambda {self.base_lambda:.6g} calibrated on {self.pred.quality.shape[0]} "
            "training prompts at fleet prices"
        )
        if self._pi:
            seen = max(ctl.describe()["observed"] for ctl in self._pi.values())
            if lam != self.base_lambda:
                line += f"; held at {lam:.6g} by the PI controller ({seen} answers observed)"
        elif lam != self.base_lambda:
            line += f"; tightened to {lam:.6g} (running figures over target after {self.requests} answers)"
        return line


__all__ = ["CONTROLLERS", "DEFAULT_CONTROLLER", "REFRESH_S", "WARMUP_REQUESTS", "PIGains", "RouteBudget"]
