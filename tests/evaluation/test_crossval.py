import numpy as np
import pytest

from turnout.errors import DataError
from turnout.evaluation.crossval import choose_router, cross_validate, fold_indices
from turnout.evaluation.table import RoutingTable

from eval_tables import two_kinds


def test_folds_partition_the_prompts_and_are_seeded():
    splits = fold_indices(23, 4, seed=1)
    held = np.concatenate([h for _, h in splits])
    assert sorted(held.tolist()) == list(range(23))  # every prompt held out exactly once
    for tr, h in splits:
        assert not set(tr) & set(h) and len(tr) + len(h) == 23
    assert [h.tolist() for _, h in fold_indices(23, 4, seed=1)] == [h.tolist() for _, h in splits]
    assert [h.tolist() for _, h in fold_indices(23, 4, seed=2)] != [h.tolist() for _, h in splits]


def test_too_few_prompts_or_folds_fail_clearly():
    with pytest.raises(DataError, match="too few"):
        fold_indices(5, 4, seed=0)
    with pytest.raises(DataError, match="2 or more folds"):
        fold_indices(50, 1, seed=0)


def test_cross_validation_prefers_the_router_that_reads_the_prompt():
    """Prompts of two kinds (one embedding direction each): the cheap model is right on one kind only."""
    rng = np.random.default_rng(0)
    n = 160
    kind = np.arange(n) % 2
    X = np.c_[kind, 1 - kind, rng.normal(scale=0.05, size=(n, 2))]
    S = np.c_[(kind == 0) & (rng.random(n) < 0.95), rng.random(n) < 0.9].astype(float)
    C = np.tile([1.0, 10.0], (n, 1))
    t = RoutingTable([str(i) for i in range(n)], ["p"] * n, ["cheap", "big"], S, C)
    scores = cross_validate(t, X, ["best-single", "knn"], folds=4, seed=0)
    assert scores["knn"]["aiq"] > scores["best-single"]["aiq"] + 0.05
    assert len(scores["knn"]["aiq_folds"]) == 4 and 0 < scores["knn"]["max_quality"] <= 1
    assert choose_router(scores) == "knn"
    assert choose_router({"a": {"aiq": 0.5}, "b": {"aiq": 0.5}}) == "a"  # ties: the first listed


def test_an_ensemble_of_routers_fitted_in_the_same_fold_reuses_them_and_scores_the_same():
    t, X = two_kinds()
    params = {"ensemble": {"members": ["knn", "bt", "profile"]}}
    together = cross_validate(t, X, ["knn", "bt", "profile", "ensemble"], folds=4, seed=0, router_params=params)
    alone = cross_validate(t, X, ["ensemble"], folds=4, seed=0, router_params=params)
    assert np.allclose(together["ensemble"]["aiq_folds"], alone["ensemble"]["aiq_folds"], atol=1e-12)
    # a member with its own parameters is not the ensemble's member: the ensemble fits its own
    tuned = cross_validate(t, X, ["knn", "bt", "profile", "ensemble"], folds=4, seed=0, router_params={**params, "knn": {"k": 3}})
    assert np.allclose(tuned["ensemble"]["aiq_folds"], alone["ensemble"]["aiq_folds"], atol=1e-12)


def test_tied_with_pairs_the_folds():
    from turnout.evaluation.crossval import tied_with

    cv = {
        "a": {"aiq_folds": [0.80, 0.70, 0.90, 0.60]},
        # always 0.01 below a: a small gap, but the same on every fold, so the folds do tell them apart
        "steady": {"aiq_folds": [0.79, 0.69, 0.89, 0.59]},
        # 0.01 below a on average, by +0.03 / -0.05 swings: the folds cannot tell
        "noisy": {"aiq_folds": [0.83, 0.65, 0.93, 0.55]},
        "far": {"aiq_folds": [0.50, 0.40, 0.60, 0.30]},
    }
    assert tied_with(cv, "a") == ["noisy"]
    # steady sits well inside a's spread across folds (0.60-0.90) and is still not tied: the folds pair
    # z = 0 ties nothing: every candidate differs from a on average
    assert tied_with(cv, "a", z=0.0) == []
