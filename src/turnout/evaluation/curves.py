"""Cost/quality curves of routing choices, measured on the TRUE test outcomes: the λ sweep and its metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.evaluation.metrics import aiq, cost_fraction_to_match, hull_quality_at, nondecreasing_hull
from turnout.evaluation.table import RoutingTable
from turnout.routing.base import Prediction
from turnout.routing.policy import choose, lambda_grid


def only_observed(pred: Prediction, test: RoutingTable) -> Prediction:
    """``pred`` with every (prompt, model) cell that has no TRUE outcome in ``test`` made unavailable.

    A model with no outcome for a test prompt cannot be chosen there: its
    quality there could not be measured.
    """
    avail = ~np.isnan(test.scores)
    return Prediction(
        models=pred.models,
        quality=pred.quality,
        cost=pred.cost,
        available=avail if pred.available is None else (pred.available & avail),
    )


def sweep(pred: Prediction, test: RoutingTable) -> dict[str, Any]:
    """The λ sweep of ``pred`` over ``test``: the (cost, quality) curve, measured on TRUE outcomes.

    Also returns, for the callers' bookkeeping, each λ's per-model shares and
    per-prompt choices (``_shares``, ``_choices``).
    """
    rows = np.arange(len(test))
    curve, shares, choices = [], [], []
    m = len(test.models)
    for lam in lambda_grid(pred):
        j = choose(pred, float(lam))
        choices.append(j)
        curve.append([float(test.costs[rows, j].mean()), float(test.scores[rows, j].mean())])
        shares.append((np.bincount(j, minlength=m)[:m] / max(len(j), 1)).tolist())
    return {"curve": curve, "_shares": shares, "_choices": np.array(choices)}


def distinct_points(curve: list[list[float]]) -> list[list[float]]:
    """``curve`` without repeats of a point already in it (λ values that make the same choices), order kept."""
    seen: set[tuple[float, float]] = set()
    out = []
    for c, q in curve:
        if (c, q) not in seen:
            seen.add((c, q))
            out.append([c, q])
    return out


def curve_metrics(curve: list[list[float]], base: dict[str, Any]) -> dict[str, Any]:
    """AIQ, max quality, quality at the best single model's cost and the cost fraction to match it."""
    pts = np.array(curve)
    lo, hi = base["_range"]
    h = nondecreasing_hull(pts)
    b = base["best_single"]
    q = hull_quality_at(h, b["cost"])
    return {
        "aiq": aiq(pts, lo, hi),
        "max_quality": float(pts[:, 1].max()),
        "quality_at_best_single_cost": None if np.isnan(q) else q,
        "cost_fraction_to_match_best": cost_fraction_to_match(pts, b["quality"], b["cost"]),
    }


__all__ = ["curve_metrics", "distinct_points", "only_observed", "sweep"]
