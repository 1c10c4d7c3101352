"""The one policy: turn predicted quality and cost into a choice.

Routers only *score*. This module *decides*, the same way for every router:
per prompt, pick the available model with the highest utility
``quality - lam * cost`` (ties go to the cheaper model). ``lam`` (λ) is the
price of one USD in quality points: 0 means "best predicted quality", a huge
value means "cheapest". :func:`lambda_grid` sweeps it for cost/quality curves
and :func:`calibrate_lambda` finds the λ that meets a cost or share target.

Example::

    idx = choose(pred, lam=0.0)                       # batch: index per prompt
    lam = calibrate_lambda(train_pred, target_cost=0.002)
    decision = Policy(lam=lam).decide(q_row, c_row, models, route="auto", router_name="knn")
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from turnout.errors import NoCandidateError, RoutingError
from turnout.routing.base import Prediction
from turnout.tokens import estimate_tokens
from turnout.types import Candidate, Decision, Reason

#: two utilities closer than this count as a tie (then the cheaper model wins)
TIE_TOLERANCE = 1e-12


def availability(pred: Prediction, allowed: np.ndarray | None = None) -> np.ndarray:
    """The n × m mask of the models the policy may choose: available, ``allowed`` and predicted (no NaN)."""
    n, m = pred.quality.shape
    mask = np.ones((n, m), dtype=bool)
    if pred.available is not None:
        mask &= np.asarray(pred.available, dtype=bool)
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        mask &= np.broadcast_to(allowed, (n, m))
    # a NaN prediction is not a candidate either
    mask &= ~np.isnan(pred.quality) & ~np.isnan(pred.cost)
    return mask


def choose(pred: Prediction, lam: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Index of the chosen model per row: argmax of ``quality - lam * cost`` among available models.

    ``allowed`` is a boolean mask over models (``m``) or per row (``n × m``).
    Ties (within :data:`TIE_TOLERANCE`) go to the cheaper model. Raises
    :class:`NoCandidateError` if some row has no available model.
    """
    if lam < 0:
        raise RoutingError(f"lam must be >= 0, got {lam}")
    mask = availability(pred, allowed)
    if not mask.any(axis=1).all():
        rows = np.flatnonzero(~mask.any(axis=1))
        raise NoCandidateError(f"no available model for {len(rows)} prompt(s) (first: row {rows[0]}); relax 'allowed'")
    util = np.where(mask, pred.quality - lam * pred.cost, -np.inf)
    best = util.max(axis=1, keepdims=True)
    tied = mask & (util >= best - TIE_TOLERANCE)
    idx: np.ndarray = np.argmin(np.where(tied, pred.cost, np.inf), axis=1)
    return idx


