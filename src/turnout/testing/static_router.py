"""A router that always predicts the same scores: makes gateway tests deterministic.

Example::

    router = StaticRouter({"small": 0.6, "large": 0.9}, cost={"small": 0.1, "large": 2.0})
    pred = router.predict(np.zeros((3, 384)))   # every row: quality [0.6, 0.9], cost [0.1, 2.0]

It is not registered in the router registry by default (importing
``turnout.testing`` must not change global state); a test that needs it by
name can call ``turnout.routing.registry.register_router(StaticRouter)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from turnout.routing.base import Prediction, Router, TrainingData


class StaticRouter(Router):
    """Predicts fixed ``quality`` (and ``cost``, 0 by default) for every prompt.

    ``fit`` is accepted and ignored, so the router is usable unfitted; models
    are in the order of the ``quality`` mapping.
    """

    name: ClassVar[str] = "static"

    def __init__(self, quality: dict[str, float], cost: dict[str, float] | None = None) -> None:
        if not quality:
            raise ValueError("StaticRouter needs at least one model in 'quality'")
        unknown = sorted(set(cost or {}) - set(quality))
        if unknown:
            raise ValueError(f"cost names model(s) {unknown} that are not in quality {sorted(quality)}")
        self.models = list(quality)
        self._quality = np.array([float(quality[m]) for m in self.models], dtype=np.float64)
        self._cost = np.array([float((cost or {}).get(m, 0.0)) for m in self.models], dtype=np.float64)
        self.calls = 0  # how many predict() calls reached it, for tests that assert routing happened

    def fit(self, data: TrainingData) -> StaticRouter:
        return self

    def predict(self, X: np.ndarray) -> Prediction:
        X = np.asarray(X)
        n = 1 if X.ndim == 1 else X.shape[0]
        self.calls += 1
        return Prediction(
            models=list(self.models),
            quality=np.tile(self._quality, (n, 1)),
            cost=np.tile(self._cost, (n, 1)),
        )

    def get_state(self) -> dict[str, Any]:
        return {"models": list(self.models), "quality": self._quality.copy(), "cost": self._cost.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StaticRouter:
        models = list(state["models"])
        return cls(dict(zip(models, map(float, state["quality"]))), dict(zip(models, map(float, state["cost"]))))


__all__ = ["StaticRouter"]
