"""How good is `turnout train --router auto`? Its pick against always-ensemble and the best in hindsight.

`--router auto` chooses a router by k-fold cross-validated AIQ on the training prompts. Whether
that choice is worth making cannot be read off one test split: the candidates differ by less
than its noise. So this bench never touches a table's test split. It repeats, ``--reps`` times
per table, a fresh seeded 75/25 split of the *training* prompts. On each inner split it:

- runs the cross-validation of ``turnout train --router auto`` on the inner 75%;
- fits every candidate on that 75% and measures AIQ on the inner 25%, as ``turnout eval`` does.

It then reports, per table, the mean inner-test AIQ of three choices:

- the auto pick;
- always the ensemble;
- the best candidate in hindsight (which no rule can know beforehand).

Regret is the hindsight best's AIQ minus the choice's. The table also shows how often each
candidate was picked and how often it was best. Prints a rich table and writes
bench/results/auto_pick.json.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 python bench/auto_pick.py [--reps 8] \\
        [--table routerbench=PATH --table dcrouter=PATH ...] [--embedder minilm]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("TURNOUT_DATA", HERE.parent.parent / "shared" / "data"))
DEFAULT_TABLES = {
    "routerbench": DATA / "routerbench" / "routerbench.parquet",
    "dcrouter": DATA / "dcrouter" / "dcrouter.parquet",
    "routellm-gsm8k": DATA / "routellm-gsm8k" / "gsm8k.jsonl",
}


def inner_split(n: int, rep: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner train rows, inner test rows) of repetition ``rep``: a seeded 75/25 permutation split."""
    perm = np.random.default_rng(1000 + rep).permutation(n)
    k = n // 4
    return np.sort(perm[k:]), np.sort(perm[:k])


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean inner-test AIQ and regret of the auto pick, of always-ensemble and of the hindsight best."""
    auto = np.array([r["test_aiq"][r["pick"]] for r in reps])
    ens = np.array([r["test_aiq"]["ensemble"] for r in reps])
    best = np.array([max(r["test_aiq"].values()) for r in reps])
    names = list(reps[0]["test_aiq"])
    picks = [r["pick"] for r in reps]
    bests = [max(r["test_aiq"], key=r["test_aiq"].get) for r in reps]
    return {
        "reps": len(reps),
        "auto_aiq": float(auto.mean()),
        "ensemble_aiq": float(ens.mean()),
        "hindsight_best_aiq": float(best.mean()),
        "auto_regret": float((best - auto).mean()),
        "ensemble_regret": float((best - ens).mean()),
        "auto_minus_ensemble": float((auto - ens).mean()),
        "auto_minus_ensemble_sd": float((auto - ens).std(ddof=1)) if len(reps) > 1 else None,
        "per_router": {
            n: {"mean_aiq": float(np.mean([r["test_aiq"][n] for r in reps])), "picked": picks.count(n), "best": bests.count(n)}
            for n in names
        },
    }


def _counts(per_router: dict[str, dict[str, Any]], key: str) -> str:
    """``"knn 3, mlp 1"``: how many times each router was ``key`` (picked, best), leaving out the zeros."""
    return ", ".join(f"{n} {v[key]}" for n, v in per_router.items() if v[key])


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from turnout.embed import create_embedder
    from turnout.evaluation.crossval import AUTO_CANDIDATES, choose_router, cross_validate
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import run_eval
    from turnout.evaluation.splits import split_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a routing table (repeatable); default: the shared RouterBench, DCRouter and GSM8K tables",
    )
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--candidates", default=",".join(AUTO_CANDIDATES))
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    console = Console(width=max(Console().width, 150))
    tables = dict(t.split("=", 1) for t in args.table) if args.table else {k: str(v) for k, v in DEFAULT_TABLES.items()}
    cands = [c for c in args.candidates.split(",") if c]
    if "ensemble" not in cands:
        ap.error("--candidates must include ensemble: the bench compares the pick against it")
    emb = create_embedder(args.embedder, threads=os.cpu_count() or 1)
    results: dict[str, Any] = {}
    for name, path in tables.items():
        if not Path(path).exists():
            console.print(f"[yellow]skipping {name}: {path} not found[/yellow]")
            continue
        train, _ = split_table(load_table(path), 0.25, 0)  # the table's test split is never used here
        X = np.asarray(emb.embed(train.prompts))
        reps = []
        t0 = time.perf_counter()
        for rep in track(range(args.reps), description=f"{name}: inner splits", console=console):
            tr, te = inner_split(len(train), rep)
            itr, ite = train.subset(tr), train.subset(te)
            cv = cross_validate(itr, X[tr], cands, folds=args.folds, seed=rep)
            out = run_eval(itr, ite, X[tr], X[te], cands, progress=False, bootstrap=0)
            reps.append(
                {
                    "rep": rep,
                    "pick": choose_router(cv),
                    "cv_aiq": {n: cv[n]["aiq"] for n in cands},
                    "test_aiq": {n: out["routers"][n]["aiq"] for n in cands},
                }
            )
        results[name] = {
            "table": str(path),
            "n_train": len(train),
            "seconds": time.perf_counter() - t0,
            **summarise(reps),
            "repetitions": reps,
        }

    t = Table(title=f"turnout train --router auto: inner-test AIQ over {args.reps} inner splits of each train set")
    for col in (
        "table",
        "auto pick",
        "always ensemble",
        "hindsight best",
        "auto regret",
        "ensemble regret",
        "auto − ensemble (sd)",
        "picked (times)",
        "best in hindsight (times)",
    ):
        t.add_column(col, justify="left" if col in ("table", "picked (times)", "best in hindsight (times)") else "right")
    for name, r in results.items():
        count = functools.partial(_counts, r["per_router"])
        sd = r["auto_minus_ensemble_sd"]
        t.add_row(
            name,
            f"{r['auto_aiq']:.4f}",
            f"{r['ensemble_aiq']:.4f}",
            f"{r['hindsight_best_aiq']:.4f}",
            f"{r['auto_regret']:.4f}",
            f"{r['ensemble_regret']:.4f}",
            f"{r['auto_minus_ensemble']:+.4f}" + ("" if sd is None else f" ({sd:.4f})"),
            count("picked"),
            count("best"),
        )
    console.print(t)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "reps": args.reps,
        "folds": args.folds,
        "candidates": cands,
        "embedder": args.embedder,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "tables": results,
    }
    (out_dir / "auto_pick.json").write_text(json.dumps(doc, indent=2))
    console.print(f"wrote {out_dir / 'auto_pick.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
