"""The contextual bandit router: feedback steers it, exploration stays bounded, propensities are exact, state persists."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing import TrainingData, create_router, load_router, save_router
from turnout.routing.bandit import BanditRouter, best_arm_probabilities

from routing_synthetic import planted


def _cold(**params: object) -> BanditRouter:
    return BanditRouter(models=["A", "B", "C"], dim=16, projection="random", **params)  # type: ignore[arg-type]


def _replay(bandit: BanditRouter, data: TrainingData, lam: float = 0.0, seed: int = 0) -> np.ndarray:
    """One online pass over ``data``: the bandit chooses, the table's score is the feedback; returns the scores got."""
    rng = np.random.default_rng(seed)
    got = np.empty(len(data.X))
    for t, x in enumerate(data.X):
        c = bandit.choose(x, costs=data.costs[t], lam=lam, rng=rng)
        got[t] = data.scores[t, c.arm]
        bandit.update_features(c.features, c.arm, float(got[t]), float(data.costs[t, c.arm]))
    return got


def test_feedback_changes_the_choice() -> None:
    bandit = _cold(max_explore=0.0)
    x = np.random.default_rng(1).normal(size=16)
    costs = np.array([1e-3, 1e-3, 1e-4])
    # no evidence: every arm is the prior, so the cheapest wins the tie
    assert bandit.choose(x, costs=costs).greedy == 2
    for _ in range(30):
        bandit.update(x, 0, 1.0)
        bandit.update(x, 2, 0.0)
    assert bandit.choose(x, costs=costs).model == "A"
    for _ in range(60):  # the feedback turns: A fails, B succeeds
        bandit.update(x, 0, 0.0)
        bandit.update(x, 1, 1.0)
    choice = bandit.choose(x, costs=costs)
    assert choice.model == "B" and choice.propensity == pytest.approx(1.0)
    # cost is in the reward: price B out of it
    assert bandit.choose(x, costs=np.array([1e-3, 10.0, 1e-4]), lam=1.0).model != "B"


def test_it_learns_which_model_suits_which_prompt() -> None:
    data, cluster = planted(n=1500, seed=3)
    bandit = BanditRouter(d=8, projection="pca", models=data.models, dim=16).fit_projection(data.X)
    got = _replay(bandit, data)
    best_single = float(np.nanmean(data.scores, axis=0).max())  # about 0.55
    assert got[-500:].mean() > best_single + 0.2  # the planted signal: about 0.9 is reachable
    # the frozen greedy policy routes each cluster to its model
    pred = bandit.predict(data.X)
    choice = np.argmax(pred.quality[:, :2], axis=1)
    assert (choice == cluster).mean() > 0.95


@pytest.mark.parametrize("max_explore", [0.05, 0.1, 0.3])
def test_exploration_stays_within_its_bound_and_propensities_are_exact(max_explore: float) -> None:
    data, _ = planted(n=300, seed=4)
    bandit = _cold(max_explore=max_explore, uniform_share=0.2)
    _replay(bandit, data, seed=5)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 16))
    costs = np.array([1e-3, 1e-3, 1e-4])
    for avail in (None, np.array([True, False, True])):
        P = bandit.probabilities(X, costs, lam=100.0, available=avail)
        assert np.allclose(P.sum(axis=1), 1.0)
        greedy = np.array([bandit.choose(x, costs, 100.0, available=avail).greedy for x in X[:50]])
        rows = np.arange(50)
        assert (1.0 - P[rows, greedy] <= max_explore + 1e-12).all()  # mass off the greedy arm <= the bound
        live = np.ones(3, bool) if avail is None else avail
        assert (P[:, live] >= 0.2 * max_explore / live.sum() - 1e-12).all()  # the floor off-policy evaluation needs
        assert (P[:, ~live] == 0).all()
    # the logged propensity is the probability the arm was drawn with: empirical frequencies agree
    x = X[0]
    draws = [bandit.choose(x, costs, 100.0, rng=rng) for _ in range(4000)]
    p = draws[0].probabilities
    freq = np.bincount([d.arm for d in draws], minlength=3) / len(draws)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(draws)) + 1e-3)
    assert all(d.propensity == pytest.approx(d.probabilities[d.arm]) for d in draws[:50])
    explored = np.mean([d.explored for d in draws])
    assert explored <= max_explore + 4 * np.sqrt(max_explore / len(draws))


