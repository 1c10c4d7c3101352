"""The routing table: prompts × models matrices of quality and cost, loaded from any format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnout.routing.base import TrainingData


@dataclass
class RoutingTable:
    """Per-prompt outcomes of many models. ``scores``/``costs`` are n × m, NaN where a cell is missing.

    ``responses``, when the source carries answer texts (a canonical ``response`` column,
    RouterBench's ``<model>|model_response``), is an n × m object array of ``str``, ``None``
    where a cell has no answer text: cascades and fan-outs read it (:mod:`turnout.evaluation.cascade`).

    Example::

        table = load_table("../shared/data/routerbench/routerbench.parquet")
        train = table.subset(np.flatnonzero(np.array(table.split) == "train"))
    """

    prompt_ids: list[str]
    prompts: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray
    tasks: list[str] | None = None
    split: list[str] | None = None
    model_cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""
    #: True when some cost was estimated from characters, not measured or counted
    cost_estimated: bool = False
    #: n × m answer texts (object array: str, or None where there is none); None when the source has no responses
    responses: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, indices: Any) -> RoutingTable:
        """A new table with only the prompts at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=int)

        def pick(xs: list[str] | None) -> list[str] | None:
            return None if xs is None else [xs[i] for i in idx]

        return RoutingTable(
            prompt_ids=[self.prompt_ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            models=list(self.models),
            scores=self.scores[idx],
            costs=self.costs[idx],
            tasks=pick(self.tasks),
            split=pick(self.split),
            model_cards=dict(self.model_cards),
            source=self.source,
            cost_estimated=self.cost_estimated,
            responses=None if self.responses is None else self.responses[idx],
        )

    def with_models(self, models: list[str]) -> RoutingTable:
        """The same prompts with columns for exactly ``models``, in that order.

        A model this table has no column for gets an all-missing column (so it is
        never a candidate on these prompts); a column not in ``models`` is left out.
        Two tables loaded from different files can list their models in different
        orders: align them before using one's predictions on the other.
        """
        where = {m: j for j, m in enumerate(self.models)}
        n = len(self)

        def take(M: np.ndarray, missing: Any = np.nan) -> np.ndarray:
            out = np.full((n, len(models)), missing, dtype=object if missing is None else float)
            for k, m in enumerate(models):
                if m in where:
                    out[:, k] = M[:, where[m]]
            return out

        return RoutingTable(
            prompt_ids=list(self.prompt_ids),
            prompts=list(self.prompts),
            models=list(models),
            scores=take(self.scores),
            costs=take(self.costs),
            tasks=self.tasks,
            split=self.split,
            model_cards={m: c for m, c in self.model_cards.items() if m in models},
            source=self.source,
            cost_estimated=self.cost_estimated,
            responses=None if self.responses is None else take(self.responses, None),
        )

    def to_training_data(self, X: np.ndarray) -> TrainingData:
        """Pair the table with prompt embeddings ``X`` (one row per prompt)."""
        return TrainingData(
            X=X,
            scores=self.scores,
            costs=self.costs,
            models=list(self.models),
            tasks=self.tasks,
            model_cards=dict(self.model_cards),
        )

    def summary(self) -> dict[str, Any]:
        """Per-model mean quality, mean cost and coverage, plus the oracle.

        ``coverage`` is the share of (prompt, model) cells with an outcome; the oracle's is the
        share of prompts with at least one (it picks among whatever models answered).
        """
        obs = ~np.isnan(self.scores)
        per_model = {
            m: {
                "quality": float(np.nanmean(self.scores[:, j])) if obs[:, j].any() else None,
                "cost": float(np.nanmean(self.costs[:, j])) if obs[:, j].any() else None,
                "coverage": float(obs[:, j].mean()),
            }
            for j, m in enumerate(self.models)
        }
        oq, oc = oracle(self.scores, self.costs)
        return {
            "source": self.source,
            "prompts": len(self),
            "models": len(self.models),
            "cost_estimated": self.cost_estimated,
            "coverage": float(obs.mean()),
            "oracle": {"quality": oq, "cost": oc, "coverage": float(obs.any(axis=1).mean())},
            "per_model": per_model,
            "splits": _counts(self.split),
            "tasks": _counts(self.tasks),
        }


def _counts(xs: list[str] | None) -> dict[str, int] | None:
    if xs is None:
        return None
    vals, cnt = np.unique(np.asarray(xs, dtype=object).astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, cnt)}


def oracle(scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """Mean quality and cost of picking, per prompt, the best true score (cheapest among ties)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    best = s.max(axis=1, keepdims=True)
    c = np.where(s >= best, np.nan_to_num(costs, nan=np.inf), np.inf)
    j = np.argmin(c, axis=1)
    rows = np.arange(len(j))
    return float(scores[rows, j].mean()), float(np.nan_to_num(costs[rows, j]).mean())
