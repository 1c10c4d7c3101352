"""The router seam: a router *scores*, the policy *decides*.

A router is fitted on a :class:`TrainingData` (prompt embeddings, a prompts ×
models matrix of observed quality with NaN for missing cells, the matching
cost matrix) and, for new prompts, predicts the quality (and the cost) of every
candidate model. It never chooses: :mod:`turnout.routing.policy` turns a
:class:`Prediction`, prices and constraints into a decision.

Example::

    router = create_router("knn", k=40)
    router.fit(TrainingData(X=emb_train, scores=S, costs=C, models=names))
    pred = router.predict(emb_test)          # pred.quality: n_test × n_models
    choice = Policy(lam=50.0).choose(pred)   # index of the model per prompt
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from turnout.routing._common import l2_normalize


@dataclass
class TrainingData:
    """What a router learns from. Rows are prompts, columns are models.

    ``scores`` and ``costs`` hold NaN where a model has no outcome for a prompt;
    such a cell is neither a training target nor a candidate.
    """

    X: np.ndarray
    scores: np.ndarray
    costs: np.ndarray
    models: list[str]
    tasks: list[str] | None = None
    #: optional model cards, e.g. {"gpt-4": {"input_per_mtok": 10, "params": "1.7T", "description": "..."}}
    model_cards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, m = self.scores.shape
        if self.X.shape[0] != n or self.costs.shape != (n, m) or len(self.models) != m:
            raise ValueError(
                f"inconsistent shapes: X {self.X.shape}, scores {self.scores.shape}, "
                f"costs {self.costs.shape}, {len(self.models)} models"
            )

    @cached_property
    def Xn(self) -> np.ndarray:
        """X with rows scaled to unit length (float32), computed once per data set.

        Every router fitted on this data keeps this one array (not a copy of
        its own), so an ensemble's members and their cost lookups read one
        matrix per decision, which then stays in the CPU's cache.
        """
        return l2_normalize(self.X)

    @property
    def observed(self) -> np.ndarray:
        """Boolean mask of the cells that have an outcome."""
        mask: np.ndarray = ~np.isnan(self.scores)
        return mask


@dataclass
class Prediction:
    """Predicted quality and cost of every model for a batch of prompts (n × m)."""

    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    #: optional n × m mask of models that may be chosen (False = not a candidate)
    available: np.ndarray | None = None


class Router(ABC):
    """Predicts per-candidate quality for prompts. Subclasses register by ``name``."""

    name: ClassVar[str]
    #: True for routers that read ground truth at prediction time (the oracle): evaluation only.
    evaluation_only: ClassVar[bool] = False
    #: optional packages ``fit`` imports, by import name, and the turnout extra that installs each
    requires: ClassVar[dict[str, str]] = {}

    models: list[str]

    @abstractmethod
    def fit(self, data: TrainingData) -> Router:
        """Learn from ``data``; returns ``self``."""

    @abstractmethod
    def predict(self, X: np.ndarray) -> Prediction:
        """Predict quality (and cost) of every model for each row of ``X``."""

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        """Only the predicted quality (n × m), for callers that predict cost once themselves (the ensemble).

        Routers whose cost comes from a separate lookup override this to skip it.
        """
        return self.predict(X).quality

    def cold_start_features(self, X: np.ndarray) -> np.ndarray | None:
        """Per-prompt features from which a model added after training can be scored (None: not supported).

        Stored with an artifact's calibration sample, they let a model added
        later (``turnout add-model``) get exact predictions on those prompts.
        """
        return None

    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted router (numpy arrays and plain values)."""
        raise NotImplementedError(f"router '{self.name}' cannot be saved")

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Router:
        """Rebuild a fitted router from :meth:`get_state`'s output."""
        raise NotImplementedError(f"router '{cls.name}' cannot be loaded")
