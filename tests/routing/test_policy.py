from __future__ import annotations

import numpy as np
import pytest

from turnout.errors import NoCandidateError, RoutingError
from turnout.routing import Policy, Prediction, calibrate_lambda, choose, estimate_tokens, lambda_grid


def random_pred(n: int = 200, m: int = 5, seed: int = 0) -> Prediction:
    rng = np.random.default_rng(seed)
    q = rng.random((n, m))
    c = rng.uniform(0.1, 1.0, size=(1, m)) * rng.uniform(0.5, 1.5, size=(n, 1)) * 1e-3
    return Prediction(models=[f"m{i}" for i in range(m)], quality=q, cost=c)


def test_lambda_zero_picks_max_quality() -> None:
    pred = random_pred()
    assert np.array_equal(choose(pred, 0.0), pred.quality.argmax(axis=1))


def test_huge_lambda_picks_cheapest() -> None:
    pred = random_pred()
    lam = lambda_grid(pred)[-1]
    assert np.array_equal(choose(pred, lam), pred.cost.argmin(axis=1))


def test_ties_go_to_cheaper_model() -> None:
    pred = Prediction(models=["pricey", "cheap"], quality=np.array([[0.7, 0.7]]), cost=np.array([[2.0, 1.0]]))
    assert choose(pred, 0.0)[0] == 1


def test_allowed_mask_and_unavailable_cells() -> None:
    pred = random_pred(n=50, m=3)
    best = pred.quality.argmax(axis=1)
    allowed = np.ones(3, dtype=bool)
    allowed[0] = False
    idx = choose(pred, 0.0, allowed)
    assert (idx != 0).all()
    pred.available = np.ones((50, 3), dtype=bool)
    pred.available[:, 1] = False
    assert set(choose(pred, 0.0, allowed)) == {2}
    assert best.size == 50
    with pytest.raises(NoCandidateError):
        choose(pred, 0.0, np.array([False, True, False]))


def test_lambda_grid_is_monotone_and_spans_curve() -> None:
    pred = random_pred()
    grid = lambda_grid(pred, n=40)
    assert grid[0] == 0.0 and len(grid) == 40 and np.all(np.diff(grid) > 0)
    costs = [pred.cost[np.arange(200), choose(pred, lam)].mean() for lam in grid]
    # cost of the chosen models never increases with λ
    assert all(b <= a + 1e-15 for a, b in zip(costs, costs[1:]))
    assert costs[0] > costs[-1]


def test_calibrate_cost_target() -> None:
    pred = random_pred()
    lo = pred.cost.min(axis=1).mean()
    hi = pred.cost[np.arange(200), choose(pred, 0.0)].mean()
    target = 0.5 * (lo + hi)
    lam = calibrate_lambda(pred, target_cost=target)
    spent = pred.cost[np.arange(200), choose(pred, lam)].mean()
    assert spent <= target
    # the smallest such λ: a bit less spends over the target
    assert pred.cost[np.arange(200), choose(pred, lam * 0.9)].mean() > target
    assert calibrate_lambda(pred, target_cost=hi * 2) == 0.0
    with pytest.raises(RoutingError, match="raise the target"):
        calibrate_lambda(pred, target_cost=lo * 0.5)


def test_calibrate_share_target() -> None:
    pred = random_pred()
    expensive = int(np.argmax(pred.cost.mean(axis=0)))
    lam = calibrate_lambda(pred, target_share=0.05)
    assert (choose(pred, lam) == expensive).mean() <= 0.05
    second = int(np.argsort(pred.cost.mean(axis=0))[-2])
    lam2 = calibrate_lambda(pred, target_share=0.02, model=f"m{second}")
    assert (choose(pred, lam2) == second).mean() <= 0.02
    # the cheapest model's share only grows with λ: a low target for it is unreachable
    with pytest.raises(RoutingError, match="raise the target"):
        calibrate_lambda(pred, target_share=0.0, model=f"m{int(np.argmin(pred.cost.mean(axis=0)))}")
    with pytest.raises(RoutingError):
        calibrate_lambda(pred, target_share=0.1, model="nope")
    with pytest.raises(RoutingError):
        calibrate_lambda(pred)


def test_decide_constraints_fallbacks_and_reasons() -> None:
    policy = Policy(lam=0.0, context_windows={"small": 2048})
    d = policy.decide(
        [0.9, 0.8, 0.5, 0.3],
        [0.0, 0.01, 0.002, 0.001],
        ["small", "big", "mid", "tiny"],
        route="auto",
        router_name="knn",
        prompt_tokens=3100,
        allowed={"small", "big", "mid"},
        budget={"remaining_usd": 1.0},
    )
    assert d.model == "big"
    assert d.fallbacks == ["mid"]
    excl = {c.model: c.excluded for c in d.candidates}
    assert excl["small"] == "context window 2048 < 3100 tokens"
    assert excl["tiny"] == "not allowed"
    assert excl["big"] is None and d.budget == {"remaining_usd": 1.0}
    assert d.router == "knn" and d.route == "auto" and d.lam == 0.0
    # a large λ prefers the cheaper candidate and keeps utilities consistent
    d2 = Policy(lam=100.0).decide([0.9, 0.8], [0.01, 0.001], ["a", "b"], route="r", router_name="x")
    assert d2.model == "b" and d2.fallbacks == ["a"]
    assert d2.candidates[0].utility == pytest.approx(0.9 - 1.0)


def test_decide_no_candidate_lists_reasons() -> None:
    with pytest.raises(NoCandidateError, match="not allowed"):
        Policy(allowed=["z"]).decide([0.5], [0.1], ["a"], route="auto", router_name="knn")


def test_max_cost_excludes() -> None:
    d = Policy(max_cost=0.005).decide([0.9, 0.5], [0.01, 0.001], ["a", "b"], route="r", router_name="x")
    assert d.model == "b" and "max_cost" in (d.candidates[0].excluded or "")


def test_estimate_tokens() -> None:
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("") == 0


def test_lambda_grid_when_lambda_changes_nothing() -> None:
    pred = Prediction(models=["a", "b"], quality=np.array([[0.9, 0.5]]), cost=np.array([[1.0, 2.0]]))
    assert lambda_grid(pred).tolist() == [0.0]
