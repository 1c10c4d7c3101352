"""Baseline routers: random, best single model, cheapest.

They predict per-model constants (plus, for ``random``, seeded noise), so the
one policy turns them into the obvious behaviour. The oracle is not a router:
the evaluation computes it from ground truth.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from turnout.routing._common import as_2d, column_means, mean_costs, require_fitted
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.registry import register_router


class _ConstantRouter(Router):
    """Shared plumbing: per-model mean quality and mean cost learned from training data."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.means: np.ndarray | None = None
        self.cost_means: np.ndarray | None = None

    def fit(self, data: TrainingData) -> _ConstantRouter:
        self.models = list(data.models)
        self.means = column_means(data.scores)
        self.cost_means = mean_costs(data.costs)
        return self

    def _quality(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> Prediction:
        require_fitted(self, "means")
        assert self.cost_means is not None
        X = as_2d(X, None, self.name)
        cost = np.broadcast_to(self.cost_means, (X.shape[0], len(self.models))).copy()
        return Prediction(models=list(self.models), quality=self._quality(X), cost=cost)

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "means")
        return {"params": self._params(), "models": self.models, "means": self.means, "cost_means": self.cost_means}

    def _params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _ConstantRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.means = np.asarray(state["means"])
        obj.cost_means = np.asarray(state["cost_means"])
        return obj


@register_router
class RandomRouter(_ConstantRouter):
    """A genuine random router: predicted quality is uniform noise in [0, 1).

    At λ = 0 the policy therefore picks uniformly at random among the available
    models; as λ grows, cheaper models win more often. The noise is seeded by
    ``seed`` *and* the prompt's features, so the same prompt always gets the
    same draw (reproducible runs, identical predictions after save/load).
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def _params(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def _quality(self, X: np.ndarray) -> np.ndarray:
        m = len(self.models)
        rows = [np.random.default_rng([self.seed, zlib.crc32(row.tobytes())]).random(m) for row in X]
        return np.asarray(rows, dtype=np.float64).reshape(X.shape[0], m)


@register_router
class BestSingleRouter(_ConstantRouter):
    """Predicts each model's mean training quality for every prompt.

    At λ = 0 the policy sends everything to the model with the best mean
    quality (the "best single model" baseline); other λ trace the single-model
    points.
    """

    name = "best-single"

    def _quality(self, X: np.ndarray) -> np.ndarray:
        assert self.means is not None
        return np.broadcast_to(self.means, (X.shape[0], len(self.models))).copy()


@register_router
class CheapestRouter(_ConstantRouter):
    """Always the cheapest model: quality 1 for the lowest mean cost, 0 for the rest.

    When the cheapest model is excluded, the others tie at 0 and the policy's
    tie rule falls back to the next cheapest.
    """

    name = "cheapest"

    def _quality(self, X: np.ndarray) -> np.ndarray:
        assert self.cost_means is not None
        q = np.zeros((X.shape[0], len(self.models)))
        q[:, int(np.argmin(self.cost_means))] = 1.0
        return q
