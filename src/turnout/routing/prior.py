"""A router that needs no training data: qualities (and costs) come from config.

Used by the gateway's embedded default fleet, where no routing table exists
yet. Every prompt gets the same configured quality per model, so the policy
picks by quality − λ·cost alone; with ``cost`` unset the cost is 0 (local
models). ``fit`` is accepted and ignored, so pipelines can treat it like any
other router.

Example::

    router = create_router("prior", quality={"smollm2": 0.55, "gemma3-270m": 0.40})
"""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.errors import RoutingError
from turnout.routing._common import as_2d
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.registry import register_router


@register_router
class PriorRouter(Router):
    """Configured constant quality (and optional cost, USD per request) per model."""

    name = "prior"

    def __init__(self, quality: dict[str, float], cost: dict[str, float] | None = None) -> None:
        if not isinstance(quality, dict) or not quality:
            raise RoutingError("the prior router needs quality={model: score, ...} with at least one model")
        if cost is not None and not isinstance(cost, dict):
            raise RoutingError("the prior router's cost must be {model: USD per request, ...}")
        for model, q in quality.items():
            if not 0.0 <= float(q) <= 1.0:
                raise RoutingError(f"prior router: quality of '{model}' is {q}; it must lie in [0, 1]")
        unknown = sorted(set(cost or {}) - set(quality))
        if unknown:
            raise RoutingError(f"prior router: cost given for {unknown} which have no quality; add them to quality")
        self.quality = {k: float(v) for k, v in quality.items()}
        self.cost = {k: float(v) for k, v in (cost or {}).items()}
        self.models = list(self.quality)

    def fit(self, data: TrainingData) -> PriorRouter:
        """No-op: the prior router's knowledge is its configuration."""
        return self

    def predict(self, X: np.ndarray) -> Prediction:
        n = as_2d(X, None, self.name).shape[0]
        q = np.array([self.quality[m] for m in self.models])
        c = np.array([self.cost.get(m, 0.0) for m in self.models])
        return Prediction(models=list(self.models), quality=np.tile(q, (n, 1)), cost=np.tile(c, (n, 1)))

    def get_state(self) -> dict[str, Any]:
        return {"params": {"quality": self.quality, "cost": self.cost}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PriorRouter:
        return cls(**state["params"])
