"""Similarity-weighted Bradley–Terry router (RouteLLM's ``sw_ranking``).

Every training prompt is turned into pairwise battles between the models that
answered it (higher score wins, equal scores tie). For a new prompt, training
prompts are weighted by ``exp(gamma · (cos − max cos))``, the weighted battles
are summed into an m × m win matrix, and Bradley–Terry strengths are fitted on
it (Hunter's MM iterations, with a small tie pseudo-count between every pair
so strengths stay finite). Strengths are turned into a quality per model by
anchoring on the neighbourhood's weighted mean score: ``q_j = sigmoid(logit(q̄)
+ θ_j − mean θ)``, i.e. the BT win-probability of model j against an average
model of that neighbourhood.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.routing._common import as_2d, l2_normalize, logit, require_fitted, sigmoid
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.cost import NeighbourCost
from turnout.routing.registry import register_router


@register_router
class BTRouter(Router):
    """``gamma``: similarity sharpness; ``prior``: tie pseudo-count per pair; ``iters``: MM steps."""

    name = "bt"

    def __init__(self, gamma: float = 10.0, prior: float = 0.5, iters: int = 60, batch: int = 256) -> None:
        self.params = dict(gamma=gamma, prior=prior, iters=iters, batch=batch)
        self.models: list[str] = []
        self.Xn: np.ndarray | None = None
        self.wins: np.ndarray | None = None  # n × m·m: wins[i, a*m+b] = 1 if a beat b on prompt i (0.5 tie)
        self.scores: np.ndarray | None = None
        self.cost_model: NeighbourCost | None = None

    def fit(self, data: TrainingData) -> BTRouter:
        self.models = list(data.models)
        self.Xn = l2_normalize(data.X)
        S = data.scores
        obs = ~np.isnan(S)
        both = obs[:, :, None] & obs[:, None, :]
        diff = np.nan_to_num(S)[:, :, None] - np.nan_to_num(S)[:, None, :]
        wins = np.where(both, np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0)), 0.0)
        m = len(self.models)
        wins[:, np.arange(m), np.arange(m)] = 0.0
        self.wins = wins.reshape(len(S), m * m).astype(np.float32)
        self.scores = S.astype(np.float32)
        self.cost_model = NeighbourCost().fit(data.X, data.costs)
        return self

    def _bt(self, W: np.ndarray) -> np.ndarray:
        """Batched MM fit of log-strengths from win matrices W (B × m × m); returns centred θ."""
        B, m, _ = W.shape
        if m == 1:  # one model: nothing to rank, its quality is the neighbourhood mean
            return np.zeros((B, 1))
        W = W + self.params["prior"] * (1 - np.eye(m))[None]  # ties between every pair keep θ finite
        N = W + W.transpose(0, 2, 1)
        total_wins = W.sum(axis=2)
        p = np.ones((B, m))
        for _ in range(self.params["iters"]):
            denom = (N / (p[:, :, None] + p[:, None, :])).sum(axis=2)
            p = np.maximum(total_wins / np.maximum(denom, 1e-12), 1e-12)
            p /= np.exp(np.log(p).mean(axis=1, keepdims=True))
        theta = np.log(p)
        return theta - theta.mean(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> Prediction:
        require_fitted(self, "Xn")
        assert self.Xn is not None and self.wins is not None and self.scores is not None and self.cost_model is not None
        Xn = l2_normalize(as_2d(X, self.Xn.shape[1], self.name))
        m = len(self.models)
        out = np.empty((Xn.shape[0], m))
        obs = ~np.isnan(self.scores)
        S0 = np.nan_to_num(self.scores)
        for s in range(0, Xn.shape[0], self.params["batch"]):
            sims = Xn[s : s + self.params["batch"]] @ self.Xn.T
            w = np.exp(self.params["gamma"] * (sims - sims.max(axis=1, keepdims=True)))
            theta = self._bt((w @ self.wins).reshape(-1, m, m))
            qbar = (w @ S0).sum(axis=1) / np.maximum((w @ obs).sum(axis=1), 1e-12)
            out[s : s + len(w)] = sigmoid(logit(qbar)[:, None] + theta)
        return Prediction(models=list(self.models), quality=out, cost=self.cost_model.predict(Xn))

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "Xn")
        assert self.cost_model is not None
        return {"params": self.params, "models": self.models, "Xn": self.Xn, "wins": self.wins,
                "scores": self.scores, "cost": self.cost_model.get_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BTRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.Xn, obj.wins, obj.scores = (np.asarray(state[k]) for k in ("Xn", "wins", "scores"))
        obj.cost_model = NeighbourCost.from_state(state["cost"])
        return obj