def _breakpoints(pred: Prediction, allowed: np.ndarray | None) -> np.ndarray:
    """Every λ at which some row's preference between two models flips (positive values only)."""
    mask = availability(pred, allowed)
    q = np.where(mask, pred.quality, np.nan)
    c = np.where(mask, pred.cost, np.nan)
    dq = q[:, :, None] - q[:, None, :]
    dc = c[:, :, None] - c[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = dq / dc
    ok = (dc > 0) & (dq > 0) & np.isfinite(lam)
    flips: np.ndarray = lam[ok]
    return flips


def lambda_grid(pred: Prediction, n: int = 60, allowed: np.ndarray | None = None) -> np.ndarray:
    """λ values from 0 (max quality) to where the cheapest model wins every row, log-spaced.

    The upper end is the largest flip point over all rows and model pairs (so
    the last λ routes every prompt to its cheapest predicted model); the lower
    end is the 0.5th percentile of flip points, so the grid is dense where the
    choices actually change.
    """
    if n < 2:
        raise RoutingError("lambda_grid needs n >= 2")
    bp = _breakpoints(pred, allowed)
    if bp.size == 0:
        return np.zeros(1)
    hi = float(bp.max()) * (1 + 1e-6)
    lo = float(np.percentile(bp, 0.5))
    lo = min(max(lo, hi * 1e-9), hi)
    return np.concatenate([[0.0], np.geomspace(lo, hi, n - 1)])


def _metric(pred: Prediction, lam: float, allowed: np.ndarray | None, target: str, model_idx: int) -> float:
    idx = choose(pred, lam, allowed)
    if target == "cost":
        return float(pred.cost[np.arange(len(idx)), idx].mean())
    return float((idx == model_idx).mean())


def calibrate_lambda(
    pred: Prediction,
    *,
    target_cost: float | None = None,
    target_share: float | None = None,
    model: str | None = None,
    allowed: np.ndarray | None = None,
    iters: int = 50,
) -> float:
    """The smallest λ whose choices meet a target on ``pred`` (compute it on *training* predictions).

    Give exactly one of ``target_cost`` (mean predicted cost of the chosen
    models ≤ target, USD) or ``target_share`` (share of prompts sent to
    ``model`` ≤ target; ``model`` defaults to the most expensive on average).
    Found by a scan of :func:`lambda_grid` then bisection between neighbours.
    """
    if (target_cost is None) == (target_share is None):
        raise RoutingError("calibrate_lambda needs exactly one of target_cost or target_share")
    kind = "cost" if target_cost is not None else "share"
    target = float(target_cost if target_cost is not None else target_share)  # type: ignore[arg-type]
    model_idx = -1
    if kind == "share":
        if model is None:
            model_idx = int(np.argmax(np.nanmean(pred.cost, axis=0)))
        elif model in pred.models:
            model_idx = pred.models.index(model)
        else:
            raise RoutingError(f"calibrate_lambda: unknown model '{model}'; known: {', '.join(pred.models)}")

    def ok(lam: float) -> bool:
        return _metric(pred, lam, allowed, kind, model_idx) <= target + 1e-15

    if ok(0.0):
        return 0.0
    grid = lambda_grid(pred, n=200, allowed=allowed)
    hits = [i for i, lam in enumerate(grid) if ok(float(lam))]
    if not hits:
        best = _metric(pred, float(grid[-1]) * 10, allowed, kind, model_idx)
        raise RoutingError(f"cannot reach {kind} target {target:g}: even the cheapest choices give {best:g}; raise the target")
    lo, hi = float(grid[hits[0] - 1]), float(grid[hits[0]])
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


class Policy:
    """Decides one request: constraints, then utility ``quality - lam * cost``, then fallbacks.

    ``allowed`` restricts the fleet (None = every model); ``context_windows``
    maps a model to its maximum prompt tokens (None or absent: no limit); ``max_cost`` excludes models
    whose predicted cost exceeds it (USD per request). ``max_fallbacks`` caps
    the fallback list (None = every remaining candidate, best utility first).

    Example::

        policy = Policy(lam=100.0, context_windows={"smollm2": 2048})
        d = policy.decide([0.6, 0.9], [0.0, 0.01], ["smollm2", "gpt-4"],
                          route="auto", router_name="knn", prompt_tokens=3100)
        d.model  # "gpt-4": smollm2 is excluded ("context window 2048 < 3100 tokens")
    """

    def __init__(
        self,
        lam: float = 0.0,
        *,
        allowed: Collection[str] | None = None,
        context_windows: Mapping[str, int | None] | None = None,
        max_cost: float | None = None,
        max_fallbacks: int | None = None,
    ) -> None:
        if lam < 0:
            raise RoutingError(f"lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.context_windows = dict(context_windows or {})
        self.max_cost = max_cost
        self.max_fallbacks = max_fallbacks

    def choose(self, pred: Prediction, allowed: np.ndarray | None = None) -> np.ndarray:
        """Batch choice with this policy's λ and allowed list (see :func:`choose`)."""
        if self.allowed is not None:
            mask = np.array([m in self.allowed for m in pred.models])
            allowed = mask if allowed is None else (np.asarray(allowed, dtype=bool) & mask)
        return choose(pred, self.lam, allowed)

    def _exclusion(
        self, model: str, cost: float, quality: float, prompt_tokens: int | None, allowed: Collection[str] | None
    ) -> str | None:
        if self.allowed is not None and model not in self.allowed:
            return "not allowed"
        if allowed is not None and model not in allowed:
            return "not allowed"
        if math.isnan(quality) or math.isnan(cost):
            return "no prediction"
        window = self.context_windows.get(model)
        if window is not None and prompt_tokens is not None and prompt_tokens > window:
            return f"context window {window} < {prompt_tokens} tokens"
        if self.max_cost is not None and cost > self.max_cost:
            return f"predicted cost {cost:.6g} > max_cost {self.max_cost:.6g}"
        return None

    def decide(
        self,
        quality: Sequence[float] | np.ndarray,
        cost: Sequence[float] | np.ndarray,
        models: Sequence[str],
        *,
        route: str,
        router_name: str,
        prompt_tokens: int | None = None,
        allowed: Collection[str] | None = None,
        lam: float | None = None,
        budget: dict[str, Any] | None = None,
    ) -> Decision:
        """One request's :class:`~turnout.types.Decision` from one row of predictions.

        ``allowed`` further restricts this request (e.g. an API key's models);
        ``lam`` overrides the policy's λ for this request (e.g. a budget
        tightening it); ``budget`` is carried into the decision verbatim.
        Raises :class:`NoCandidateError` listing every exclusion when nothing is left.
        """
        t0 = time.perf_counter()
        lam_used = self.lam if lam is None else float(lam)
        if lam_used < 0:
            raise RoutingError(f"lam must be >= 0, got {lam_used}")
        if not (len(quality) == len(cost) == len(models)):
            raise RoutingError(f"decide: {len(quality)} qualities, {len(cost)} costs and {len(models)} models differ")
        candidates: list[Candidate] = []
        live: list[Candidate] = []
        for name, q, c in zip(models, quality, cost):
            q, c = float(q), float(c)
            why = self._exclusion(name, c, q, prompt_tokens, allowed)
            cand = Candidate(model=name, quality=q, cost=c, utility=q - lam_used * c, excluded=why)
            candidates.append(cand)
            if why is None:
                live.append(cand)
        if not live:
            detail = "; ".join(f"{c.model}: {c.excluded}" for c in candidates) or "no models configured"
            raise NoCandidateError(f"route '{route}': every candidate was excluded ({detail})")
        # best utility first; within a tie the cheaper model first (same rule as choose())
        live.sort(key=lambda c: (-round(c.utility, 12), c.cost))
        chosen, rest = live[0], live[1:]
        if self.max_fallbacks is not None:
            rest = rest[: self.max_fallbacks]
        reasons = [
            Reason(
                "policy",
                f"utility = quality - {lam_used:g} * cost; chose {chosen.model} (utility {chosen.utility:.4g})",
                {"model": chosen.model, "utility": chosen.utility, "lambda": lam_used},
            )
        ]
        reasons += [
            Reason("excluded", f"excluded {c.model}: {c.excluded}", {"model": c.model, "why": c.excluded})
            for c in candidates
            if c.excluded
        ]
        return Decision(
            route=route,
            model=chosen.model,
            candidates=candidates,
            lam=lam_used,
            router=router_name,
            fallbacks=[c.model for c in rest],
            budget=budget,
            reasons=reasons,
            elapsed_ms=(time.perf_counter() - t0) * 1000.0,
        )


__all__ = ["Policy", "calibrate_lambda", "choose", "estimate_tokens", "lambda_grid"]
