"""Bootstrap resamples of the test prompts: AIQ per resample, paired intervals of AIQ differences.

Every router, cascade and reference line of one evaluation is scored on the same resamples (the same
``weights``), so differences pair: the resample that is hard for one is mostly hard for the other.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from turnout.evaluation.metrics import aiq
from turnout.evaluation.table import RoutingTable


def bootstrap_weights(n: int, b: int, seed: int) -> np.ndarray:
    """``b`` × ``n`` multinomial counts: how often each test prompt appears in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)


def _resampled_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample, the weighted mean of each column of ``values`` (n × k), NaN cells left out: b × k."""
    obs = ~np.isnan(values)
    num = weights @ np.where(obs, values, 0.0)
    den = weights @ obs.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        means: np.ndarray = num / den
    return means


def interval95(samples: Any) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the finite values in ``samples`` (None when there are none)."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    return [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))] if s.size else None


def single_models_aiq_resamples(test: RoutingTable, weights: np.ndarray) -> np.ndarray:
    """The single-model hull's AIQ on each resample (NaN where a resample has no outcome at all)."""
    q, c = _resampled_means(test.scores, weights), _resampled_means(test.costs, weights)
    out = np.full(weights.shape[0], np.nan)
    for b, (qb, cb) in enumerate(zip(q, c)):
        ok = np.isfinite(qb) & np.isfinite(cb)
        if ok.any():  # one cost for all (up to rounding): aiq takes the limit, as for the point estimate
            out[b] = aiq(np.c_[cb[ok], qb[ok]], cb[ok].min(), cb[ok].max())
    return out


def aiq_resamples(choices: np.ndarray, test: RoutingTable, weights: np.ndarray) -> np.ndarray:
    """A router's AIQ on each resample, from its per-λ choices (L × n model indices); NaN where none.

    Each resample recomputes every λ point and the cost range (cheapest to most
    expensive single model) on the same resampled prompts; the choices stay fixed,
    so the spread is the test set's sampling noise, not the router's training noise.
    Resamples line up across routers (same ``weights``), so differences pair.
    """
    rows = np.arange(choices.shape[1])
    return outcome_aiq_resamples(test.scores[rows, choices], test.costs[rows, choices], test, weights)


def outcome_aiq_resamples(scores: np.ndarray, costs: np.ndarray, test: RoutingTable, weights: np.ndarray) -> np.ndarray:
    """The AIQ on each resample of a curve given per point the outcome of every test prompt (L × n scores, costs).

    A cascade's or fan-out's outcome on a prompt is not one model's cell, so its
    points come as outcomes; the cost range is still the single models' on each
    resample, so these AIQs pair with the routers' (same ``weights``).
    """
    qc = _resampled_means(np.asarray(scores, dtype=float).T, weights)  # b × L
    cc = _resampled_means(np.asarray(costs, dtype=float).T, weights)
    sq, sc = _resampled_means(test.scores, weights), _resampled_means(test.costs, weights)
    out = np.full(weights.shape[0], np.nan)
    for b in range(weights.shape[0]):
        ok = np.isfinite(sc[b]) & np.isfinite(sq[b])
        if ok.any():
            out[b] = aiq(np.c_[cc[b], qc[b]], sc[b][ok].min(), sc[b][ok].max())
    return out


def paired_comparisons(
    out: dict[str, Any],
    samples: dict[str, np.ndarray],
    single: np.ndarray,
    evaluation_only: Collection[str] = (),
    task_line: np.ndarray | None = None,
) -> None:
    """Add paired 95% intervals of AIQ differences to ``out`` (a ``run_eval`` result), in place.

    Each router gets ``aiq_gain_ci`` (its AIQ minus the single-model hull's on the
    same resamples) and, beside the router with the highest AIQ (``best_router``,
    never an evaluation-only router, one that reads true outcomes), ``aiq_vs_best_ci`` (its AIQ
    minus the best's). Paired intervals are narrower than two overlapping marginal
    ones: the resample that is hard for one router is mostly hard for the other.
    With ``task_line`` (the ``task_means`` reference's AIQ per resample), each
    router also gets ``aiq_vs_task_means_ci``: above 0, it found signal within tasks.
    """
    for name, s in samples.items():
        out["routers"][name]["aiq_gain_ci"] = interval95(s - single)
        if task_line is not None:
            out["routers"][name]["aiq_vs_task_means_ci"] = interval95(s - task_line)
    ranked = [n for n in samples if n not in set(evaluation_only)]
    if not ranked:
        return
    best = max(ranked, key=lambda n: out["routers"][n]["aiq"])
    out["best_router"] = best
    for name in ranked:
        if name != best:
            out["routers"][name]["aiq_vs_best_ci"] = interval95(samples[name] - samples[best])


__all__ = [
    "aiq_resamples",
    "bootstrap_weights",
    "interval95",
    "outcome_aiq_resamples",
    "paired_comparisons",
    "single_models_aiq_resamples",
]
