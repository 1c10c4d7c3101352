import numpy as np

from turnout.evaluation.runner import baselines, curve_metrics, evaluate_router
from turnout.evaluation.table import RoutingTable
from turnout.routing.base import Prediction, Router


class TruthRouter(Router):
    """Predicts the true score stored in X's first columns: a perfect router for the test."""

    name = "truth"

    def fit(self, data):
        self.models, self.c = data.models, np.nanmean(data.costs, axis=0)
        return self

    def predict(self, X):
        return Prediction(self.models, X.copy(), np.broadcast_to(self.c, X.shape).copy())


def _table(n, rng):
    S = (rng.random((n, 2)) < [0.5, 0.9]).astype(float)
    C = np.tile([1.0, 10.0], (n, 1))
    return RoutingTable([str(i) for i in range(n)], ["p"] * n, ["weak", "strong"], S, C)


def test_perfect_router_reaches_oracle_and_beats_singles():
    rng = np.random.default_rng(0)
    tr, te = _table(50, rng), _table(80, rng)
    out = evaluate_router(TruthRouter(), tr, te, tr.scores, te.scores)
    base = baselines(te)
    m = curve_metrics(out["curve"], base)
    assert m["max_quality"] == base["oracle"]["quality"]
    assert m["aiq"] > base["single_models_aiq"]
    assert m["cost_fraction_to_match_best"] < 1.0
    assert out["decision_ms_p50"] > 0
