"""Route budgets: a spending target turned into λ at start-up, and tightened while a route overspends.

A route's ``budget`` is either a target mean cost per request (USD) or, per
model, a target share of the route's requests (``{gpt-4o: 0.2}``: at most one
request in five to the most expensive model). Either way the policy needs λ,
the quality points one USD is worth.

**Start-up: calibrate on the fleet's prices.** ``turnout train`` stores a
*calibration sample* in the router artifact (:func:`calibration_sample`): the
router's predicted quality on up to :data:`CALIBRATION_PROMPTS` training
prompts and each prompt's estimated token count. The gateway prices that
sample exactly as it prices a live request — the fleet's prices, the prompt's
tokens, :data:`~turnout.gateway.routes.EXPECTED_OUTPUT_TOKENS` of output — and
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
drops below the start-up value. The figures are this process's; replicas
behind a load balancer each steer their own share of the traffic.

Every decision carries the λ in force and :meth:`RouteBudget.describe` (target,
start-up λ, running mean, adjusted target), so the ``/v1/route`` dry run and
the request log show why a request was routed where it was.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from turnout.errors import RoutingError
from turnout.gateway.routes import EXPECTED_OUTPUT_TOKENS, Price
from turnout.routing.base import Prediction, Router
from turnout.routing.policy import calibrate_lambda, choose, estimate_tokens, lambda_grid

#: at most this many training prompts are kept as the calibration sample (a few hundred KB of JSON)
CALIBRATION_PROMPTS = 2000
#: answers a route must have served before its running spend can tighten λ
WARMUP_REQUESTS = 20
#: λ values scanned when tightening (plus the start-up λ itself)
_GRID = 200


def calibration_sample(router: Router, X: np.ndarray, prompts: Sequence[str], *, seed: int = 0,
                       max_prompts: int = CALIBRATION_PROMPTS) -> dict[str, Any]:
    """The JSON-able calibration sample ``turnout train`` stores in an artifact's metadata.

    ``{"models", "quality" (rows of floats, null for no prediction), "prompt_tokens", "of"}``:
    the router's predictions on a seeded sample of at most ``max_prompts``
    training prompts (embeddings ``X``), and their token estimates.
    """
    n = len(prompts)
    idx = np.arange(n) if n <= max_prompts else np.sort(np.random.default_rng(seed).choice(n, max_prompts, replace=False))
    pred = router.predict(np.asarray(X)[idx])
    quality = [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in np.asarray(pred.quality, dtype=float)]
    return {"models": list(pred.models), "quality": quality,
            "prompt_tokens": [estimate_tokens(prompts[i]) for i in idx], "of": n}


@dataclass(frozen=True)
class CalibrationSample:
    """Predicted quality (prompts × artifact models) and prompt tokens, read back from an artifact."""

    models: list[str]
    quality: np.ndarray
    prompt_tokens: np.ndarray
    of: int

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> CalibrationSample | None:
        """The sample in an artifact's metadata, or None when the artifact has none (trained before it existed)."""
        doc = meta.get("calibration")
        if not isinstance(doc, dict):
            return None
        quality = np.array([[math.nan if v is None else float(v) for v in row] for row in doc["quality"]], dtype=float)
        tokens = np.asarray(doc["prompt_tokens"], dtype=np.int64)
        if quality.ndim != 2 or quality.shape != (len(tokens), len(doc["models"])) or not len(tokens):
            raise RoutingError("the artifact's calibration sample is malformed (shapes disagree); re-train it")
        return cls(list(doc["models"]), quality, tokens, int(doc.get("of", len(tokens))))

    def priced(self, candidates: Mapping[str, str], prices: Mapping[str, Price],
               context_windows: Mapping[str, int | None] | None = None) -> Prediction:
        """The sample as a :class:`Prediction` over the route's *fleet* models, costed with the fleet's prices.

        ``candidates`` maps artifact model names to fleet models, as in the
        route's config; a candidate the artifact has no predictions for is
        unavailable, as it is at serving time, and so is one whose context
        window the prompt does not fit.
        """
        index = {m: i for i, m in enumerate(self.models)}
        fleet = list(candidates.values())
        n = len(self.prompt_tokens)
        quality = np.full((n, len(fleet)), math.nan)
        cost = np.empty((n, len(fleet)))
        available = np.ones((n, len(fleet)), dtype=bool)
        for j, (router_model, fleet_model) in enumerate(candidates.items()):
            if router_model in index:
                quality[:, j] = self.quality[:, index[router_model]]
            p = prices[fleet_model]
            cost[:, j] = (self.prompt_tokens * p.input_per_mtok + EXPECTED_OUTPUT_TOKENS * p.output_per_mtok) / 1e6
            window = (context_windows or {}).get(fleet_model)
            if window:
                available[:, j] = self.prompt_tokens <= window
        available &= ~np.isnan(quality)
        # a prompt no candidate could answer (too long for every window) fails at serving time; it sets no price
        keep = available.any(axis=1)
        if not keep.any():
            raise RoutingError("no calibration prompt has an available candidate (no predictions, or every context window too small)")
        return Prediction(models=fleet, quality=quality[keep], cost=cost[keep], available=available[keep])


