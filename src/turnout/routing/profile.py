"""Capability-profile router (the RouteProfile / Model-SAT idea).

Prompts are soft-assigned to ``clusters`` "capabilities" (spherical k-means
over training embeddings). Each model is represented by a *profile*: its
shrunk success rate on every capability. A prompt's predicted quality for a
model is its capability mix dotted with the model's profile.

Because a model is just a profile, a model **absent from training** can be
added from a small probe set (say 50 prompts it answered) and its card, with
:meth:`ProfileRouter.add_model`: the probe outcomes are explained as a mix of
the known models' profiles (non-negative least squares on their predicted
quality at the probe prompts), which gives a full prior profile even for
capabilities the probe barely covers; the probe's own per-capability evidence
then updates that prior. A card's price sets the new model's relative cost.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from turnout.errors import RoutingError
from turnout.routing._common import as_2d, column_means, kmeans, l2_normalize, require_fitted, soft_assign
from turnout.routing.base import TrainingData
from turnout.routing.cost import NeighbourCost, NeighbourCostRouter
from turnout.routing.registry import register_router


def _card_price(card: dict[str, Any] | None) -> float | None:
    if not card:
        return None
    prices = [float(card[k]) for k in ("input_per_mtok", "output_per_mtok") if card.get(k) is not None]
    return sum(prices) / len(prices) if prices else None


def _simplex_lstsq(A: np.ndarray, y: np.ndarray, ridge: float, iters: int = 300) -> np.ndarray:
    """Weights on the probability simplex minimising ||A w − y||² + ridge ||w − uniform||² (projected gradient)."""
    m = A.shape[1]
    w = np.full(m, 1.0 / m)
    step = 1.0 / (np.linalg.norm(A, 2) ** 2 + ridge + 1e-9)
    for _ in range(iters):
        grad = A.T @ (A @ w - y) + ridge * (w - 1.0 / m)
        v = w - step * grad
        # Euclidean projection onto the simplex (Duchi et al.)
        u = np.sort(v)[::-1]
        css = np.cumsum(u)
        rho = np.nonzero(u * np.arange(1, m + 1) > css - 1)[0][-1]
        w = np.maximum(v - (css[rho] - 1) / (rho + 1), 0)
    return w


class _Params(TypedDict):
    """The constructor's arguments, kept as given (saved with the artifact, passed back on load)."""

    clusters: int
    temperature: float
    shrink: float
    seed: int


