"""The calibration sample: a router's predictions on training prompts, priced later at the fleet's prices.

``turnout train`` stores it in a router artifact's metadata (:func:`calibration_sample`): the router's
predicted quality on up to :data:`CALIBRATION_PROMPTS` training prompts and each prompt's estimated
token count. A gateway reads it back (:class:`CalibrationSample`) and prices it exactly as it prices a
live request — the fleet's prices, the prompt's tokens, :data:`EXPECTED_OUTPUT_TOKENS` of output — to
calibrate a route budget's λ. The training table's own prices never enter: a router trained on GPT-4
outcomes routes a fleet of other models at other prices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from turnout.errors import RoutingError
from turnout.routing.base import Prediction, Router
from turnout.tokens import estimate_tokens
from turnout.types import Price

#: at most this many training prompts are kept as the calibration sample (a few hundred KB of JSON)
CALIBRATION_PROMPTS = 2000
#: output length assumed when pricing a candidate before it answers
EXPECTED_OUTPUT_TOKENS = 256


def calibration_sample(
    router: Router, X: np.ndarray, prompts: Sequence[str], *, seed: int = 0, max_prompts: int = CALIBRATION_PROMPTS
) -> dict[str, Any]:
    """The JSON-able calibration sample ``turnout train`` stores in an artifact's metadata.

    ``{"models", "quality" (rows of floats, null for no prediction), "prompt_tokens", "of",
    "features"?}``: the router's predictions on a seeded sample of at most
    ``max_prompts`` training prompts (embeddings ``X``), their token estimates,
    and, for routers that keep them (:meth:`~turnout.routing.base.Router.cold_start_features`),
    the features a model added later is scored from.
    """
    n = len(prompts)
    idx = np.arange(n) if n <= max_prompts else np.sort(np.random.default_rng(seed).choice(n, max_prompts, replace=False))
    pred = router.predict(np.asarray(X)[idx])
    quality = [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in np.asarray(pred.quality, dtype=float)]
    doc: dict[str, Any] = {
        "models": list(pred.models),
        "quality": quality,
        "prompt_tokens": [estimate_tokens(prompts[i]) for i in idx],
        "of": n,
    }
    features = router.cold_start_features(np.asarray(X)[idx])
    if features is not None:  # lets a model added later get exact predictions here (turnout add-model)
        doc["features"] = np.round(np.asarray(features, dtype=float), 6).tolist()
    return doc


@dataclass(frozen=True)
class CalibrationSample:
    """Predicted quality (prompts × artifact models) and prompt tokens, read back from an artifact."""

    models: list[str]
    quality: np.ndarray
    prompt_tokens: np.ndarray
    of: int

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> CalibrationSample | None:
        """The sample in an artifact's metadata, or None when the artifact has none (trained before it existed)."""
        doc = meta.get("calibration")
        if not isinstance(doc, dict):
            return None
        quality = np.array([[math.nan if v is None else float(v) for v in row] for row in doc["quality"]], dtype=float)
        tokens = np.asarray(doc["prompt_tokens"], dtype=np.int64)
        if quality.ndim != 2 or quality.shape != (len(tokens), len(doc["models"])) or not len(tokens):
            raise RoutingError("the artifact's calibration sample is malformed (shapes disagree); re-train it")
        return cls(list(doc["models"]), quality, tokens, int(doc.get("of", len(tokens))))

    def priced(
        self, candidates: Mapping[str, str], prices: Mapping[str, Price], context_windows: Mapping[str, int | None] | None = None
    ) -> Prediction:
        """The sample as a :class:`Prediction` over the route's *fleet* models, costed with the fleet's prices.

        ``candidates`` maps artifact model names to fleet models, as in the
        route's config; a candidate the artifact has no predictions for is
        unavailable, as it is at serving time, and so is one whose context
        window the prompt does not fit.
        """
        index = {m: i for i, m in enumerate(self.models)}
        fleet = list(candidates.values())
        n = len(self.prompt_tokens)
        quality = np.full((n, len(fleet)), math.nan)
        cost = np.empty((n, len(fleet)))
        available = np.ones((n, len(fleet)), dtype=bool)
        for j, (router_model, fleet_model) in enumerate(candidates.items()):
            if router_model in index:
                quality[:, j] = self.quality[:, index[router_model]]
            p = prices[fleet_model]
            cost[:, j] = (self.prompt_tokens * p.input_per_mtok + EXPECTED_OUTPUT_TOKENS * p.output_per_mtok) / 1e6
            window = (context_windows or {}).get(fleet_model)
            if window:
                available[:, j] = self.prompt_tokens <= window
        available &= ~np.isnan(quality)
        # a prompt no candidate could answer (too long for every window) fails at serving time; it sets no price
        keep = available.any(axis=1)
        if not keep.any():
            raise RoutingError(
                "no calibration prompt has an available candidate (no predictions, or every context window too small)"
            )
        return Prediction(models=fleet, quality=quality[keep], cost=cost[keep], available=available[keep])


__all__ = ["CALIBRATION_PROMPTS", "EXPECTED_OUTPUT_TOKENS", "CalibrationSample", "calibration_sample"]
