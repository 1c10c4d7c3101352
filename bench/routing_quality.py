"""Routing quality: every router on the shared RouterBench and DCRouter tables, against goals.

Runs the ``turnout eval`` runner in-process (no subprocess) with MiniLM embeddings (cached under
~/.cache/turnout/embeddings after the first run), prints a rich table per dataset and a goals
table, and writes bench/results/routing_quality.json and routing_quality_{dataset}.png.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 python bench/routing_quality.py \
        [--routerbench PATH] [--dcrouter PATH] [--routers knn,mlp,...] [--embedder minilm]

Goals: routerbench AIQ >= 0.88 and the best single model's (GPT-4's) quality at <= 50% of its
cost by the best router; dcrouter AIQ >= 0.62 and max quality >= 0.64; total fit+eval time of all
routers < 120 s; decision p50 < 1 ms for knn, mlp and mf.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))

FAST_ROUTERS = ("knn", "mlp", "mf")


def _goals(results: dict[str, dict[str, Any]], total_s: float) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, passed) rows; passed is None when the dataset was not run."""
    rows: list[tuple[str, str, bool | None]] = []
    f = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731

    def best(ds: str, key: str, lower: bool = False) -> tuple[str | None, float | None]:
        rs = {n: r[key] for n, r in results[ds]["routers"].items() if r.get(key) is not None}
        if not rs:
            return None, None
        n = (min if lower else max)(rs, key=rs.get)
        return n, rs[n]

    def ci(ds: str, name: str | None) -> str:
        c = results[ds]["routers"].get(name or "", {}).get("aiq_ci")
        return f"; 95% CI {c[0]:.3f}–{c[1]:.3f}" if c else ""

    if "routerbench" in results:
        n, v = best("routerbench", "aiq")
        rows.append(("routerbench AIQ ≥ 0.88 (best router)", f"{f(v)} ({n}{ci('routerbench', n)})", v is not None and v >= 0.88))
        n, v = best("routerbench", "cost_fraction_to_match_best", lower=True)
        bs = results["routerbench"]["best_single"]["model"]
        rows.append((f"routerbench {bs} quality at ≤ 50% of its cost", f"{f(v)} ({n})", v is not None and v <= 0.5))
    else:
        rows += [("routerbench AIQ ≥ 0.88", "not run", None), ("routerbench best-single quality at ≤ 50% cost", "not run", None)]
    if "dcrouter" in results:
        n, v = best("dcrouter", "aiq")
        rows.append(("dcrouter AIQ ≥ 0.62 (best router)", f"{f(v)} ({n}{ci('dcrouter', n)})", v is not None and v >= 0.62))
        n, v = best("dcrouter", "max_quality")
        rows.append(("dcrouter max quality ≥ 0.64 (best router)", f"{f(v)} ({n})", v is not None and v >= 0.64))
    else:
        rows += [("dcrouter AIQ ≥ 0.62", "not run", None), ("dcrouter max quality ≥ 0.64", "not run", None)]
    for ds, res in results.items():
        c = res.get("cv_choice")
        if c:  # reported, not a goal: the router a user gets from `turnout train --router auto`
            cf = c["test_cost_fraction_to_match_best"]
            rows.append(
                (
                    f"{ds}: router chosen on train by {c['folds']}-fold CV (the honest pick)",
                    f"{c['router']}: AIQ {f(c['test_aiq'])}, max q {f(c['test_max_quality'])}, cost frac {f(cf)}",
                    None,
                )
            )
    rows.append(("total fit+eval of all routers < 120 s", f"{total_s:.1f} s", total_s < 120 if results else None))
    for ds, res in results.items():
        for name in FAST_ROUTERS:
            r = res["routers"].get(name)
            if r is None:
                continue
            p = r["decision_ms_p50"]
            rows.append((f"{ds} {name} decision p50 < 1 ms", f"{f(p)} ms", p is not None and p < 1.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from turnout.cli.eval import DEFAULT_ROUTERS, comparison_lines, render_table
    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import run_eval
    from turnout.evaluation.splits import split_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routerbench", default=str(DATA / "routerbench" / "routerbench.parquet"))
    ap.add_argument("--dcrouter", default=str(DATA / "dcrouter" / "dcrouter.parquet"))
    ap.add_argument("--routers", default=DEFAULT_ROUTERS)
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--cv-folds",
        type=int,
        default=4,
        help="also choose a router by k-fold CV on train only (as `turnout train --router auto`) and "
        "report its test figures: the honest pick, not the best on test (0 = skip)",
    )
    args = ap.parse_args(argv)

    # wide enough for the metric columns even when stdout is a file (rich would fall back to 80)
    console = Console(width=max(Console().width, 170))
    routers = [r for r in args.routers.split(",") if r]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = create_embedder(args.embedder, threads=os.cpu_count() or 1)
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, float]] = {}
    for ds, path in (("routerbench", args.routerbench), ("dcrouter", args.dcrouter)):
        if not Path(path).exists():
            console.print(f"[yellow]skipping {ds}: {path} not found (pass --{ds} PATH)[/yellow]")
            continue
        t0 = time.perf_counter()
        table = load_table(path)
        train, test = split_table(table, args.test_fraction, args.seed)
        t1 = time.perf_counter()
        Xtr, Xte = emb.embed(train.prompts), emb.embed(test.prompts)
        t2 = time.perf_counter()
        res = run_eval(train, test, Xtr, Xte, routers, table=str(path), seed=args.seed)
        t3 = time.perf_counter()
        results[ds] = res
        timings[ds] = {"load_s": t1 - t0, "embed_s": t2 - t1, "fit_eval_s": t3 - t2}
        console.print(
            render_table(
                res, f"{ds}: {len(train)} train / {len(test)} test, {len(table.models)} models, {args.embedder} embeddings"
            )
        )
        for line in comparison_lines(res):
            console.print(f"  {line}")
        console.print(f"  load {t1 - t0:.1f} s, embed {t2 - t1:.1f} s, fit+eval {t3 - t2:.1f} s")
        if args.cv_folds:
            from turnout.evaluation.crossval import AUTO_CANDIDATES, choose_router, cross_validate

            cands = [r for r in AUTO_CANDIDATES if r in routers]
            t4 = time.perf_counter()
            cv = cross_validate(train, np.asarray(Xtr), cands, folds=args.cv_folds, seed=args.seed, progress=True)
            pick = choose_router(cv)
            timings[ds]["cv_s"] = time.perf_counter() - t4
            r = res["routers"][pick]
            res["cv_choice"] = {
                "router": pick,
                "folds": args.cv_folds,
                "scores": cv,
                "test_aiq": r["aiq"],
                "test_aiq_ci": r.get("aiq_ci"),
                "test_max_quality": r["max_quality"],
                "test_cost_fraction_to_match_best": r["cost_fraction_to_match_best"],
            }
            console.print(
                f"  chosen on train by {args.cv_folds}-fold CV: {pick} (CV AIQ {cv[pick]['aiq']:.4f}); "
                f"on test: AIQ {r['aiq']:.4f}, max q {r['max_quality']:.4f}; "
                f"CV took {timings[ds]['cv_s']:.0f} s"
            )
        if not args.no_plot:
            try:
                from turnout.evaluation.plot import plot_eval

                png = plot_eval(res, out_dir / f"routing_quality_{ds}.png", title=f"{ds}: {args.embedder} embeddings")
                console.print(f"  wrote {png}")
            except ImportError as exc:
                console.print(f"[yellow]  no plot: {exc}[/yellow]")

    total = sum(t["fit_eval_s"] for t in timings.values())
    goals = _goals(results, total)
    g = Table(title="routing quality goals")
    for col in ("goal", "measured", "result"):
        g.add_column(col)
    for goal, measured, ok in goals:
        g.add_row(goal, measured, "—" if ok is None else ("[green]PASS[/green]" if ok else "[red]FAIL[/red]"))
    console.print(g)

    doc = {
        "embedder": args.embedder,
        "routers": routers,
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "timings": timings,
        "total_fit_eval_s": total,
        "goals": [{"goal": a, "measured": b, "passed": c} for a, b, c in goals],
        "datasets": results,
    }
    (out_dir / "routing_quality.json").write_text(json.dumps(doc, indent=2))
    console.print(f"wrote {out_dir / 'routing_quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
