"""Small routing tables with a planted signal, shared by the evaluation tests."""

from __future__ import annotations

import numpy as np

from turnout.evaluation.table import RoutingTable


def two_kinds(n: int = 160, seed: int = 0) -> tuple[RoutingTable, np.ndarray]:
    """Half the prompts (task "a") are of a kind the cheap model solves; the features say which kind.

    Models: "cheap" (cost 1, right on 90% of kind a, never on kind b), "big" (cost 10, 80%)
    and "tiny" (cost 0.5, 50%); costs vary ±20% per prompt. Returns the table and its features.
    """
    rng = np.random.default_rng(seed)
    kind = np.arange(n) % 2
    X = np.c_[kind, 1 - kind, rng.normal(scale=0.3, size=(n, 6))].astype(np.float32)
    S = np.c_[(kind == 0) & (rng.random(n) < 0.9), rng.random(n) < 0.8, rng.random(n) < 0.5].astype(float)
    C = np.tile([1.0, 10.0, 0.5], (n, 1)) * rng.uniform(0.8, 1.2, size=(n, 1))
    return RoutingTable(
        [str(i) for i in range(n)],
        [f"prompt {i}" for i in range(n)],
        ["cheap", "big", "tiny"],
        S,
        C,
        tasks=["a" if k == 0 else "b" for k in kind],
    ), X


def answered(n: int = 400, seed: int = 0, split: bool = True) -> tuple[RoutingTable, np.ndarray]:
    """Two-option questions answered by "cheap" (cost 1, right 75%), "probe" (cost 1, 65%) and "strong" (cost 10, 95%).

    Each model picks the right letter with its accuracy, independently; a score is 1 when the
    letter is right. Every cell carries the answer text (``responses``), and the first half of
    the prompts are ``train``, the rest ``test`` (with ``split``). Returns the table and features.
    """
    rng = np.random.default_rng(seed)
    truth = rng.choice(["A", "B"], size=n)
    acc = {"cheap": 0.75, "probe": 0.65, "strong": 0.95}
    models = list(acc)
    other = {"A": "B", "B": "A"}
    R = np.empty((n, len(models)), dtype=object)
    for j, m in enumerate(models):
        right = rng.random(n) < acc[m]
        R[:, j] = [t if ok else other[t] for t, ok in zip(truth, right)]
    S = (R == truth[:, None]).astype(float)
    C = np.tile([1.0, 1.0, 10.0], (n, 1))
    prompts = [f"Question {i}: which one?\nA) first\nB) second\nAnswer:" for i in range(n)]
    X = rng.normal(size=(n, 8)).astype(np.float32)
    return RoutingTable(
        [str(i) for i in range(n)],
        prompts,
        models,
        S,
        C,
        split=(["train"] * (n // 2) + ["test"] * (n - n // 2)) if split else None,
        responses=R,
    ), X
