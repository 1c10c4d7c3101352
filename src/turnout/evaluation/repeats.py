"""Repeated random splits (``turnout eval --repeats N``): how much a comparison of routers owes to one split.

One test split of a few hundred prompts measures a router with an AIQ
interval about ±0.02 wide, and a different split trains the routers on
different prompts too. :func:`run_repeated` draws ``repeats`` seeded random
splits by prompt, runs :func:`~turnout.evaluation.runner.run_eval` on each,
and summarises every metric over the splits (mean, sd, min, max, each value).

The differences between routers (against the best router by mean AIQ, and
against the single-model hull) get the *corrected resampled t* interval of
Nadeau and Bengio (2003, "Inference for the generalization error"): the
splits share most of their training prompts, so their results are correlated
and the plain ``sd / sqrt(N)`` is too narrow; the corrected variance is
``(1/N + n_test/n_train) · s²``.

Example::

    X = embedder.embed(table.prompts)
    out = run_repeated(table, X, ["knn", "mlp"], repeats=5)
    out["routers"]["mlp"]["aiq"]["mean"], out["routers"]["knn"]["aiq_vs_best"]["ci"]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.runner import progress_bar, run_eval
from turnout.evaluation.splits import random_rows
from turnout.evaluation.table import RoutingTable

#: the metrics of each router summarised over the splits
METRICS = (
    "aiq",
    "max_quality",
    "quality_at_best_single_cost",
    "cost_fraction_to_match_best",
    "within_task_auc",
    "fit_s",
    "decision_ms_p50",
)

#: two-sided 95% quantiles of Student's t, by degrees of freedom (1-30); beyond 30 the normal's 1.96 is within 4%
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df ≥ 1)."""
    if df < 1:
        raise ValueError("t975 needs at least one degree of freedom")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df  # 2.4/df: the first term of t's expansion


