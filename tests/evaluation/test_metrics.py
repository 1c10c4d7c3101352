import numpy as np
import pytest

from turnout.evaluation.metrics import aiq, apgr_cpt, cost_fraction_to_match, hull_quality_at, nondecreasing_hull


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
