"""Per-prompt cost prediction shared by the learned routers.

Prices are per token, so a model's cost on a prompt varies with the prompt
(RouterBench's MBPP answers cost several times its Winogrande ones). Routers
that learn quality some other way (MF, BT, graph, profile) predict cost with
:class:`NeighbourCost`: the similarity-weighted mean of log costs of the
nearest training prompts, shrunk towards the model's mean cost. On a table of
more than ``max_prompts`` prompts the neighbours are looked up among a seeded
sample of that many (cost varies smoothly with the prompt, and the lookup is
then a fixed fraction of a millisecond however big the table is).
:class:`NeighbourCostRouter` is the base of those routers: it validates the
prompts and joins each one's quality to this cost.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from turnout.routing._common import as_2d, l2_normalize, mean_costs, require_fitted, top_k_similar
from turnout.routing.base import Prediction, Router

#: training prompts the neighbours are looked up among, at most (a seeded sample of bigger tables)
MAX_PROMPTS = 8192


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """``X`` itself when it is float32 with unit (or zero) rows, else a normalised copy."""
    if X.dtype == np.float32 and X.ndim == 2:
        norms = np.linalg.norm(X, axis=1)
        if np.all((np.abs(norms - 1) < 1e-4) | (norms == 0)):
            return X
    return l2_normalize(X)


class NeighbourCost:
    """kNN regression of each model's (log) cost; falls back to the model's mean cost."""

    def __init__(self, k: int = 20, shrink: float = 1.0, max_prompts: int = MAX_PROMPTS, seed: int = 0) -> None:
        self.k = k
        self.shrink = shrink
        self.max_prompts, self.seed = int(max_prompts), int(seed)
        self.Xn: np.ndarray | None = None
        self.log_costs: np.ndarray | None = None
        self.mean_log: np.ndarray | None = None

    def fit(self, Xn: np.ndarray, costs: np.ndarray) -> NeighbourCost:
        """Learn from L2-normalised prompt rows (kept as they are, not copied: pass the router's own) and costs.

        Rows that are not unit length are normalised (into a copy).
        """
        mean = mean_costs(costs)  # over every prompt, sampled or not
        if Xn.shape[0] > self.max_prompts:
            rows = np.sort(np.random.default_rng(self.seed).choice(Xn.shape[0], self.max_prompts, replace=False))
            Xn, costs = Xn[rows], costs[rows]
        self.Xn = _unit_rows(Xn)
        # log space: costs are positive and multiplicative in token counts; zeros (free local models) stay 0
        self.log_costs = np.log(np.where(np.isnan(costs), np.nan, np.maximum(costs, 0) + 1e-12)).astype(np.float32)
        self.mean_log = np.log(np.maximum(mean, 0) + 1e-12)
        return self

    def predict(self, Xn: np.ndarray) -> np.ndarray:
        """Predicted cost (n × m) for already L2-normalised rows."""
        assert self.Xn is not None and self.log_costs is not None and self.mean_log is not None
        idx, sims = top_k_similar(Xn, self.Xn, self.k)
        w = np.maximum(sims, 0) + 1e-6
        L = self.log_costs[idx]  # n × k × m
        obs = ~np.isnan(L)
        num = (np.where(obs, L, 0.0) * w[:, :, None]).sum(axis=1) + self.shrink * self.mean_log
        den = (obs * w[:, :, None]).sum(axis=1) + self.shrink
        out: np.ndarray = np.maximum(np.exp(num / den) - 1e-12, 0.0)
        return out

    def get_state(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "shrink": self.shrink,
            "max_prompts": self.max_prompts,
            "seed": self.seed,
            "Xn": self.Xn,
            "log_costs": self.log_costs,
            "mean_log": self.mean_log,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NeighbourCost:
        obj = cls(
            k=int(state["k"]),
            shrink=float(state["shrink"]),
            max_prompts=int(state.get("max_prompts", MAX_PROMPTS)),
            seed=int(state.get("seed", 0)),
        )
        obj.Xn, obj.log_costs, obj.mean_log = state["Xn"], state["log_costs"], state["mean_log"]
        return obj


class NeighbourCostRouter(Router):
    """A router that predicts quality from L2-normalised prompt rows and cost with a :class:`NeighbourCost`.

    Subclasses name ``fitted_attr`` (None until ``fit``), and implement
    ``_width`` (the fitted feature width) and ``_quality(Xn)``. Validation,
    :meth:`predict` and the cost-free :meth:`predict_quality` are shared.
    """

    #: an attribute that is None until the router is fitted
    fitted_attr: ClassVar[str]
    cost_model: NeighbourCost | None = None

    def _width(self) -> int:
        raise NotImplementedError

    def _quality(self, Xn: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cost(self, Xn: np.ndarray) -> np.ndarray:
        assert self.cost_model is not None
        return self.cost_model.predict(Xn)

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        require_fitted(self, self.fitted_attr)
        return l2_normalize(as_2d(X, self._width(), self.name))

    def predict(self, X: np.ndarray) -> Prediction:
        Xn = self._inputs(X)
        return Prediction(models=list(self.models), quality=self._quality(Xn), cost=self._cost(Xn))

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        return self._quality(self._inputs(X))
