"""Off-policy estimators on simulated logs, where the target policy's truth is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from turnout.errors import DataError
from turnout.evaluation.offpolicy import (
    crossfit_direct_model,
    doubly_robust,
    estimate,
    ips,
    snips,
)
from turnout.evaluation.simulate_log import (
    greedy_policy,
    simulate_log,
    softmax_policy,
    true_value,
)
from turnout.evaluation.table import RoutingTable
from turnout.routing import Prediction


def _table(n: int = 400, seed: int = 0) -> tuple[RoutingTable, np.ndarray]:
    """Three models whose success depends on the prompt (a context X drives it); 0/1 scores, per-prompt costs."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    logits = X[:, :3] * 1.5 + np.array([0.5, 0.0, -0.5])
    p = 1.0 / (1.0 + np.exp(-logits))
    scores = (rng.random((n, 3)) < p).astype(float)
    costs = np.array([3e-3, 1e-3, 2e-4]) * rng.uniform(0.5, 1.5, size=(n, 1))
    ids = [f"p{i}" for i in range(n)]
    return RoutingTable(ids, ids, ["big", "mid", "small"], scores, costs), X


def _policies(table: RoutingTable, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A randomised logging policy and a deterministic target, both reading a noisy view of the context."""
    rng = np.random.default_rng(99)
    guess = 1.0 / (1.0 + np.exp(-(X[:, :3] + rng.normal(scale=1.0, size=(len(X), 3)))))
    log_pred = Prediction(table.models, guess, table.costs)
    tgt_pred = Prediction(table.models, guess[:, ::-1].copy(), table.costs)  # another router's opinion
    return softmax_policy(log_pred, 100.0, temperature=0.1, epsilon=0.2), greedy_policy(tgt_pred, 50.0)


def test_estimators_are_unbiased_and_their_intervals_cover() -> None:
    table, X = _table()
    log_p, tgt = _policies(table, X)
    truth_q, truth_c = true_value(table, tgt)
    errors: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    covered: dict[str, list[bool]] = {"ips": [], "snips": [], "dr": []}
    cost_err = []
    for seed in range(200):
        log = simulate_log(table, log_p, seed)
        for k, e in estimate(log.actions, log.propensity, log.reward, tgt, contexts=X, seed=seed).items():
            errors[k].append(e.value - truth_q)
            covered[k].append(e.ci[0] <= truth_q <= e.ci[1])
        cost_err.append(ips(log.actions, log.propensity, log.cost, tgt).value - truth_c)
    for k in ("ips", "dr"):  # unbiased: the mean error over seeds is within (3×) its standard error
        err = np.array(errors[k])
        assert abs(err.mean()) <= 3 * err.std(ddof=1) / np.sqrt(len(err)), k
    err = np.array(errors["snips"])  # biased by O(1/n) only: indistinguishable from 0 at this size
    assert abs(err.mean()) <= 3 * err.std(ddof=1) / np.sqrt(len(err))
    ce = np.array(cost_err)
    assert abs(ce.mean()) <= 3 * ce.std(ddof=1) / np.sqrt(len(ce))
    for k, c in covered.items():
        assert np.mean(c) >= 0.88, k
    # the direct model pays: DR is tighter than IPS
    assert np.std(errors["dr"]) < np.std(errors["ips"])


def test_on_policy_the_estimates_are_the_logged_mean() -> None:
    table, X = _table(n=200, seed=1)
    log_p, _ = _policies(table, X)
    log = simulate_log(table, log_p, 3)
    mean = log.reward.mean()
    assert ips(log.actions, log.propensity, log.reward, log_p).value == pytest.approx(mean)
    assert snips(log.actions, log.propensity, log.reward, log_p).value == pytest.approx(mean)


def test_dr_with_the_true_expected_reward_is_exact() -> None:
    table, X = _table(n=200, seed=2)
    table.scores = np.clip(table.costs * 300, 0, 1)  # a deterministic reward: the direct model can be perfect
    log_p, tgt = _policies(table, X)
    log = simulate_log(table, log_p, 4)
    truth, _ = true_value(table, tgt)
    e = doubly_robust(log.actions, log.propensity, log.reward, tgt, direct=table.scores)
    assert e.value == pytest.approx(truth, abs=1e-12)
    assert ips(log.actions, log.propensity, log.reward, tgt).value != pytest.approx(truth, abs=1e-6)


def test_direct_model_is_cross_fitted() -> None:
    """A request's prediction never sees its own reward (what keeps DR unbiased)."""
    table, X = _table(n=120, seed=5)
    log = simulate_log(table, _policies(table, X)[0], 6)
    dm = crossfit_direct_model(X, log.actions, log.reward, 3, seed=0)
    changed = log.reward.copy()
    changed[7] = 1.0 - changed[7]
    dm2 = crossfit_direct_model(X, log.actions, changed, 3, seed=0)
    assert np.allclose(dm[7], dm2[7])
    assert not np.allclose(dm, dm2)  # it does learn from the others'


def test_simulated_actions_follow_the_logging_probabilities() -> None:
    table, _ = _table(n=50, seed=7)
    probs = np.tile([0.7, 0.2, 0.1], (50, 1))
    actions = np.concatenate([simulate_log(table, probs, s).actions for s in range(100)])
    assert np.allclose(np.bincount(actions, minlength=3) / len(actions), [0.7, 0.2, 0.1], atol=0.02)
    log = simulate_log(table, probs, 0, resample=True)
    assert log.rows.shape == (50,) and len(np.unique(log.rows)) < 50


def test_bad_inputs_are_refused_with_the_fix() -> None:
    table, _ = _table(n=10)
    probs = np.full((10, 3), 1 / 3)
    a, r = np.zeros(10, dtype=int), np.ones(10)
    with pytest.raises(DataError, match="propensity"):
        ips(a, np.zeros(10), r, probs)
    with pytest.raises(DataError, match="sum to 1"):
        ips(a, np.ones(10), r, probs * 2)
    with pytest.raises(DataError, match="disagree"):
        ips(a, np.ones(9), r, probs)
    with pytest.raises(DataError, match="model indices"):
        ips(a + 5, np.ones(10), r, probs)
    table.scores[0, 2] = np.nan
    with pytest.raises(DataError, match="no outcome"):
        simulate_log(table, probs, 0)
