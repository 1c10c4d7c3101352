"""MLP router: a shared trunk over the prompt embedding with one quality head per model.

Trained with a masked binary cross-entropy (missing cells contribute nothing;
soft scores in [0, 1] are valid targets), AdamW, and early stopping on a
held-out slice of the training prompts. Deterministic under ``seed``. torch
is needed to *fit* only: weights are exported to numpy and prediction is pure
numpy. Cost is predicted per prompt by :class:`~turnout.routing.cost.NeighbourCost`.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from turnout.routing._common import require_fitted, sigmoid
from turnout.routing._torch import REQUIRES, import_torch, train_masked
from turnout.routing.base import TrainingData
from turnout.routing.cost import NeighbourCost, NeighbourCostRouter
from turnout.routing.registry import register_router


class _Params(TypedDict):
    """The constructor's arguments, kept as given (saved with the artifact, passed back on load)."""

    hidden: int
    dropout: float
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    val_fraction: float
    patience: int
    members: int
    seed: int


@register_router
class MLPRouter(NeighbourCostRouter):
    """Trunk ``Linear-ReLU-Dropout-Linear-ReLU`` then a linear head per model (sigmoid quality).

    ``hidden``: trunk width; ``dropout``; ``epochs``: upper bound (early
    stopping usually ends sooner); ``seed``; ``members``: average of that
    many seeds (a small ensemble smooths the heads).
    """

    name = "mlp"
    fitted_attr = "weights"
    requires = REQUIRES

    def __init__(
        self,
        hidden: int = 128,
        dropout: float = 0.2,
        epochs: int = 200,
        lr: float = 2e-3,
        weight_decay: float = 1e-3,
        batch_size: int = 128,
        val_fraction: float = 0.15,
        patience: int = 10,
        members: int = 3,
        seed: int = 0,
    ) -> None:
        self.params = _Params(
            hidden=hidden,
            dropout=dropout,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
            members=members,
            seed=seed,
        )
        self.models: list[str] = []
        self.weights: list[dict[str, np.ndarray]] | None = None
        self.cost_model: NeighbourCost | None = None

    def fit(self, data: TrainingData) -> MLPRouter:
        torch = import_torch("the MLP router")
        p = self.params
        self.models = list(data.models)
        X = data.Xn
        d, m = X.shape[1], len(self.models)
        self.weights = []
        for member in range(p["members"]):
            torch.manual_seed(p["seed"] + member)
            net = torch.nn.Sequential(
                torch.nn.Linear(d, p["hidden"]),
                torch.nn.ReLU(),
                torch.nn.Dropout(p["dropout"]),
                torch.nn.Linear(p["hidden"], p["hidden"]),
                torch.nn.ReLU(),
                torch.nn.Dropout(p["dropout"]),
                torch.nn.Linear(p["hidden"], m),
            )
            train_masked(
                torch,
                net,
                net,
                X,
                data.scores,
                seed=p["seed"] + member,
                epochs=p["epochs"],
                lr=p["lr"],
                weight_decay=p["weight_decay"],
                batch_size=p["batch_size"],
                val_fraction=p["val_fraction"],
                patience=p["patience"],
            )
            lin = [layer for layer in net if isinstance(layer, torch.nn.Linear)]
            self.weights.append(
                {f"{k}{i}": getattr(layer, k).detach().numpy().copy() for i, layer in enumerate(lin) for k in ("weight", "bias")}
            )
        self.cost_model = NeighbourCost().fit(data.Xn, data.costs)
        return self

    def _width(self) -> int:
        assert self.weights is not None
        return int(self.weights[0]["weight0"].shape[1])

    def _quality(self, Xn: np.ndarray) -> np.ndarray:
        assert self.weights is not None
        out = np.zeros((Xn.shape[0], len(self.models)))
        for w in self.weights:
            h = np.maximum(Xn @ w["weight0"].T + w["bias0"], 0)
            h = np.maximum(h @ w["weight1"].T + w["bias1"], 0)
            out += sigmoid(h @ w["weight2"].T + w["bias2"])
        return out / len(self.weights)

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "weights")
        assert self.weights is not None and self.cost_model is not None
        return {
            "params": self.params,
            "models": self.models,
            "members": {str(i): w for i, w in enumerate(self.weights)},
            "cost": self.cost_model.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MLPRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        members = state["members"]
        obj.weights = [{k: np.asarray(v) for k, v in members[str(i)].items()} for i in range(len(members))]
        obj.cost_model = NeighbourCost.from_state(state["cost"])
        return obj
