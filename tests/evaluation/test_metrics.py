import numpy as np
import pytest

from turnout.evaluation.metrics import aiq, apgr_cpt, cost_fraction_to_match, hull_quality_at, nondecreasing_hull, same_cost


def test_hull_drops_dominated_and_concave_points():
    pts = np.array([[1, 0.5], [2, 0.55], [3, 0.9], [4, 0.8], [5, 0.95]])
    h = nondecreasing_hull(pts)
    # (2, .55) lies under the chord (1,.5)-(3,.9); (4,.8) is dominated
    assert h.tolist() == [[1, 0.5], [3, 0.9], [5, 0.95]]


def test_aiq_hand_computed():
    # hull (1,.5)-(3,.9): area over [1,3] = 2 * (.5+.9)/2 = 1.4 -> /2 = .7
    assert aiq(np.array([[1, 0.5], [3, 0.9]]), 1, 3) == pytest.approx(0.7, abs=1e-6)
    # router starting at cost 2: zero on [1,2], then flat .8 on [2,3] -> .4
    assert aiq(np.array([[2, 0.8]]), 1, 3) == pytest.approx(0.4, abs=1e-3)


def test_quality_at_and_cost_fraction():
    h = nondecreasing_hull(np.array([[1, 0.5], [3, 0.9]]))
    assert hull_quality_at(h, 2) == pytest.approx(0.7)
    assert cost_fraction_to_match(np.array([[1, 0.5], [3, 0.9]]), 0.7, 4) == pytest.approx(0.5)
    assert cost_fraction_to_match(np.array([[1, 0.5]]), 0.7, 4) is None


def test_apgr_cpt_hand_computed():
    # weak .5, strong .9; at share .5 quality .8 -> PGR .75
    r = apgr_cpt(np.array([0.5]), np.array([0.8]), 0.5, 0.9)
    assert r["apgr"] == pytest.approx(0.5 * 0.75 / 2 + 0.5 * (0.75 + 1) / 2)
    assert r["cpt50"] == 0.5 and r["cpt80"] == 1.0


def test_auc_matches_hand_computed_pairs_and_ties():
    from turnout.evaluation.metrics import auc

    # pairs (pos, neg): (0.9,0.1) win, (0.9,0.5) win, (0.4,0.1) win, (0.4,0.5) loss -> 3/4
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.5])) == 0.75
    assert auc(np.array([1, 0]), np.array([0.3, 0.3])) == 0.5  # a tie counts half
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_within_task_auc_ignores_the_task_mix():
    from turnout.evaluation.metrics import within_task_auc

    # task a: model 0 always succeeds, task b: always fails; predicting the task mean ranks
    # perfectly across tasks but says nothing within one -> no (task, model) pair has both outcomes
    S = np.array([[1.0], [1.0], [0.0], [0.0]])
    assert within_task_auc(np.array([[0.9], [0.9], [0.1], [0.1]]), S, ["a", "a", "b", "b"]) is None
    # within task a, the prediction orders the two outcomes correctly; within b it reverses them
    S = np.array([[1.0], [0.0], [1.0], [0.0]])
    Q = np.array([[0.8], [0.2], [0.3], [0.7]])
    assert within_task_auc(Q, S, ["a", "a", "b", "b"]) == 0.5
    assert within_task_auc(Q[:2], S[:2], ["a", "a"]) == 1.0


def test_aiq_on_a_range_of_no_width_is_the_quality_at_that_cost():
    """One model, or every model priced alike: AIQ is the limit of the mean, the hull's quality there."""
    from turnout.evaluation.metrics import aiq

    pts = np.array([[1.0, 0.4], [1.0, 0.7], [2.0, 0.9]])
    assert aiq(pts, 1.0, 1.0) == 0.7
    assert aiq(np.array([[2.0, 0.9]]), 1.0, 1.0) == 0.0  # cannot go that cheap: earns nothing
    with pytest.raises(ValueError):
        aiq(pts, 2.0, 1.0)


def test_costs_equal_up_to_rounding_are_one_cost():
    # means of equal prices over resampled prompts differ in the last bits: still no cost range
    lo, hi = 0.001, 0.0010000000000000002
    assert same_cost(lo, hi) and not same_cost(0.001, 0.0011)
    pts = np.array([[hi, 0.92], [lo, 0.80]])
    assert aiq(pts, lo, hi) == pytest.approx(0.92)  # the best quality at that one cost, not the cheaper point's


def test_aiq_never_leaves_zero_to_the_best_quality():
    rng = np.random.default_rng(0)
    for _ in range(200):
        pts = np.c_[rng.uniform(0.1, 1, 6), np.minimum(1.0, rng.uniform(0.5, 1.5, 6))]
        a = aiq(pts, pts[:, 0].min(), pts[:, 0].max())
        assert 0.0 <= a <= pts[:, 1].max()


def test_cost_fraction_of_a_free_best_model_is_none():
    assert cost_fraction_to_match(np.array([[0.0, 0.9], [0.0, 0.5]]), 0.9, 0.0) is None