def random_splits(n: int, repeats: int, test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` seeded (train rows, test rows) splits of ``n`` prompts; split ``r`` is
    :func:`~turnout.evaluation.splits.random_rows` with seed ``seed + r`` (the first is ``turnout eval``'s own
    random split at ``--seed``)."""
    if repeats < 2:
        raise DataError(f"--repeats {repeats}: repeated splits need at least 2", fix="use e.g. --repeats 5")
    return [random_rows(n, test_fraction, seed + r) for r in range(repeats)]


def summary(values: list[float | None]) -> dict[str, Any]:
    """Mean, sd (n − 1), min and max of the values that are not None, how many those are, and every value."""
    xs = np.array([v for v in values if v is not None], dtype=float)
    if not len(xs):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {
        "mean": float(xs.mean()),
        "sd": float(xs.std(ddof=1)) if len(xs) > 1 else None,
        "min": float(xs.min()),
        "max": float(xs.max()),
        "n": int(len(xs)),
        "values": list(values),
    }


def corrected_interval(diffs: np.ndarray, n_train: float, n_test: float) -> dict[str, Any]:
    """Mean of the per-split differences and its corrected resampled t 95% interval (Nadeau and Bengio)."""
    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "ci": None, "values": d.tolist()}
    var = (1.0 / len(d) + n_test / max(n_train, 1.0)) * float(d.var(ddof=1))
    half = t975(len(d) - 1) * math.sqrt(var)
    return {"mean": mean, "ci": [mean - half, mean + half], "values": d.tolist()}


def run_repeated(
    table: RoutingTable,
    X: np.ndarray,
    routers: list[str],
    *,
    repeats: int = 5,
    test_fraction: float = 0.25,
    seed: int = 0,
    keep_seen: bool = False,
    bootstrap: int = 0,
    router_params: dict[str, dict[str, Any]] | None = None,
    variants: dict[str, str] | None = None,
    table_name: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """``routers`` on ``repeats`` random splits of ``table`` (``X``: its prompts' embeddings, row for row).

    The table's own ``split`` column is not used: every split is drawn at random.
    Test prompts whose text is also in that split's train are dropped (unless
    ``keep_seen``), as ``turnout eval`` does. ``bootstrap`` resamples within each
    split (default 0: the spread over splits is the interval here). Returns the
    schema of docs/eval.md, "Repeated splits"; each split's whole ``run_eval``
    result is under ``splits``.
    """
    from turnout.routing.registry import router_class

    if len(X) != len(table):
        raise DataError(f"{len(X)} embeddings for {len(table)} prompts", fix="embed table.prompts, row for row")
    splits = random_splits(len(table), repeats, test_fraction, seed)
    results: list[dict[str, Any]] = []

    def one(r: int, tr_rows: np.ndarray, te_rows: np.ndarray) -> None:
        train = table.subset(tr_rows)
        drawn = len(te_rows)
        if not keep_seen:
            seen = set(train.prompts)
            te_rows = np.array([i for i in te_rows if table.prompts[i] not in seen], dtype=int)
            if not len(te_rows):
                raise DataError(f"split {r}: every test prompt is also in train", fix="pass --keep-seen")
        res = run_eval(
            train,
            table.subset(te_rows),
            X[tr_rows],
            X[te_rows],
            routers,
            table=table_name,
            progress=False,
            router_params=router_params,
            bootstrap=bootstrap,
            seed=seed + r,
            variants=variants,
        )
        res["seed"] = seed + r
        res["test_prompts_seen_in_train_dropped"] = drawn - len(te_rows)
        results.append(res)

    if progress:
        with progress_bar() as bar:
            task = bar.add_task(f"{repeats} splits × {len(routers)} routers", total=repeats)
            for r, (tr_rows, te_rows) in enumerate(splits):
                one(r, tr_rows, te_rows)
                best = max(results[-1]["routers"].items(), key=lambda kv: kv[1]["aiq"])
                bar.console.log(f"split {r + 1}/{repeats} (seed {seed + r}): best {best[0]} AIQ {best[1]['aiq']:.4f}")
                bar.advance(task)
    else:
        for r, (tr_rows, te_rows) in enumerate(splits):
            one(r, tr_rows, te_rows)
    return summarise(
        results, routers, {name: router_class((variants or {}).get(name, name)).evaluation_only for name in routers}, table_name
    )


def summarise(
    results: list[dict[str, Any]], routers: list[str], evaluation_only: dict[str, bool], table_name: str = ""
) -> dict[str, Any]:
    """The repeated-splits result from each split's ``run_eval`` result (see :func:`run_repeated`)."""
    n_train = [int(r["n_train"]) for r in results]
    n_test = [int(r["n_test"]) for r in results]
    mean_train, mean_test = float(np.mean(n_train)), float(np.mean(n_test))
    aiq = {name: np.array([r["routers"][name]["aiq"] for r in results]) for name in routers}
    hull = np.array([r["single_models_aiq"] for r in results])
    ranked = [n for n in routers if not evaluation_only.get(n)]
    best = max(ranked, key=lambda n: aiq[n].mean()) if ranked else None
    top = [max(ranked, key=lambda n: r["routers"][n]["aiq"]) for r in results] if ranked else []
    out_routers: dict[str, Any] = {}
    for name in routers:
        block: dict[str, Any] = {
            m: summary([r["routers"][name].get(m) for r in results])
            for m in METRICS
            if any(r["routers"][name].get(m) is not None for r in results)
        }
        block["aiq_gain"] = corrected_interval(aiq[name] - hull, mean_train, mean_test)
        if best is not None and name != best:
            block["aiq_vs_best"] = corrected_interval(aiq[name] - aiq[best], mean_train, mean_test)
        block["wins"] = top.count(name)
        out_routers[name] = block
    out: dict[str, Any] = {
        "table": table_name,
        "repeats": len(results),
        "seeds": [r["seed"] for r in results],
        "n_train": n_train,
        "n_test": n_test,
        "test_prompts_seen_in_train_dropped": [int(r.get("test_prompts_seen_in_train_dropped", 0)) for r in results],
        "best_router": best,
        "single_models_aiq": summary(hull.tolist()),
        "best_single_quality": summary([r["best_single"]["quality"] for r in results]),
        "oracle_quality": summary([r["oracle"]["quality"] for r in results]),
        "routers": out_routers,
    }
    refs = [r.get("references") or {} for r in results]
    if all("task_means" in x for x in refs):
        line = np.array([x["task_means"]["aiq"] for x in refs])
        out["task_means_aiq"] = summary(line.tolist())
        for name in routers:
            out_routers[name]["aiq_vs_task_means"] = corrected_interval(aiq[name] - line, mean_train, mean_test)
    notes = list(dict.fromkeys(n for r in results for n in r.get("notes", [])))  # each once, in order
    if notes:
        out["notes"] = notes
    out["splits"] = results
    return out


__all__ = ["METRICS", "corrected_interval", "random_splits", "run_repeated", "summarise", "summary", "t975"]