@register_router
class ProfileRouter(NeighbourCostRouter):
    """Quality = capability mix · model profile; supports cold-start models via :meth:`add_model`.

    ``clusters``: number of capabilities; ``temperature``: softness of the
    assignment; ``shrink``: pseudo-count pulling a profile cell towards the
    model's overall mean (fit) or towards the prior profile (add_model).
    """

    name = "profile"
    fitted_attr = "profiles"

    def __init__(self, clusters: int = 24, temperature: float = 0.05, shrink: float = 5.0, seed: int = 0) -> None:
        self.params = _Params(clusters=clusters, temperature=temperature, shrink=shrink, seed=seed)
        self.models: list[str] = []
        self.centroids: np.ndarray | None = None
        self.profiles: np.ndarray | None = None  # m × K, probability space
        self.cost_scale: np.ndarray | None = None  # per model multiplier of the reference cost curve
        self.cost_model: NeighbourCost | None = None
        self.ref_cost_cols: np.ndarray | None = None  # which models the reference cost curve averages
        self.prices: np.ndarray | None = None  # card price per model (NaN unknown)

    def _assign(self, Xn: np.ndarray) -> np.ndarray:
        assert self.centroids is not None
        return soft_assign(Xn, self.centroids, self.params["temperature"])

    def fit(self, data: TrainingData) -> ProfileRouter:
        p = self.params
        self.models = list(data.models)
        Xn = data.Xn
        k = max(1, min(p["clusters"], Xn.shape[0] // 20))
        self.centroids = kmeans(Xn, k, seed=p["seed"])
        A = self._assign(Xn)
        obs = ~np.isnan(data.scores)
        mu = column_means(data.scores)
        num = A.T @ np.nan_to_num(data.scores) + p["shrink"] * mu[None, :]
        den = A.T @ obs.astype(float) + p["shrink"]
        self.profiles = (num / den).T
        self.cost_model = NeighbourCost().fit(data.Xn, data.costs)
        self.ref_cost_cols = np.ones(len(self.models), dtype=bool)
        self.cost_scale = np.ones(len(self.models))
        self.prices = np.array([_card_price(data.model_cards.get(m)) or np.nan for m in self.models])
        return self

    def _cost(self, Xn: np.ndarray) -> np.ndarray:
        """Per-prompt cost of each model: trained models from kNN, added ones scaled off the fleet mean."""
        assert self.cost_model is not None and self.cost_scale is not None and self.ref_cost_cols is not None
        base = self.cost_model.predict(Xn)  # n × m_trained
        n_trained = base.shape[1]
        fleet = base.mean(axis=1, keepdims=True)
        extra = fleet * self.cost_scale[None, n_trained:]
        return np.concatenate([base, extra], axis=1)

    def _width(self) -> int:
        assert self.centroids is not None
        return int(self.centroids.shape[1])

    def _quality(self, Xn: np.ndarray) -> np.ndarray:
        assert self.profiles is not None
        quality: np.ndarray = self._assign(Xn) @ self.profiles.T
        return quality

    def add_model(
        self,
        name: str,
        X_probe: np.ndarray,
        scores_probe: np.ndarray,
        *,
        card: dict[str, Any] | None = None,
        costs_probe: np.ndarray | None = None,
        ridge: float = 0.05,
    ) -> ProfileRouter:
        """Add a model unseen in training from its outcomes on a few probe prompts (and its card).

        ``X_probe``: embeddings of the probe prompts (same embedder as
        training); ``scores_probe``: the new model's score on each; ``card``:
        e.g. ``{"input_per_mtok": 0.9, "output_per_mtok": 0.9}`` used for its
        relative cost when ``costs_probe`` is absent.
        """
        require_fitted(self, "profiles")
        assert self.profiles is not None and self.cost_scale is not None and self.prices is not None
        assert self.centroids is not None and self.ref_cost_cols is not None
        if name in self.models:
            raise RoutingError(f"model '{name}' is already routed by this profile router; pick another name")
        y = np.asarray(scores_probe, dtype=float).ravel()
        keep = ~np.isnan(y)
        if keep.sum() < 1:
            raise RoutingError(f"add_model('{name}') needs at least one probe prompt with a score")
        Xn = l2_normalize(as_2d(X_probe, self.centroids.shape[1], self.name))[keep]
        y = y[keep]
        A = self._assign(Xn)
        known = A @ self.profiles.T  # probe × m: what each known model would score there
        mix = _simplex_lstsq(known - known.mean(axis=0), y - y.mean(), ridge=ridge * len(y))
        prior = mix @ self.profiles  # K: the new model's profile as a blend of known profiles
        # shift the blend so that its mean on the probes matches the new model's probe mean
        prior = np.clip(prior + (y.mean() - float((A @ prior).mean())), 0.0, 1.0)
        s = self.params["shrink"]
        profile = (A.T @ y + s * prior) / (A.sum(axis=0) + s)
        self.profiles = np.vstack([self.profiles, profile[None, :]])
        # relative cost: probe costs against the fleet's predicted cost, else the card's price ratio
        if costs_probe is not None:
            fleet = self._cost(Xn)[:, : int(self.ref_cost_cols.sum())].mean(axis=1)
            scale = float(np.nanmean(np.asarray(costs_probe, dtype=float)[keep]) / max(fleet.mean(), 1e-15))
        else:
            price = _card_price(card)
            known_prices = self.prices[: int(self.ref_cost_cols.sum())]
            scale = price / float(np.nanmean(known_prices)) if price is not None and np.isfinite(known_prices).any() else 1.0
        self.cost_scale = np.append(self.cost_scale, scale)
        self.prices = np.append(self.prices, _card_price(card) or np.nan)
        self.models.append(name)
        return self

    def cold_start_features(self, X: np.ndarray) -> np.ndarray:
        """Each prompt's capability mix (n × clusters, rows sum to 1): quality is this mix · a model's profile."""
        return self._assign(self._inputs(X))

    def quality_from_features(self, features: np.ndarray, name: str) -> np.ndarray:
        """Model ``name``'s predicted quality on prompts given by :meth:`cold_start_features`."""
        require_fitted(self, "profiles")
        assert self.profiles is not None
        if name not in self.models:
            raise RoutingError(f"unknown model '{name}'; known: {', '.join(self.models)}")
        F = np.asarray(features, dtype=float)
        if F.ndim != 2 or F.shape[1] != self.profiles.shape[1]:
            raise RoutingError(f"features have shape {F.shape}; this router has {self.profiles.shape[1]} capabilities")
        quality: np.ndarray = F @ self.profiles[self.models.index(name)]
        return quality

    def as_blend(self, name: str, of: list[str]) -> tuple[float, np.ndarray, float]:
        """``name``'s profile as an intercept plus a linear blend of the profiles of ``of``.

        Returns ``(intercept, weights, residual)``. A prompt's capability mix sums
        to 1, so on *any* prompt ``intercept + weights · (predicted quality of of)``
        is ``name``'s predicted quality to within ``residual`` (the largest
        per-capability misfit, least squares). This carries a model added by
        :meth:`add_model` into predictions made before it existed, such as an
        artifact's calibration sample.
        """
        require_fitted(self, "profiles")
        assert self.profiles is not None
        unknown = [m for m in [name, *of] if m not in self.models]
        if unknown:
            raise RoutingError(f"as_blend: unknown model(s) {', '.join(unknown)}; known: {', '.join(self.models)}")
        target = self.profiles[self.models.index(name)]
        basis = np.c_[np.ones(len(target)), self.profiles[[self.models.index(m) for m in of]].T]  # K × (1 + len(of))
        coef = np.linalg.lstsq(basis, target, rcond=None)[0]
        residual = float(np.abs(basis @ coef - target).max())
        return float(coef[0]), coef[1:], residual

    def get_state(self) -> dict[str, Any]:
        require_fitted(self, "profiles")
        assert self.cost_model is not None
        return {
            "params": self.params,
            "models": self.models,
            "centroids": self.centroids,
            "profiles": self.profiles,
            "cost_scale": self.cost_scale,
            "ref_cost_cols": self.ref_cost_cols,
            "prices": self.prices,
            "cost": self.cost_model.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProfileRouter:
        obj = cls(**state["params"])
        obj.models = list(state["models"])
        for key in ("centroids", "profiles", "cost_scale", "ref_cost_cols", "prices"):
            setattr(obj, key, np.asarray(state[key]))
        obj.cost_model = NeighbourCost.from_state(state["cost"])
        return obj
