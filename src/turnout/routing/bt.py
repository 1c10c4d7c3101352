"""Similarity-weighted Bradley–Terry router (RouteLLM's ``sw_ranking``).

Every training prompt is turned into pairwise battles between the models that
answered it (higher score wins, equal scores tie). For a new prompt, training
prompts are weighted by ``exp(gamma · (cos − max cos))``, the weighted battles
are summed into an m × m win matrix, and Bradley–Terry strengths are fitted on
it (Newton's method on the BT likelihood, with a small tie pseudo-count between
every pair so strengths stay finite). Strengths are turned into a quality per
model by anchoring on the neighbourhood's weighted mean score: ``q_j =
sigmoid(logit(q̄) + θ_j − mean θ)``, i.e. the BT win-probability of model j
against an average model of that neighbourhood.

The exact sum costs n · m² per prompt (n training prompts, m models). While
n · m² is at most ``max_cells`` (RouterBench and DCRouter are 10–20× under
it) every training prompt's battles are kept and summed exactly. Beyond it,
only the ``max_cells // m²`` most similar training prompts are summed one by
one, and the rest of the weight (the far, nearly uniformly weighted prompts)
is given the table's mean battle outcome, so a decision stays a few
milliseconds and memory stays O(n · m) on tables of 100k prompts or 100 models.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from turnout.routing._common import logit, require_fitted, sigmoid
from turnout.routing.base import TrainingData
from turnout.routing.cost import NeighbourCost, NeighbourCostRouter
from turnout.routing.registry import register_router


class _Params(TypedDict):
    """The constructor's arguments, kept as given (saved with the artifact, passed back on load)."""

    gamma: float
    prior: float
    iters: int
    batch: int
    max_cells: int


