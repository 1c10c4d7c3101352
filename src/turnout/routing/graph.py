"""Graph router in the spirit of GraphRouter: predict the query–model edge of a heterogeneous graph.

Nodes: *tasks* (the given task labels, or k-means clusters of the prompts
when ``tasks`` is None), *queries* (prompt embeddings) and *models*. Edges:
query–task (a soft assignment by cosine to each task's centroid, so new
queries attach without a label), query–model (observed quality, the training
edges) and task–model (aggregated from the query–model edges: each model's
shrunk success rate per task — one round of message passing from queries to
tasks).

Edge prediction for a query q and model j: the query node aggregates its task
nodes' features (one message-passing step, task → query), then

    logit = u · relu(W [h_q ⊙ e_j ; r_qj]) + b_j,
    h_q = relu(P x_q + Σ_t a_t(q) T_t),  r_qj = logit(Σ_t a_t(q) R_tj)

with learned model embeddings ``e_j``, task embeddings ``T_t`` and the
task–model success rates ``R``. Trained with masked BCE; numpy to predict.
No torch_geometric: the graph is small and dense.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from turnout.routing._common import (
    column_means,
    kmeans,
    l2_normalize,
    logit,
    require_fitted,
    sigmoid,
    soft_assign,
)
from turnout.routing._torch import REQUIRES, import_torch, train_masked
from turnout.routing.base import TrainingData
from turnout.routing.cost import NeighbourCost, NeighbourCostRouter
from turnout.routing.registry import register_router


class _Params(TypedDict):
    """The constructor's arguments, kept as given (saved with the artifact, passed back on load)."""

    dim: int
    clusters: int
    temperature: float
    shrink: float
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    val_fraction: float
    patience: int
    seed: int


@register_router
class GraphRouter(NeighbourCostRouter):
    """``dim``: node embedding size; ``clusters``: task nodes when no task labels are given."""

    name = "graph"
    fitted_attr = "weights"
    requires = REQUIRES

    def __init__(
        self,
        dim: int = 32,
        clusters: int = 16,
        temperature: float = 0.05,
        shrink: float = 5.0,
        epochs: int = 200,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 128,
        val_fraction: float = 0.15,
        patience: int = 10,
        seed: int = 0,
    ) -> None:
        self.params = _Params(
            dim=dim,
            clusters=clusters,
            temperature=temperature,
            shrink=shrink,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
            seed=seed,
        )
        self.models: list[str] = []
        self.centroids: np.ndarray | None = None
        self.R: np.ndarray | None = None
        self.weights: dict[str, np.ndarray] | None = None
        self.cost_model: NeighbourCost | None = None

    def _assign(self, Xn: np.ndarray) -> np.ndarray:
        assert self.centroids is not None
        return soft_assign(Xn, self.centroids, self.params["temperature"])

    def fit(self, data: TrainingData) -> GraphRouter:
        torch = import_torch("the graph router")
        p = self.params
        self.models = list(data.models)
        Xn = data.Xn
        if data.tasks is not None:
            names = sorted(set(data.tasks))
            labels = np.array([names.index(t) for t in data.tasks])
            self.centroids = l2_normalize(np.stack([Xn[labels == i].mean(axis=0) for i in range(len(names))]))
        else:
            self.centroids = kmeans(Xn, max(1, min(p["clusters"], Xn.shape[0] // 20)), seed=p["seed"])
        A = self._assign(Xn)
        obs = ~np.isnan(data.scores)
        mu = column_means(data.scores)
        # task–model edges: message passing from the observed query–model edges
        self.R = (A.T @ np.nan_to_num(data.scores) + p["shrink"] * mu) / (A.T @ obs + p["shrink"])
        feats = np.concatenate([Xn, A, logit(A @ self.R)], axis=1).astype(np.float32)
        d, K, m, h = Xn.shape[1], A.shape[1], len(self.models), p["dim"]
        torch.manual_seed(p["seed"])

        class _Edge(torch.nn.Module):  # type: ignore[misc,name-defined]  # torch is imported lazily (Any): no static base
            def __init__(self) -> None:
                super().__init__()
                self.P = torch.nn.Linear(d, h)
                self.T = torch.nn.Parameter(torch.randn(K, h) * 0.1)
                self.E = torch.nn.Parameter(torch.randn(m, h) * 0.1 + 1.0)
                self.W = torch.nn.Linear(h + 1, h)
                self.u = torch.nn.Linear(h, 1, bias=False)
                self.b = torch.nn.Parameter(torch.zeros(m))

            def forward(self, f: Any) -> Any:
                x, a, r = f[:, :d], f[:, d : d + K], f[:, d + K :]
                hq = torch.relu(self.P(x) + a @ self.T)
                z = torch.cat([hq[:, None, :] * self.E[None], r[:, :, None]], dim=2)  # batch × m × (h+1)
                return self.u(torch.relu(self.W(z))).squeeze(-1) + self.b

        net = _Edge()
        train_masked(
            torch,
            net,
            net,
            feats,
            data.scores,
            seed=p["seed"],
            epochs=p["epochs"],
            lr=p["lr"],
            weight_decay=p["weight_decay"],
            batch_size=p["batch_size"],
            val_fraction=p["val_fraction"],
            patience=p["patience"],
        )
        self.weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        self.cost_model = NeighbourCost().fit(data.Xn, data.costs)
        return self

    def _width(self) -> int:
        assert self.centroids is not None
        return int(self.centroids.shape[1])

    def _quality(self, Xn: np.ndarray) -> np.ndarray:
        assert self.weights is not None and self.R is not None
        w = self.weights
        A = self._assign(Xn)
        r = logit(A @ self.R)
        hq = np.maximum(Xn @ w["P.weight"].T + w["P.bias"] + A @ w["T"], 0)
        z = hq[:, None, :] * w["E"][None]  # n × m × h
        Wz, Wr = w["W.weight"][:, :-1], w["W.weight"][:, -1]
        hidden = np.maximum(z @ Wz.T + r[:, :, None] * Wr + w["W.bias"], 0)
        return sigmoid(hidden @ w["u.weight"][0] + w["b"])

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "weights")
        assert self.cost_model is not None
        return {
            "params": self.params,
            "models": self.models,
            "centroids": self.centroids,
            "R": self.R,
            "weights": self.weights,
            "cost": self.cost_model.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GraphRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.centroids, obj.R = np.asarray(state["centroids"]), np.asarray(state["R"])
        obj.weights = {k: np.asarray(v) for k, v in state["weights"].items()}
        obj.cost_model = NeighbourCost.from_state(state["cost"])
        return obj