class RouteBudget:
    """A route's target, the λ calibrated for it, and the running spend that tightens it. Thread-safe.

    Build it with :meth:`calibrate`. :meth:`lam` is read by every decision
    (on the offload threads); :meth:`observe` is called once per answered
    request of the route, with its actual cost (on the event loop).

    Example::

        budget = RouteBudget.calibrate(sample.priced(cands, prices), target_cost=0.002)
        lam = budget.lam()                 # the start-up λ until the route overspends
        budget.observe("gpt-4o", 0.0041)   # after each answer
        budget.describe()                  # what decisions report
    """

    def __init__(self, pred: Prediction, *, target_cost: float | None = None,
                 target_share: Mapping[str, float] | None = None, warmup: int = WARMUP_REQUESTS) -> None:
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
        self.requests = 0
        self.spend_usd = 0.0
        self._counts = dict.fromkeys(pred.models, 0)

    @classmethod
    def calibrate(cls, pred: Prediction, *, target_cost: float | None = None,
                  target_share: Mapping[str, float] | None = None, warmup: int = WARMUP_REQUESTS) -> RouteBudget:
        """Calibrate λ on ``pred`` (the fleet-priced calibration sample); RoutingError when the target is unreachable."""
        return cls(pred, target_cost=target_cost, target_share=target_share, warmup=warmup)

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
        lams = [calibrate_lambda(self.pred, target_share=t, model=m)
                for m, t in zip(self.target_share, targets)]
        lam = max(lams)
        if any(v > t + 1e-12 for v, t in zip(self._metrics(lam), targets)):
            raise RoutingError(f"no single lambda meets every share of {self.target_share} on the calibration sample")
        return lam

    # -- run time -------------------------------------------------------------
    def lam(self) -> float:
        """The λ in force now."""
        return self._lam

    def observe(self, model: str, cost_usd: float) -> None:
        """Account one answered request of the route (its fleet model and actual cost); may tighten λ."""
        with self._lock:
            self.requests += 1
            self.spend_usd += cost_usd
            if model in self._counts:
                self._counts[model] += 1
            if self.requests < self.warmup:
                return
            over = self._overshoot()
            # the target the sample is aimed at only ever goes down (λ only up), in proportion to the overshoot;
            # steps under 1% are not worth a new λ
            if over > 1.0 and 1.0 / over < self._adjust * 0.99:
                self._adjust = 1.0 / over
                self._lam = self._lookup(self._targets(self._adjust))

    def _overshoot(self) -> float:
        if self.target_cost is not None:
            return (self.spend_usd / self.requests) / self.target_cost
        return max((self._counts.get(m, 0) / self.requests) / t if t > 0 else math.inf
                   for m, t in self.target_share.items())

    def _lookup(self, targets: list[float]) -> float:
        ok = np.all(self._table <= np.asarray(targets) + 1e-12, axis=1)
        hits = np.flatnonzero(ok)
        # none reachable on the sample: the largest λ (every prompt to its cheapest model) is the tightest there is
        return float(self._grid[hits[0]] if hits.size else self._grid[-1])

    def describe(self) -> dict[str, Any]:
        """What a decision reports: the target, the calibration, the running figures and the λ they led to."""
        with self._lock:
            d: dict[str, Any] = ({"target_cost_per_request": self.target_cost} if self.target_cost is not None
                                 else {"target_share": dict(self.target_share)})
            d.update({"lambda": self._lam, "lambda_calibrated": self.base_lambda,
                      "calibration_prompts": int(self.pred.quality.shape[0]), "requests": self.requests,
                      "running_mean_cost": self.spend_usd / self.requests if self.requests else None,
                      "tightened": self._adjust < 1.0})
            if self.target_share:
                d["running_share"] = {m: (self._counts.get(m, 0) / self.requests if self.requests else None)
                                      for m in self.target_share}
            if self._adjust < 1.0:
                d["adjusted_target"] = (self._targets(self._adjust)[0] if self.target_cost is not None
                                        else dict(zip(self.target_share, self._targets(self._adjust))))
            return d

    def reason(self) -> str:
        """One line for the decision's reasons."""
        lam = self._lam
        what = (f"mean cost ${self.target_cost:.6g}/request" if self.target_cost is not None
                else ", ".join(f"{m} <= {t:.0%}" for m, t in self.target_share.items()))
        line = f"budget {what}: lambda {self.base_lambda:.6g} calibrated on {self.pred.quality.shape[0]} training prompts at fleet prices"
        if lam != self.base_lambda:
            line += f"; tightened to {lam:.6g} (running figures over target after {self.requests} answers)"
        return line


__all__ = ["CALIBRATION_PROMPTS", "WARMUP_REQUESTS", "CalibrationSample", "RouteBudget", "calibration_sample"]
