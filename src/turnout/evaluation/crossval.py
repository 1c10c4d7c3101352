"""K-fold cross-validation of routers on one (training) table: choose a router without a test set.

Each fold holds out a seeded share of the prompts, fits every router on the
rest and sweeps λ on the held-out prompts exactly as ``turnout eval`` does on a
test split (:func:`turnout.evaluation.runner.sweep`, AIQ over that fold's own
cost range). A router's score is its mean AIQ over the folds. ``turnout train
--router auto`` fits the best-scoring candidate on every training prompt.

Example::

    from turnout.evaluation.crossval import cross_validate
    scores = cross_validate(train, X, ["knn", "mlp", "profile"], folds=4)
    best = max(scores, key=lambda r: scores[r]["aiq"])
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.curves import curve_metrics, only_observed, sweep
from turnout.evaluation.runner import RouterFitter, baselines, ensemble_members, progress_bar
from turnout.evaluation.table import RoutingTable

#: routers ``turnout train --router auto`` chooses among (every learned router that needs no configuration)
AUTO_CANDIDATES = ("knn", "mlp", "mf", "bt", "graph", "profile", "ensemble")


def fold_indices(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train rows, held-out rows) pairs over ``n`` prompts: a seeded permutation dealt round-robin."""
    if folds < 2:
        raise DataError(f"cross-validation needs 2 or more folds, not {folds}", fix="use e.g. --cv-folds 4")
    if n < 2 * folds:
        raise DataError(
            f"{n} prompts are too few for {folds}-fold cross-validation",
            fix=f"give at least {2 * folds} prompts, or name a router instead of 'auto'",
        )
    perm = np.random.default_rng(seed).permutation(n)
    out = []
    for f in range(folds):
        held = np.sort(perm[f::folds])
        out.append((np.setdiff1d(np.arange(n), held), held))
    return out


def cross_validate(
    table: RoutingTable,
    X: np.ndarray,
    routers: list[str],
    *,
    folds: int = 4,
    seed: int = 0,
    router_params: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per router: ``aiq`` (mean over folds), ``aiq_folds``, ``max_quality`` (mean) on held-out prompts.

    Routers are built with :func:`turnout.routing.registry.create_router` (and
    ``router_params[name]``); an ``ensemble`` is composed from the members
    fitted in the same fold (:class:`~turnout.evaluation.runner.RouterFitter`)
    rather than fitted again. A fold whose held-out prompts span no cost range
    still scores (AIQ is then the quality at that one cost).
    """
    X = np.asarray(X)
    splits = fold_indices(len(table), folds, seed)
    scores: dict[str, list[tuple[float, float]]] = {r: [] for r in routers}
    with progress_bar() if progress else nullcontext() as bar:
        task = bar.add_task("cross-validating", total=len(routers) * folds) if bar is not None else None
        for f, (tr_rows, held) in enumerate(splits):
            tr, te = table.subset(tr_rows), table.subset(held)
            base = baselines(te)
            fitter = RouterFitter(tr.to_training_data(X[tr_rows]), router_params, reuse=ensemble_members(routers, router_params))
            for name in routers:
                if bar is not None:
                    bar.update(task, description=f"fold {f + 1}/{folds}: {name}")
                router, _ = fitter.fit(name)
                m = curve_metrics(sweep(only_observed(router.predict(X[held]), te), te)["curve"], base)
                scores[name].append((m["aiq"], m["max_quality"]))
                if bar is not None:
                    bar.console.log(f"fold {f + 1}/{folds}: {name} AIQ {m['aiq']:.4f}")
                    bar.advance(task)
    return {
        name: {
            "aiq": float(np.mean([a for a, _ in s])),
            "aiq_folds": [float(a) for a, _ in s],
            "max_quality": float(np.mean([q for _, q in s])),
        }
        for name, s in scores.items()
    }


def choose_router(scores: dict[str, dict[str, Any]]) -> str:
    """The router with the highest mean cross-validated AIQ (the first listed on a tie)."""
    if not scores:
        raise DataError("no router was cross-validated", fix="name at least one candidate router")
    return max(scores, key=lambda r: scores[r]["aiq"])


def tied_with(scores: dict[str, dict[str, Any]], pick: str, z: float = 2.0) -> list[str]:
    """The candidates the folds cannot tell from ``pick``: paired fold differences within ``z`` standard errors.

    Each fold scores every candidate on the same held-out prompts, so the
    per-fold AIQ differences pair. A candidate is tied when the mean difference
    from ``pick`` is under ``z`` standard errors of those differences (with few
    folds this is a rough guide, not a test). On the shared tables most
    candidates tie, and choosing among tied ones by speed loses nothing
    (bench/auto_pick.py).
    """
    base = np.asarray(scores[pick]["aiq_folds"], dtype=float)
    out = []
    for name, s in scores.items():
        if name == pick:
            continue
        d = base - np.asarray(s["aiq_folds"], dtype=float)
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        if abs(d.mean()) <= z * se:
            out.append(name)
    return out
