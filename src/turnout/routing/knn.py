"""k-nearest-neighbour router over prompt embeddings (cosine similarity).

For a new prompt, the ``k`` most similar training prompts vote: each model's
predicted quality is the similarity-weighted mean of the neighbours' scores
for that model, counting only neighbours that have an outcome for it, shrunk
towards the model's global mean by a pseudo-count ``shrink`` (so a model seen
on one neighbour out of 40 stays near its average). Cost is predicted the same
way, in log space, from the neighbours' costs.

``k`` and ``temperature`` default to ``"auto"``: :meth:`KNNRouter.fit` picks
them on the *training* prompts alone, by leave-one-out — each training prompt
is predicted from its neighbours among the others, for every pair of
:data:`K_GRID` × :data:`TEMPERATURE_GRID`, and the pair with the lowest Brier
score (mean squared error of the predicted quality on observed cells) wins.
The test split is never looked at; the chosen values are kept in
``chosen`` and in the saved artifact.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from turnout.routing._common import as_2d, column_means, l2_normalize, mean_costs, require_fitted, top_k_similar
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.registry import register_router

#: candidate neighbour counts and softmax temperatures for ``"auto"``
K_GRID = (10, 25, 50, 100, 200)
TEMPERATURE_GRID = (0.05, 0.1, 0.2, 0.5, 1.0)
#: leave-one-out selection looks at most this many training prompts (a seeded sample), to bound its cost
LOO_MAX_PROMPTS = 4000


def _neighbour_weights(sims: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(sim / temperature) over each row's neighbours, scaled to sum to the neighbour count."""
    w = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)
    scaled: np.ndarray = w * (w.shape[1] / w.sum(axis=1, keepdims=True))
    return scaled


@register_router
class KNNRouter(Router):
    """Cosine kNN with softmax(sim / temperature) weights and shrinkage to each model's mean.

    ``k``: neighbours; ``temperature``: smaller values trust the closest
    neighbours more; ``shrink``: pseudo-count of the model's global mean
    (in units of an average neighbour).

    ``"auto"`` for ``k`` or ``temperature`` (the default) chooses it by
    leave-one-out on the training prompts (see the module docstring); a number
    fixes it. After ``fit``, ``self.k`` and ``self.temperature`` hold the values
    in use and ``self.chosen`` the leave-one-out Brier score of each candidate.
    """

    name = "knn"

    def __init__(
        self, k: int | Literal["auto"] = "auto", temperature: float | Literal["auto"] = "auto", shrink: float = 5.0, seed: int = 0
    ) -> None:
        if (
            (k != "auto" and (isinstance(k, str) or k < 1))
            or (temperature != "auto" and (isinstance(temperature, str) or temperature <= 0))
            or shrink < 0
        ):
            raise ValueError("need k >= 1 or 'auto', temperature > 0 or 'auto', shrink >= 0")
        self.k_param, self.t_param = k, temperature
        self.k = int(k) if k != "auto" else K_GRID[-2]
        self.temperature = float(temperature) if temperature != "auto" else 0.5
        self.shrink, self.seed = float(shrink), int(seed)
        self.chosen: dict[str, float] = {}
        self.models: list[str] = []
        self.Xn: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.log_costs: np.ndarray | None = None
        self.means: np.ndarray | None = None
        self.mean_log_costs: np.ndarray | None = None

    def fit(self, data: TrainingData) -> KNNRouter:
        self.models = list(data.models)
        self.Xn = data.Xn
        self.scores = data.scores.astype(np.float32)
        self.log_costs = np.log(np.maximum(data.costs, 0) + 1e-12).astype(np.float32)
        self.means = column_means(data.scores)
        self.mean_log_costs = np.log(np.maximum(mean_costs(data.costs), 0) + 1e-12)
        if self.k_param == "auto" or self.t_param == "auto":
            self._select_by_leave_one_out()
        return self

    def _select_by_leave_one_out(self) -> None:
        """Set k and temperature to the grid pair with the lowest leave-one-out Brier score on training."""
        assert self.Xn is not None and self.scores is not None and self.means is not None
        n = self.Xn.shape[0]
        if n < 3:  # leave-one-out needs a prompt left out and at least two to predict it from
            return
        ks = [k for k in (K_GRID if self.k_param == "auto" else (self.k,)) if k < n] or [n - 1]
        temps = TEMPERATURE_GRID if self.t_param == "auto" else (self.temperature,)
        rows = np.arange(n)
        if n > LOO_MAX_PROMPTS:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, LOO_MAX_PROMPTS, replace=False))
        # each prompt left out of its own neighbours
        idx, top = top_k_similar(self.Xn[rows], self.Xn, max(ks), exclude=rows)
        order = np.argsort(-top, axis=1)  # nearest first, so the first k columns are the k nearest
        idx, top = np.take_along_axis(idx, order, axis=1), np.take_along_axis(top, order, axis=1)
        truth = self.scores[rows]
        observed = ~np.isnan(truth)
        scores: dict[tuple[int, float], float] = {}
        for k in ks:
            V = self.scores[idx[:, :k]]
            for t in temps:
                err = np.where(observed, self._weighted(V, _neighbour_weights(top[:, :k], t), self.means) - truth, 0.0)
                scores[(k, t)] = float((err**2).sum() / max(observed.sum(), 1))
        (self.k, self.temperature), _ = min(scores.items(), key=lambda kv: (kv[1], -kv[0][0]))
        self.chosen = {f"k={k},temperature={t:g}": v for (k, t), v in scores.items()}

    def _weighted(self, V: np.ndarray, w: np.ndarray, prior: np.ndarray) -> np.ndarray:
        # V: n × k × m with NaN for missing cells; w: n × k summing to k per row
        obs = ~np.isnan(V)
        num = np.einsum("nk,nkm->nm", w, np.where(obs, V, 0.0)) + self.shrink * prior
        den = np.einsum("nk,nkm->nm", w, obs.astype(np.float32)) + self.shrink
        out: np.ndarray = num / den
        return out

    def predict(self, X: np.ndarray) -> Prediction:
        require_fitted(self, "Xn")
        assert self.Xn is not None and self.scores is not None and self.log_costs is not None
        assert self.means is not None and self.mean_log_costs is not None
        Xn = l2_normalize(as_2d(X, self.Xn.shape[1], self.name))
        idx, sims = top_k_similar(Xn, self.Xn, self.k)
        w = _neighbour_weights(sims, self.temperature)
        quality = self._weighted(self.scores[idx], w, self.means)
        cost = np.exp(self._weighted(self.log_costs[idx], w, self.mean_log_costs)) - 1e-12
        return Prediction(models=list(self.models), quality=quality, cost=np.maximum(cost, 0.0))

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "Xn")
        return {
            # the values in use: a loaded router predicts exactly as the fitted one, without re-selecting
            "params": {"k": self.k, "temperature": self.temperature, "shrink": self.shrink, "seed": self.seed},
            "models": self.models,
            "Xn": self.Xn,
            "scores": self.scores,
            "log_costs": self.log_costs,
            "means": self.means,
            "mean_log_costs": self.mean_log_costs,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KNNRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        for key in ("Xn", "scores", "log_costs", "means", "mean_log_costs"):
            setattr(obj, key, np.asarray(state[key]))
        return obj
