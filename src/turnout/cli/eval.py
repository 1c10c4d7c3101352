"""``turnout eval TABLE``: fit routers on train, sweep λ on test, print metrics and write JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError

DEFAULT_ROUTERS = "knn"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="train and compare routers on a routing table")
    p.add_argument("table")
    p.add_argument("--test", help="a separate test table")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--routers", default=DEFAULT_ROUTERS, help="comma-separated router names")
    p.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    p.add_argument("--json", dest="json_out")
    p.set_defaults(func=run)


def split_table(table, test=None, *, test_fraction: float = 0.25, seed: int = 0):
    """(train, test): explicit test table, else the split column, else a seeded random split by prompt."""
    if test is not None:
        return table, test
    if table.split is not None:
        sp = np.array(table.split)
        if (sp == "train").any() and (sp == "test").any():
            return table.subset(np.flatnonzero(sp == "train")), table.subset(np.flatnonzero(sp == "test"))
    if not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction {test_fraction} not in (0, 1)", fix="use e.g. 0.25")
    perm = np.random.default_rng(seed).permutation(len(table))
    k = max(1, int(round(len(table) * test_fraction)))
    return table.subset(np.sort(perm[k:])), table.subset(np.sort(perm[:k]))


def run(args: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import baselines, curve_metrics, evaluate_router
    from turnout.routing.registry import create_router

    table = load_table(args.table)
    train, test = split_table(table, load_table(args.test) if args.test else None,
                              test_fraction=args.test_fraction, seed=args.seed)
    emb = create_embedder(args.embedder)
    Xtr, Xte = emb.embed(train.prompts), emb.embed(test.prompts)
    base = baselines(test)
    out: dict[str, Any] = {"table": str(args.table), "n_train": len(train), "n_test": len(test),
                           "best_single": base["best_single"], "oracle": base["oracle"],
                           "single_models_aiq": base["single_models_aiq"], "routers": {},
                           "single_models": base["single_models"]}
    for name in [r for r in args.routers.split(",") if r]:
        res = evaluate_router(create_router(name), train, test, Xtr, Xte)
        out["routers"][name] = {**curve_metrics(res["curve"], base), **res}
    t = Table(title=f"{args.table}: {len(train)} train / {len(test)} test")
    for col in ("router", "AIQ", "max q", "q @ best cost", "cost frac", "fit s", "p50 ms"):
        t.add_column(col)
    f = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    for name, r in out["routers"].items():
        t.add_row(name, f(r["aiq"]), f(r["max_quality"]), f(r["quality_at_best_single_cost"]),
                  f(r["cost_fraction_to_match_best"]), f(r["fit_s"]), f(r["decision_ms_p50"]))
    b = out["best_single"]
    t.add_row(f"best single ({b['model']})", "", f(b["quality"]), f(b["quality"]), "1", "", "")
    t.add_row("single-model hull", f(out["single_models_aiq"]), "", "", "", "", "")
    t.add_row("oracle", "", f(out["oracle"]["quality"]), "", "", "", "")
    Console().print(t)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0
