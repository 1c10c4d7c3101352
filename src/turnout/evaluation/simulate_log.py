"""Simulated request logs from routing tables: traffic where the truth of every policy is known.

A routing table holds every model's outcome on every prompt, so a log can be
*simulated*: per prompt, draw the model a logging policy would have chosen
(with its probabilities), record that model's score and cost and the
probability it had. Any other policy's true mean score and cost on the same
prompts is then known exactly (:func:`true_value`), which is what off-policy
estimators (:mod:`turnout.evaluation.offpolicy`) are checked against.

Policies are plain arrays of probabilities (prompts × models), built from a
router's :class:`~turnout.routing.base.Prediction` by :func:`greedy_policy`
(one-hot: a deterministic router) or :func:`softmax_policy` (a randomised
router with an exploration floor, like a bandit's).

Example::

    log = simulate_log(test, softmax_policy(knn.predict(X), lam=200.0), seed=1)
    truth_quality, truth_cost = true_value(test, greedy_policy(profile.predict(X), lam=0.0))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.table import RoutingTable
from turnout.routing.base import Prediction
from turnout.routing.policy import availability, choose


@dataclass(frozen=True)
class SimulatedLog:
    """One simulated log: per request, the prompt (row of the table), the chosen model, its probability,
    its score and its cost."""

    rows: np.ndarray
    actions: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    cost: np.ndarray


def greedy_policy(pred: Prediction, lam: float) -> np.ndarray:
    """The policy's deterministic choice (``choose``) as one-hot probabilities (n × K)."""
    idx = choose(pred, lam)
    probs = np.zeros(pred.quality.shape)
    probs[np.arange(len(idx)), idx] = 1.0
    return probs


def softmax_policy(pred: Prediction, lam: float, *, temperature: float = 0.05, epsilon: float = 0.1) -> np.ndarray:
    """A randomised router: softmax of utility / temperature, mixed with ``epsilon`` of uniform over available models.

    Every available model keeps at least ``epsilon / K`` probability (the
    support off-policy estimators need).
    """
    mask = availability(pred)
    util = np.where(mask, pred.quality - lam * pred.cost, -np.inf)
    logits = (util - util.max(axis=1, keepdims=True)) / temperature
    soft = np.where(mask, np.exp(logits), 0.0)
    soft /= soft.sum(axis=1, keepdims=True)
    return np.asarray((1.0 - epsilon) * soft + epsilon * mask / mask.sum(axis=1, keepdims=True))


def _check_policy(table: RoutingTable, probs: np.ndarray, what: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != table.scores.shape:
        raise DataError(f"the {what} policy's probabilities are {probs.shape}, the table is {table.scores.shape}")
    missing = np.isnan(table.scores) | np.isnan(table.costs)
    if (probs[missing] > 0).any():
        raise DataError(
            f"the {what} policy puts probability on a (prompt, model) cell with no outcome",
            file=table.source or None,
            fix="make those models unavailable on those prompts",
        )
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-6) or (probs < 0).any():
        raise DataError(f"the {what} policy's probabilities must be >= 0 and sum to 1 per prompt")
    return probs


def simulate_log(table: RoutingTable, logging_probs: np.ndarray, seed: int, *, resample: bool = False) -> SimulatedLog:
    """Draw one logged action per prompt from ``logging_probs`` (prompts × models) and record its outcome.

    With ``resample=True`` the prompts themselves are drawn with replacement
    first (traffic as a sample from the table's population), else every
    prompt is logged once, in table order.
    """
    probs = _check_policy(table, logging_probs, "logging")
    rng = np.random.default_rng(seed)
    n = len(table)
    rows = rng.integers(0, n, n) if resample else np.arange(n)
    cum = np.cumsum(probs[rows], axis=1)
    cum[:, -1] = 1.0  # no draw may fall past the last model through rounding
    actions = (rng.random(len(rows))[:, None] > cum).sum(axis=1)
    return SimulatedLog(
        rows=rows,
        actions=actions,
        propensity=probs[rows, actions],
        reward=table.scores[rows, actions],
        cost=table.costs[rows, actions],
    )


def true_value(table: RoutingTable, target_probs: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
    """The target policy's exact mean score and mean cost over ``rows`` (default: every prompt once)."""
    probs = _check_policy(table, target_probs, "target")
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    q = (probs[rows] * np.nan_to_num(table.scores[rows])).sum(axis=1).mean()
    c = (probs[rows] * np.nan_to_num(table.costs[rows])).sum(axis=1).mean()
    return float(q), float(c)


__all__ = ["SimulatedLog", "greedy_policy", "simulate_log", "softmax_policy", "true_value"]
