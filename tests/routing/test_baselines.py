from __future__ import annotations

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing import TrainingData, choose, create_router, load_router, save_router

from routing_synthetic import planted


def test_best_single_predicts_training_means() -> None:
    data, _ = planted(n=300, seed=0, missing=0.2)
    pred = create_router("best-single").fit(data).predict(data.X[:10])
    assert np.allclose(pred.quality[0], np.nanmean(data.scores, axis=0))
    assert np.allclose(pred.cost[3], np.nanmean(data.costs, axis=0))
    assert len(set(choose(pred, 0.0))) == 1


def test_cheapest_router_and_its_fallback() -> None:
    data, _ = planted(n=100)
    pred = create_router("cheapest").fit(data).predict(data.X)
    assert (choose(pred, 0.0) == 2).all()
    # with the cheapest excluded, the tie at 0 goes to the next cheapest
    pred.cost[:, 0] *= 2
    assert (choose(pred, 0.0, np.array([True, True, False])) == 1).all()


def test_random_router_is_random_but_reproducible() -> None:
    data, _ = planted(n=600, seed=1)
    r = create_router("random", seed=7).fit(data)
    idx = choose(r.predict(data.X), 0.0)
    shares = np.bincount(idx, minlength=3) / len(idx)
    assert np.all(np.abs(shares - 1 / 3) < 0.08)  # uniform among models at λ = 0
    assert np.array_equal(r.predict(data.X).quality, r.predict(data.X).quality)
    other = create_router("random", seed=8).fit(data)
    assert not np.array_equal(r.predict(data.X).quality, other.predict(data.X).quality)


@pytest.mark.parametrize("name", ["random", "best-single", "cheapest"])
def test_baselines_round_trip(name: str, tmp_path) -> None:  # noqa: ANN001
    data, _ = planted(n=50)
    r = create_router(name).fit(data)
    loaded, _ = load_router(save_router(r, tmp_path / "b.npz", meta={}))
    assert np.array_equal(r.predict(data.X).quality, loaded.predict(data.X).quality)


def test_column_with_no_outcome_gets_uninformed_quality() -> None:
    data, _ = planted(n=50)
    S = data.scores.copy()
    S[:, 1] = np.nan
    C = data.costs.copy()
    C[:, 1] = np.nan
    pred = create_router("best-single").fit(TrainingData(data.X, S, C, data.models)).predict(data.X[:1])
    assert pred.quality[0, 1] == 0.5 and np.isfinite(pred.cost).all()


def test_not_fitted() -> None:
    with pytest.raises(RoutingError, match="not fitted"):
        create_router("best-single").predict(np.zeros((1, 4)))
