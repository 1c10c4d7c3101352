"""StaticRouter: fixed predictions for gateway tests."""

from __future__ import annotations

import numpy as np
import pytest

from turnout.routing.base import Router
from turnout.testing.static_router import StaticRouter


def test_predicts_the_given_scores_for_every_row():
    r = StaticRouter({"small": 0.6, "large": 0.9}, cost={"large": 2.0})
    assert isinstance(r, Router)
    pred = r.predict(np.zeros((3, 8)))
    assert pred.models == ["small", "large"]
    assert pred.quality.shape == (3, 2) and np.allclose(pred.quality, [[0.6, 0.9]] * 3)
    assert np.allclose(pred.cost, [[0.0, 2.0]] * 3)
    assert r.predict(np.zeros(8)).quality.shape == (1, 2)
    assert r.calls == 2


def test_state_round_trip_and_validation():
    r = StaticRouter({"a": 0.1, "b": 0.2}, {"a": 1.0, "b": 3.0})
    again = StaticRouter.from_state(r.get_state())
    assert np.allclose(again.predict(np.zeros((1, 2))).cost, [[1.0, 3.0]])
    with pytest.raises(ValueError, match="not in quality"):
        StaticRouter({"a": 1.0}, {"z": 1.0})
    with pytest.raises(ValueError):
        StaticRouter({})
