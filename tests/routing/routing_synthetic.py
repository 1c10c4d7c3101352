"""Synthetic routing tables with a planted signal, shared by the routing tests."""

from __future__ import annotations

import numpy as np
import pytest

from turnout.routing import TrainingData

#: routers that learn from data (the baselines and the prior router are tested on their own)
LEARNED = ["knn", "mlp", "mf", "bt", "graph", "profile", "ensemble"]
TORCH = {"mlp", "mf", "graph", "ensemble"}


def planted(n: int = 400, d: int = 16, seed: int = 0, missing: float = 0.0) -> tuple[TrainingData, np.ndarray]:
    """Two prompt clusters; model A is good on cluster 0, B on cluster 1, C is mediocre and cheap.

    Returns the data and each prompt's cluster. Any router that reads the
    prompt should beat the best single model (about 0.55 mean quality).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, d)) * 3
    cluster = rng.integers(0, 2, size=n)
    X = centres[cluster] + rng.normal(size=(n, d))
    p = np.where(cluster[:, None] == 0, [0.9, 0.2, 0.5], [0.2, 0.9, 0.5])
    S = (rng.random((n, 3)) < p).astype(float)
    C = np.tile([1e-3, 1e-3, 1e-4], (n, 1)) * rng.uniform(0.8, 1.2, size=(n, 1))
    if missing:
        hole = rng.random((n, 3)) < missing
        S[hole] = np.nan
        C[hole] = np.nan
    return TrainingData(X=X.astype(np.float32), scores=S, costs=C, models=["A", "B", "C"]), cluster


def needs(name: str) -> None:
    """Skip with a reason when a torch router is asked for without torch installed."""
    if name in TORCH:
        pytest.importorskip("torch", reason="the torch routers need the 'ml' extra: pip install 'turnout[ml]'")
