"""Matrix-factorization router in RouteLLM's bilinear form.

RouteLLM's MF router scores a model pair as ``w · ((v_a - v_b) ⊙ P x)``. Here
each model gets its own quality: ``s_j(x) = w · (v_j ⊙ P x) + b_j`` with a
learned projection ``P`` of the prompt embedding, a learned model embedding
``v_j``, a shared output vector ``w`` and a per-model bias; trained by masked
BCE on per-model quality. torch to fit, numpy to predict.
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

    dim: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    val_fraction: float
    patience: int
    seed: int


@register_router
class MFRouter(NeighbourCostRouter):
    """Bilinear quality ``sigmoid(w · (v_model ⊙ P x) + b_model)``; ``dim`` is the latent size."""

    name = "mf"
    fitted_attr = "P"
    requires = REQUIRES

    def __init__(
        self,
        dim: int = 64,
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
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
            seed=seed,
        )
        self.models: list[str] = []
        self.P: np.ndarray | None = None
        self.V: np.ndarray | None = None
        self.w: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.cost_model: NeighbourCost | None = None

    def fit(self, data: TrainingData) -> MFRouter:
        torch = import_torch("the MF router")
        p = self.params
        self.models = list(data.models)
        X = data.Xn
        d, m = X.shape[1], len(self.models)
        torch.manual_seed(p["seed"])

        class _MF(torch.nn.Module):  # type: ignore[misc,name-defined]  # torch is imported lazily (Any): no static base
            def __init__(self) -> None:
                super().__init__()
                self.P = torch.nn.Linear(d, p["dim"], bias=False)
                self.V = torch.nn.Parameter(torch.randn(m, p["dim"]) * 0.1 + 1.0)
                self.w = torch.nn.Linear(p["dim"], 1, bias=False)
                self.b = torch.nn.Parameter(torch.zeros(m))

            def forward(self, x: Any) -> Any:
                z = self.P(x)[:, None, :] * self.V[None, :, :]  # batch × m × dim
                return self.w(z).squeeze(-1) + self.b

        net = _MF()
        train_masked(
            torch,
            net,
            net,
            X,
            data.scores,
            seed=p["seed"],
            epochs=p["epochs"],
            lr=p["lr"],
            weight_decay=p["weight_decay"],
            batch_size=p["batch_size"],
            val_fraction=p["val_fraction"],
            patience=p["patience"],
        )
        self.P = net.P.weight.detach().numpy().T.copy()
        # fold w into V: w · (v ⊙ z) = (v ⊙ w) · z, one matmul at predict time
        self.V = (net.V.detach().numpy() * net.w.weight.detach().numpy()[0][None, :]).copy()
        self.w = net.w.weight.detach().numpy()[0].copy()
        self.b = net.b.detach().numpy().copy()
        self.cost_model = NeighbourCost().fit(data.Xn, data.costs)
        return self

    def _width(self) -> int:
        assert self.P is not None
        return int(self.P.shape[0])

    def _quality(self, Xn: np.ndarray) -> np.ndarray:
        assert self.P is not None and self.V is not None and self.b is not None
        return sigmoid((Xn @ self.P) @ self.V.T + self.b)

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "P")
        assert self.cost_model is not None
        return {
            "params": self.params,
            "models": self.models,
            "P": self.P,
            "V": self.V,
            "w": self.w,
            "b": self.b,
            "cost": self.cost_model.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MFRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        obj.P, obj.V, obj.w, obj.b = (np.asarray(state[k]) for k in ("P", "V", "w", "b"))
        obj.cost_model = NeighbourCost.from_state(state["cost"])
        return obj
