from __future__ import annotations

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing import Policy, choose, create_router, load_router, save_router


def test_prior_router_needs_no_data() -> None:
    r = create_router("prior", quality={"smollm2": 0.55, "gemma": 0.40}, cost={"gemma": 0.0})
    pred = r.predict(np.zeros((4, 8)))
    assert pred.models == ["smollm2", "gemma"]
    assert np.allclose(pred.quality, [[0.55, 0.40]] * 4) and (pred.cost == 0).all()
    assert (choose(pred, 0.0) == 0).all()
    d = Policy().decide(pred.quality[0], pred.cost[0], pred.models, route="auto", router_name=r.name)
    assert d.model == "smollm2" and d.fallbacks == ["gemma"]


def test_prior_router_costs_trade_off() -> None:
    r = create_router("prior", quality={"big": 0.8, "small": 0.6}, cost={"big": 0.01, "small": 0.0})
    pred = r.predict(np.zeros((1, 3)))
    assert choose(pred, 0.0)[0] == 0 and choose(pred, 100.0)[0] == 1


def test_prior_router_validates_config() -> None:
    with pytest.raises(RoutingError, match=r"\[0, 1\]"):
        create_router("prior", quality={"a": 1.5})
    with pytest.raises(RoutingError, match="at least one model"):
        create_router("prior", quality={})
    with pytest.raises(RoutingError, match="no quality"):
        create_router("prior", quality={"a": 0.5}, cost={"b": 1.0})


def test_prior_round_trip(tmp_path) -> None:  # noqa: ANN001
    r = create_router("prior", quality={"a": 0.3, "b": 0.6})
    loaded, meta = load_router(save_router(r, tmp_path / "p.npz", meta={"note": "x"}))
    assert meta["note"] == "x" and loaded.predict(np.zeros((1, 2))).quality.tolist() == [[0.3, 0.6]]
