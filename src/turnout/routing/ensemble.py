"""Ensemble router: the average of several routers' predicted quality.

Members are built by name from the registry and fitted on the same data; the
ensemble's predicted quality is the (weighted) mean of theirs, and its cost
comes from one :class:`~turnout.routing.cost.NeighbourCost` of its own (every
member's cost lookup would read the training prompts again: six lookups made
a decision ten times slower than one). Averaging routers with different
errors (neighbours, a neural trunk, a factorization, battles, a graph,
profiles) gives smoother, better-ranked quality than any single one.

The default members are every learned router that can run here (all six
with the ``ml`` extra; knn, bt and profile without torch), equally weighted. On the
shared tables' training prompts (4-fold CV, two seeds) that scored at least
the earlier knn + mlp + mf default in all four runs (RouterBench +0.0000 /
+0.0010 AIQ, DCRouter +0.0025 / +0.0018), and it needs no choice that could
be tuned to one table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.errors import RoutingError
from turnout.routing._common import l2_normalize
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.cost import NeighbourCost
from turnout.routing.registry import available, register_router, router_class

#: every learned router that needs no configuration
DEFAULT_MEMBERS = ("knn", "mlp", "mf", "bt", "graph", "profile")


def default_members() -> list[str]:
    """:data:`DEFAULT_MEMBERS` that can run here (without torch: knn, bt and profile)."""
    return available(DEFAULT_MEMBERS)[0]


@register_router
class EnsembleRouter(Router):
    """``members``: router names (default :func:`default_members`); ``weights``: one per member (default equal)."""

    name = "ensemble"

    def __init__(self, members: list[str] | str | None = None, weights: list[float] | float | None = None) -> None:
        # one name or one weight (as ``--param members=knn`` gives) is a list of one, not a string of letters
        members = [members] if isinstance(members, str) else members
        weights = [weights] if isinstance(weights, (int, float)) else weights
        self.member_names = list(members or default_members())
        if "ensemble" in self.member_names or not self.member_names:
            raise RoutingError("an ensemble needs one or more member routers other than 'ensemble'")
        self.weights = list(weights) if weights is not None else [1.0] * len(self.member_names)
        if len(self.weights) != len(self.member_names) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise RoutingError("ensemble weights: one non-negative weight per member, not all zero")
        self.members: list[Router] | None = None
        self.models: list[str] = []
        self.cost_model: NeighbourCost | None = None

    def fit(self, data: TrainingData) -> EnsembleRouter:
        return self._adopt([router_class(n)().fit(data) for n in self.member_names], data)

    @classmethod
    def compose(cls, members: list[Router], data: TrainingData, weights: list[float] | None = None) -> EnsembleRouter:
        """The ensemble of routers already fitted on ``data``, without fitting them again.

        Members fit deterministically, so this equals ``fit(data)`` when every
        member was built with its default parameters; evaluation uses it to
        score an ensemble of routers it has just fitted on their own.
        """
        return cls([r.name for r in members], weights)._adopt(list(members), data)

    def _adopt(self, members: list[Router], data: TrainingData) -> EnsembleRouter:
        for r in members:
            if list(r.models) != list(data.models):
                raise RoutingError(f"ensemble member '{r.name}' was fitted on models {r.models}, not {data.models}")
        self.members = members
        self.models = list(data.models)
        self.cost_model = NeighbourCost().fit(data.Xn, data.costs)
        return self

    def predict(self, X: np.ndarray) -> Prediction:
        return Prediction(models=list(self.models), quality=self.predict_quality(X), cost=self._cost(X))

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        if self.members is None:
            raise RoutingError("router 'ensemble' is not fitted: call fit(data) or load a saved router first")
        w = np.asarray(self.weights) / sum(self.weights)
        return np.asarray(sum(wi * r.predict_quality(X) for wi, r in zip(w, self.members)))

    def _cost(self, X: np.ndarray) -> np.ndarray:
        assert self.members is not None
        if self.cost_model is None:  # saved before the ensemble had its own cost model: the members' mean
            w = np.asarray(self.weights) / sum(self.weights)
            return np.asarray(sum(wi * r.predict(X).cost for wi, r in zip(w, self.members)))
        return self.cost_model.predict(l2_normalize(X))

    def get_state(self) -> dict[str, Any]:
        if self.members is None or self.cost_model is None:
            raise RoutingError("router 'ensemble' is not fitted")
        return {
            "params": {"members": self.member_names, "weights": self.weights},
            "models": self.models,
            "states": {str(i): r.get_state() for i, r in enumerate(self.members)},
            "cost": self.cost_model.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EnsembleRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.members = [router_class(n).from_state(state["states"][str(i)]) for i, n in enumerate(obj.member_names)]
        obj.cost_model = NeighbourCost.from_state(state["cost"]) if "cost" in state else None
        return obj