@register_router
class BTRouter(NeighbourCostRouter):
    """``gamma``: similarity sharpness; ``prior``: tie pseudo-count per pair; ``iters``: most Newton steps."""

    name = "bt"
    fitted_attr = "Xn"

    def __init__(
        self, gamma: float = 10.0, prior: float = 0.5, iters: int = 60, batch: int = 256, max_cells: int = 4_000_000
    ) -> None:
        if max_cells < 1:
            raise ValueError("max_cells must be >= 1")
        self.params = _Params(gamma=gamma, prior=prior, iters=iters, batch=batch, max_cells=max_cells)
        self.models: list[str] = []
        self.Xn: np.ndarray | None = None
        # n × m·m, kept only while n · m² <= max_cells: wins[i, a*m+b] = 1 if a beat b on prompt i (0.5 tie)
        self.wins: np.ndarray | None = None
        self.mean_wins: np.ndarray | None = None  # m·m, when wins is not kept: the mean battle over all prompts
        self._row_sums = np.zeros((0, 2), dtype=np.float32)
        self._binary = False
        self.scores: np.ndarray | None = None
        self.cost_model: NeighbourCost | None = None

    @staticmethod
    def _battles(S: np.ndarray) -> np.ndarray:
        """k × m·m battle outcomes of score rows S (NaN = no outcome: no battle; the diagonal is 0)."""
        k, m = S.shape
        a, b = S[:, :, None], S[:, None, :]
        wins: np.ndarray = (a > b).astype(np.float32) + np.float32(0.5) * (a == b)  # comparisons with NaN are False
        wins[:, np.arange(m), np.arange(m)] = 0.0
        return wins.reshape(k, m * m)

    def _neighbours(self) -> int:
        """How many training prompts a prediction sums one by one (all of them while n · m² fits)."""
        assert self.scores is not None
        n, m = self.scores.shape
        count: int = max(1, min(n, self.params["max_cells"] // (m * m)))
        return count

    def fit(self, data: TrainingData) -> BTRouter:
        self.models = list(data.models)
        self.Xn = data.Xn
        self.scores = data.scores.astype(np.float32)
        self._count_battles()
        self.cost_model = NeighbourCost().fit(data.Xn, data.costs)
        return self

    def _count_battles(self) -> None:
        """From the training scores: ``wins`` while the exact sum fits, else ``mean_wins``; per-prompt score sums."""
        assert self.scores is not None
        n, m = self.scores.shape
        chunk = self._neighbours()
        if chunk >= n:
            self.wins, self.mean_wins = self._battles(self.scores), None
        else:
            total = np.zeros(m * m, dtype=np.float64)
            for s in range(0, n, chunk):  # in chunks, so a big table never holds n × m² at once
                total += self._battles(self.scores[s : s + chunk]).sum(axis=0, dtype=np.float64)
            self.wins, self.mean_wins = None, (total / n).astype(np.float32)
        observed = ~np.isnan(self.scores)
        self._binary = bool(np.isin(self.scores[observed], (0.0, 1.0)).all())
        # per prompt: the sum of its scores and its number of outcomes (for the neighbourhood's mean quality)
        self._row_sums = np.stack([np.nansum(self.scores, axis=1), observed.sum(axis=1)], axis=1)

    def _weighted_battles(self, w: np.ndarray) -> np.ndarray:
        """Σ_i w_i · battles_i for each row of weights w (B × n): exactly, or top prompts + the mean for the rest."""
        assert self.scores is not None
        if self.wins is not None:
            exact: np.ndarray = w @ self.wins
            return exact
        assert self.mean_wins is not None
        K = self._neighbours()
        out = np.empty((w.shape[0], self.mean_wins.shape[0]), dtype=np.float32)
        top = np.argpartition(-w, K - 1, axis=1)[:, :K]
        m = self.scores.shape[1]
        for r in range(w.shape[0]):
            wk = w[r, top[r]]
            rest = max(float(w[r].sum() - wk.sum()), 0.0)
            if self._binary:
                # 0/1 scores: a beats b (or ties, half) = o_a o_b (1 + s_a − s_b) / 2, three small products
                near = self.scores[top[r]]
                Ob, S = (~np.isnan(near)).astype(np.float32), np.nan_to_num(near)  # o: observed, s: score
                Ow = Ob * wk[:, None]
                Wk = 0.5 * (Ow.T @ Ob + (S * wk[:, None]).T @ Ob - Ow.T @ S)
                Wk[np.arange(m), np.arange(m)] = 0.0
                out[r] = Wk.reshape(-1) + rest * self.mean_wins
            else:
                out[r] = wk @ self._battles(self.scores[top[r]]) + rest * self.mean_wins
        return out

    def _bt(self, W: np.ndarray) -> np.ndarray:
        """Batched Newton fit of BT log-strengths from win matrices W (B × m × m); returns centred θ.

        The log-likelihood Σ W_ab log σ(θ_a − θ_b) is concave and, with the tie
        pseudo-count, strictly so across the centred θ; Newton steps (clipped to
        ±1, solved with the all-ones matrix added to fix the free shift) reach
        the maximum to 1e-7 in well under ten steps on routing data.
        """
        B, m, _ = W.shape
        if m == 1:  # one model: nothing to rank, its quality is the neighbourhood mean
            return np.zeros((B, 1))
        W = W + self.params["prior"] * (1 - np.eye(m))[None]  # ties between every pair keep θ finite
        N = W + W.transpose(0, 2, 1)
        total_wins = W.sum(axis=2)
        shift = np.ones((m, m))
        theta = np.zeros((B, m))
        for _ in range(self.params["iters"]):
            s = sigmoid(theta[:, :, None] - theta[:, None, :])  # s[., a, b] = P(a beats b)
            grad = total_wins - (N * s).sum(axis=2)
            h = N * s * (1 - s)
            neg_hess = np.eye(m)[None] * h.sum(axis=2)[:, :, None] - h
            step = np.clip(np.linalg.solve(neg_hess + shift, grad[..., None])[..., 0], -1.0, 1.0)
            theta += step
            if np.abs(step).max() < 1e-7:
                break
        centred: np.ndarray = theta - theta.mean(axis=1, keepdims=True)
        return centred

    def _width(self) -> int:
        assert self.Xn is not None
        return int(self.Xn.shape[1])

    def _quality(self, Xn: np.ndarray) -> np.ndarray:
        assert self.Xn is not None and self.scores is not None
        m = len(self.models)
        out = np.empty((Xn.shape[0], m))
        for s in range(0, Xn.shape[0], self.params["batch"]):
            sims = Xn[s : s + self.params["batch"]] @ self.Xn.T
            w = np.exp(self.params["gamma"] * (sims - sims.max(axis=1, keepdims=True)))
            theta = self._bt(self._weighted_battles(w).reshape(-1, m, m))
            sums = w @ self._row_sums
            qbar = sums[:, 0] / np.maximum(sums[:, 1], 1e-12)
            out[s : s + len(w)] = sigmoid(logit(qbar)[:, None] + theta)
        return out

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "Xn")
        assert self.cost_model is not None
        # the battles are not saved: they are counted again from the scores on load
        return {
            "params": self.params,
            "models": self.models,
            "Xn": self.Xn,
            "scores": self.scores,
            "cost": self.cost_model.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BTRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.Xn, obj.scores = np.asarray(state["Xn"]), np.asarray(state["scores"], dtype=np.float32)
        obj._count_battles()
        obj.cost_model = NeighbourCost.from_state(state["cost"])
        return obj