def test_best_arm_probabilities_match_monte_carlo() -> None:
    mu = np.array([[0.5, 0.45, 0.3, 0.0]])
    sd = np.array([[0.05, 0.1, 0.01, 1.0]])
    mask = np.array([[True, True, True, False]])
    p = best_arm_probabilities(mu, sd, mask)
    draws = np.random.default_rng(0).normal(mu[0, :3], sd[0, :3], size=(200_000, 3))
    mc = np.bincount(draws.argmax(axis=1), minlength=3) / len(draws)
    assert p[0, 3] == 0 and p.sum() == pytest.approx(1.0)
    assert np.allclose(p[0, :3], mc, atol=3e-3)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    data, _ = planted(n=200, seed=7)
    bandit = create_router("bandit", d=8).fit(TrainingData(data.X[:100], data.scores[:100], data.costs[:100], data.models))
    assert isinstance(bandit, BanditRouter)
    _replay(bandit, TrainingData(data.X[100:], data.scores[100:], data.costs[100:], data.models))
    path = save_router(bandit, tmp_path / "bandit.npz", meta={"embedder": "test"})
    again, meta = load_router(path)
    assert isinstance(again, BanditRouter) and meta["router"] == "bandit"
    X = data.X[:20]
    assert np.allclose(again.probabilities(X, data.costs[:20], 50.0), bandit.probabilities(X, data.costs[:20], 50.0))
    assert np.allclose(again.predict(X).quality, bandit.predict(X).quality)
    assert np.array_equal(again.observations, bandit.observations)
    # and it goes on learning exactly as the original would
    for b in (bandit, again):
        b.update(X[0], 1, 1.0, 0.002)
    assert np.allclose(again.predict(X).quality, bandit.predict(X).quality)


def test_replicas_share_learning_exactly_through_deltas() -> None:
    data, _ = planted(n=400, seed=8)
    one, left, right = _cold(), _cold(), _cold()
    for t, x in enumerate(data.X):
        arm = t % 3
        one.update(x, arm, float(data.scores[t, arm]), float(data.costs[t, arm]))
        (left if t % 2 else right).update(x, arm, float(data.scores[t, arm]), float(data.costs[t, arm]))
    dl, dr = left.export_delta(), right.export_delta()
    left.merge_delta(dr)
    right.merge_delta(dl)
    for b in (left, right):
        assert np.allclose(b.predict(data.X[:30]).quality, one.predict(data.X[:30]).quality)
        assert np.array_equal(b.observations, one.observations)
    assert left.export_delta()["n"].sum() == 0  # exported once: nothing is sent twice


def test_concurrent_updates_are_all_counted() -> None:
    bandit = _cold()
    x = np.ones(16)

    def work() -> None:
        for _ in range(200):
            bandit.update(x, 1, 1.0)
            bandit.choose(x, costs=np.zeros(3))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bandit.observations[1] == 800


def test_bad_input_is_refused_with_the_reason() -> None:
    bandit = _cold()
    with pytest.raises(RoutingError, match="quality must be a score"):
        bandit.update(np.zeros(16), 0, 1.5)
    with pytest.raises(RoutingError, match="arm 3 out of range"):
        bandit.update(np.zeros(16), 3, 1.0)
    with pytest.raises(RoutingError, match="built for 16"):
        bandit.choose(np.zeros(8))
    with pytest.raises(RoutingError, match="projection"):
        BanditRouter(projection="umap")
    with pytest.raises(RoutingError, match="fit_projection"):
        BanditRouter(models=["A"], dim=4).choose(np.zeros(4))
    with pytest.raises(RoutingError, match="cannot change after observations"):
        bandit.update(np.ones(16), 0, 1.0)
        bandit.fit_projection(np.ones((4, 16)))


def test_warm_start_from_an_offline_router_sets_the_prior() -> None:
    data, cluster = planted(n=400, seed=9)
    knn = create_router("knn").fit(data)
    bandit = BanditRouter(d=8, projection="pca").warm_start(data.X, knn.predict(data.X).quality, models=data.models)
    choice = np.argmax(bandit.predict(data.X).quality[:, :2], axis=1)
    assert (choice == cluster).mean() > 0.9  # before any feedback, it already routes as the offline router would
