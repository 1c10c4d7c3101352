"""Off-policy evaluation: what another router would have scored and cost on traffic one router served.

A request log holds, per request, the model the *logging* policy chose, the
probability it had of choosing it (its propensity: 1.0 for a deterministic
router, exact for :class:`~turnout.routing.bandit.BanditRouter`), the feedback
score and the cost. A *target* policy gives, per request, a probability per
model (one-hot for a deterministic router). With ``w = π(a|x) / p`` the
importance weight of the logged action ``a``:

- **IPS**: ``mean(w · r)``. Unbiased whenever the logging policy gives
  positive probability to every action the target takes; high variance when
  the weights are large.
- **SNIPS** (self-normalised): ``Σ w·r / Σ w``. Biased by O(1/n), usually
  far less variance; the interval is the delta method's.
- **DR** (doubly robust): ``mean(Σ_a π(a|x) q̂(x, a) + w · (r − q̂(x, a)))``,
  with ``q̂`` a direct model of the reward. Unbiased if either the
  propensities or ``q̂`` are right; the lower ``q̂``'s error, the lower the
  variance. By default ``q̂`` is a per-arm ridge regression on the logged
  contexts (reduced to at most :data:`DM_DIMS` principal components),
  **cross-fitted**: the prediction for a request comes from a model fitted on
  the other folds only, so ``q̂`` never saw that request's reward and DR stays
  unbiased. A caller may pass its own ``q̂`` (e.g. the target router's
  predicted quality) instead.

Each estimate carries a 95% interval from the central limit theorem on its
per-request terms (``value ± 1.96 · sd / √n``), its standard error, the
effective sample size ``(Σw)² / Σw²`` and the share of requests where the
target could have taken the logged action. Quality and cost are estimated
separately, with the same weights.

Validated by ``bench/offpolicy_coverage.py`` on logs simulated from routing
tables, where the target's true value is known (:mod:`turnout.evaluation.simulate_log`).

Example::

    est = estimate(actions, propensity, reward, target_probs, contexts=X)
    est["dr"].value, est["dr"].ci        # the doubly robust estimate and its 95% interval
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from turnout.errors import DataError

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054
#: the direct model's context is reduced to at most this many principal components
DM_DIMS = 32
#: folds of the cross-fitted direct model
DM_FOLDS = 5
ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """One estimator's value, standard error and 95% interval, and how much of the log it rests on."""

    estimator: str
    value: float
    se: float
    ci: tuple[float, float]
    n: int
    #: effective sample size of the importance weights, (Σw)² / Σw²
    ess: float
    #: share of requests where the target gives the logged action a positive probability
    support: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        d = asdict(self)
        d["ci"] = [_num(self.ci[0]), _num(self.ci[1])]
        for k in ("value", "se", "ess"):
            d[k] = _num(d[k])
        return d


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _check(
    actions: np.ndarray, propensity: np.ndarray, reward: np.ndarray, target_probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(actions)
    p = np.asarray(propensity, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    pi = np.asarray(target_probs, dtype=np.float64)
    n = a.shape[0]
    if pi.ndim != 2 or pi.shape[0] != n or p.shape != (n,) or r.shape != (n,):
        raise DataError(
            f"off-policy inputs disagree: {n} actions, propensities {p.shape}, rewards {r.shape}, "
            f"target probabilities {pi.shape} (expected n × models)"
        )
    if n == 0:
        raise DataError("no logged request to evaluate on", fix="log requests with feedback and propensities first")
    if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= pi.shape[1]:
        raise DataError(f"logged actions must be model indices in 0..{pi.shape[1] - 1}")
    bad = ~(np.isfinite(p) & (p > 0) & (p <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"logging propensity {p[i]!r} is not in (0, 1]",
            row=i,
            fix="log the probability the logging policy gave the chosen model (1.0 if deterministic)",
        )
    if not np.isfinite(r).all():
        raise DataError("rewards must be finite numbers", row=int(np.flatnonzero(~np.isfinite(r))[0]))
    if (pi < -1e-12).any() or not np.allclose(pi.sum(axis=1), 1.0, atol=1e-6):
        raise DataError(
            "target probabilities must be >= 0 and sum to 1 per request",
            row=int(np.flatnonzero(~np.isclose(pi.sum(axis=1), 1.0, atol=1e-6) | (pi < 0).any(axis=1))[0]),
        )
    return a.astype(np.int64), p, r, pi


def _from_terms(name: str, terms: np.ndarray, value: float | None, w: np.ndarray, support: float) -> Estimate:
    n = terms.shape[0]
    v = float(terms.mean()) if value is None else value
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0
    return Estimate(name, v, se, (v - Z95 * se, v + Z95 * se), n, ess, support)


def ips(actions: np.ndarray, propensity: np.ndarray, reward: np.ndarray, target_probs: np.ndarray) -> Estimate:
    """Inverse propensity scoring: ``mean(w · r)`` with its CLT interval."""
    a, p, r, pi = _check(actions, propensity, reward, target_probs)
    w = pi[np.arange(len(a)), a] / p
    return _from_terms("ips", w * r, None, w, float((w > 0).mean()))


def snips(actions: np.ndarray, propensity: np.ndarray, reward: np.ndarray, target_probs: np.ndarray) -> Estimate:
    """Self-normalised IPS: ``Σ w·r / Σ w``; the interval is the delta method's (NaN when no weight is positive)."""
    a, p, r, pi = _check(actions, propensity, reward, target_probs)
    w = pi[np.arange(len(a)), a] / p
    support = float((w > 0).mean())
    if w.sum() <= 0:
        nan = math.nan
        return Estimate("snips", nan, nan, (nan, nan), len(a), 0.0, support)
    v = float((w * r).sum() / w.sum())
    # influence terms of the ratio estimator: the delta method's variance
    terms = w * (r - v) / w.mean()
    return _from_terms("snips", terms, v, w, support)


def doubly_robust(
    actions: np.ndarray, propensity: np.ndarray, reward: np.ndarray, target_probs: np.ndarray, direct: np.ndarray
) -> Estimate:
    """Doubly robust: the direct model's value under the target plus the weighted residual of the logged action.

    ``direct`` is the reward model's prediction per request and model (n × K);
    NaN cells must have zero target probability.
    """
    a, p, r, pi = _check(actions, propensity, reward, target_probs)
    q = np.asarray(direct, dtype=np.float64)
    if q.shape != pi.shape:
        raise DataError(f"the direct model's predictions are {q.shape}, the target probabilities {pi.shape}")
    rows = np.arange(len(a))
    w = pi[rows, a] / p
    q_logged = np.nan_to_num(q[rows, a])
    terms = (np.where(pi > 0, np.nan_to_num(q), 0.0) * pi).sum(axis=1) + w * (r - q_logged)
    return _from_terms("dr", terms, None, w, float((w > 0).mean()))


def _reduce(X: np.ndarray, dims: int) -> np.ndarray:
    """``X`` centred, on its top ``dims`` principal components (unsupervised: it reads no reward)."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] <= dims:
        return np.asarray(X - X.mean(axis=0))
    Xc = X - X.mean(axis=0)
    # through the smaller of the two Gram matrices: a few hundred requests of 4,096-d hashed features are common
    if Xc.shape[0] <= Xc.shape[1]:
        w, U = np.linalg.eigh(Xc @ Xc.T)
        top = np.argsort(w)[::-1][:dims]
        return np.asarray(U[:, top] * np.sqrt(np.maximum(w[top], 0.0)))
    w, V = np.linalg.eigh(Xc.T @ Xc)
    return np.asarray(Xc @ V[:, np.argsort(w)[::-1][:dims]])


def crossfit_direct_model(
    contexts: np.ndarray,
    actions: np.ndarray,
    reward: np.ndarray,
    n_models: int,
    *,
    folds: int = DM_FOLDS,
    reg: float = 1.0,
    dims: int = DM_DIMS,
    seed: int = 0,
) -> np.ndarray:
    """A cross-fitted per-model ridge regression of the reward on the contexts: predictions n × K.

    Each request's prediction comes from models fitted on the other folds'
    requests only. A model with fewer than 2 logged requests in those folds is
    predicted by their mean reward over every model (and the overall mean
    when a fold has nothing else). Ridge's intercept is not penalised.
    """
    a = np.asarray(actions, dtype=np.int64)
    r = np.asarray(reward, dtype=np.float64)
    n = a.shape[0]
    Z = _reduce(np.asarray(contexts, dtype=np.float64).reshape(n, -1), dims)
    Z = Z / max(float(np.sqrt((Z**2).sum(axis=1).mean())), 1e-12)  # unit typical norm: reg in observations' worth
    fold = np.random.default_rng(seed).permutation(n) % max(2, min(folds, n))
    out = np.empty((n, n_models))
    for f in np.unique(fold):
        test, train = fold == f, fold != f
        base = float(r[train].mean()) if train.any() else float(r.mean())
        for k in range(n_models):
            rows = train & (a == k)
            if rows.sum() < 2:
                out[test, k] = base
                continue
            Zk, rk = Z[rows], r[rows]
            zm, rm = Zk.mean(axis=0), rk.mean()
            Zc = Zk - zm
            theta = np.linalg.solve(Zc.T @ Zc + reg * np.eye(Z.shape[1]), Zc.T @ (rk - rm))
            out[test, k] = rm + (Z[test] - zm) @ theta
    return out


def estimate(
    actions: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    target_probs: np.ndarray,
    *,
    contexts: np.ndarray | None = None,
    direct: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Estimate]:
    """IPS, SNIPS and DR of one reward (quality or cost) under the target policy, each with its 95% interval.

    DR's direct model is ``direct`` when given, else the cross-fitted ridge
    on ``contexts`` (:func:`crossfit_direct_model`), else each model's
    cross-fitted mean reward (contexts of width 0).
    """
    a, p, r, pi = _check(actions, propensity, reward, target_probs)
    if direct is None:
        ctx = np.zeros((len(a), 0)) if contexts is None else np.asarray(contexts)
        direct = crossfit_direct_model(ctx, a, r, pi.shape[1], seed=seed)
    return {"ips": ips(a, p, r, pi), "snips": snips(a, p, r, pi), "dr": doubly_robust(a, p, r, pi, direct)}


def logged_value(reward: np.ndarray) -> Estimate:
    """The logging policy's own mean reward (on-policy: no weights), with its CLT interval, for comparison."""
    r = np.asarray(reward, dtype=np.float64)
    return _from_terms("logged", r, None, np.ones_like(r), 1.0)


__all__ = [
    "DM_DIMS",
    "DM_FOLDS",
    "ESTIMATORS",
    "Estimate",
    "crossfit_direct_model",
    "doubly_robust",
    "estimate",
    "ips",
    "logged_value",
    "snips",
]
