"""Ensemble router: the average of several routers' predicted quality and cost.

Members are built by name from the registry and fitted on the same data; the
ensemble's prediction is the (weighted) mean of theirs. Averaging routers
with different errors (neighbours, a neural trunk, a factorization) gives
smoother, better-ranked quality than any single one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.errors import RoutingError
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.registry import register_router, router_class


@register_router
class EnsembleRouter(Router):
    """``members``: router names (default knn, mlp, mf); ``weights``: one per member (default equal)."""

    name = "ensemble"

    def __init__(self, members: list[str] | None = None, weights: list[float] | None = None) -> None:
        self.member_names = list(members or ["knn", "mlp", "mf"])
        if "ensemble" in self.member_names or not self.member_names:
            raise RoutingError("an ensemble needs one or more member routers other than 'ensemble'")
        self.weights = list(weights) if weights is not None else [1.0] * len(self.member_names)
        if len(self.weights) != len(self.member_names) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise RoutingError("ensemble weights: one non-negative weight per member, not all zero")
        self.members: list[Router] | None = None
        self.models: list[str] = []

    def fit(self, data: TrainingData) -> EnsembleRouter:
        self.members = [router_class(n)().fit(data) for n in self.member_names]
        self.models = list(data.models)
        return self

    def predict(self, X: np.ndarray) -> Prediction:
        if self.members is None:
            raise RoutingError("router 'ensemble' is not fitted: call fit(data) or load a saved router first")
        w = np.asarray(self.weights) / sum(self.weights)
        preds = [r.predict(X) for r in self.members]
        quality = sum(wi * p.quality for wi, p in zip(w, preds))
        cost = sum(wi * p.cost for wi, p in zip(w, preds))
        return Prediction(models=list(self.models), quality=np.asarray(quality), cost=np.asarray(cost))

    def get_state(self) -> dict[str, Any]:
        if self.members is None:
            raise RoutingError("router 'ensemble' is not fitted")
        return {"params": {"members": self.member_names, "weights": self.weights}, "models": self.models,
                "states": {str(i): r.get_state() for i, r in enumerate(self.members)}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EnsembleRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.members = [router_class(n).from_state(state["states"][str(i)]) for i, n in enumerate(obj.member_names)]
        return obj
