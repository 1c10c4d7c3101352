"""Route budget modes under drift: the gateway's own ``RouteBudget`` in ``tighten`` and ``pi`` mode, against a static λ.

``bench/budget_drift.py`` measures the bare controller; this bench drives the object a route really uses
(``turnout.gateway.budget.RouteBudget``: calibration on a sample, ``observe`` after each answer, ``lam``
before each decision), in both of its modes, to choose the default of ``budget.controller``.

RouterBench, MiniLM, ``knn`` trained on the shared train split; the calibration sample is the router's
predictions on (up to 2,000) training prompts, as ``turnout train`` stores it. Target: ``--target-share``
(0.5) of the best single model's mean cost on train. Two drifts, each ``--requests`` (8,000) test prompts
drawn with replacement, 5 seeds:

- **mix**: the task mix of ``budget_drift.py`` (first half 60% the cheapest task at the start-up λ,
  second half 60% the dearest);
- **length**: the mix stays uniform, but answers cost ``--short`` (0.5×) their table cost in the first
  half and ``--long`` (2×) in the second (answers getting longer half-way, as a model update might do).

Per mode, after ``--settle`` (1,000) requests of each half: the settled spend's deviation from target
(worst phase of the worst seed, and the signed deviation per phase: under target is money left unspent
on quality, over is overspending), and the mean true quality. The decision rule: the default is the mode
that holds the target (within ±5% settled) on both drifts; among those, the one with the smaller
overspend.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/budget_modes.py \\
        [--seeds 5] [--json bench/results/budget_modes.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from budget_drift import DATA, GOAL_PCT, stream_rows

MODES = ("static", "tighten", "pi")


async def replay(
    pred: Any, calib: Any, costs: np.ndarray, scores: np.ndarray, rows: np.ndarray, scale: np.ndarray, target: float, mode: str
) -> dict[str, np.ndarray]:
    """Serve ``rows`` in order under ``mode``: each decision at the budget's λ, each answer observed at its true cost."""
    from turnout.gateway.budget import RouteBudget
    from turnout.routing import Prediction, choose

    budget = RouteBudget.calibrate(calib, target_cost=target, controller="tighten" if mode == "static" else mode)
    lam0 = budget.lam()
    cost, score, lams = np.empty(len(rows)), np.empty(len(rows)), np.empty(len(rows))
    for t, i in enumerate(rows):
        lam = lam0 if mode == "static" else budget.lam()
        one = Prediction(pred.models, pred.quality[i : i + 1], pred.cost[i : i + 1], available=pred.available[i : i + 1])
        j = int(choose(one, lam)[0])
        cost[t], score[t], lams[t] = costs[i, j] * scale[t], scores[i, j], lam
        if mode != "static":
            await budget.observe(pred.models[j], float(cost[t]))
    return {"cost": cost, "score": score, "lam": lams}


def signed_dev(cost: np.ndarray, phase: np.ndarray, target: float, settle: int) -> list[float]:
    """Per phase: mean cost after the first ``settle`` requests of the phase / target − 1, in % (signed)."""
    return [(float(cost[phase == p][settle:].mean()) / target - 1.0) * 100 for p in np.unique(phase)]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from turnout.embed import create_embedder
    from turnout.evaluation.curves import only_observed
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.splits import split_table
    from turnout.routing import Prediction, calibrate_lambda, choose, create_router

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=str(DATA / "routerbench" / "routerbench.parquet"))
    ap.add_argument("--target-share", type=float, default=0.5)
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("--settle", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--short", type=float, default=0.5, help="answer cost factor of the first half (length drift)")
    ap.add_argument("--long", type=float, default=2.0, help="answer cost factor of the second half (length drift)")
    ap.add_argument("--json", default=str(HERE / "results" / "budget_modes.json"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    console = Console(width=max(Console().width, 150))
    emb = create_embedder("minilm", threads=os.cpu_count() or 1, progress=False)
    train, test = split_table(load_table(args.table))
    Xtr = np.asarray(emb.embed(train.prompts))
    router = create_router("knn").fit(train.to_training_data(Xtr))
    ptr = only_observed(router.predict(Xtr), train)
    rng0 = np.random.default_rng(0)
    keep = np.sort(rng0.choice(len(train), size=min(2000, len(train)), replace=False))  # the artifact's sample
    calib = Prediction(
        ptr.models, ptr.quality[keep], ptr.cost[keep], available=None if ptr.available is None else ptr.available[keep]
    )
    best = int(np.nanargmax(np.nanmean(train.scores, axis=0)))
    target = args.target_share * float(np.nanmean(train.costs[:, best]))
    lam0 = calibrate_lambda(calib, target_cost=target)
    idx = choose(ptr, lam0)
    served = train.costs[np.arange(len(train)), idx]
    ttr = np.asarray(train.tasks)
    per_task = {t: float(served[ttr == t].mean()) for t in sorted(set(ttr))}
    light, heavy = min(per_task, key=per_task.__getitem__), max(per_task, key=per_task.__getitem__)
    X = np.asarray(emb.embed(test.prompts))
    pred = only_observed(router.predict(X), test)
    tasks = np.asarray(test.tasks)
    costs, scores = np.nan_to_num(test.costs), np.nan_to_num(test.scores)
    runs: list[dict[str, Any]] = []
    jobs = [(drift, seed) for drift in ("mix", "length") for seed in range(args.seeds)]
    for drift, seed in track(jobs, description="replaying", console=console):
        rng = np.random.default_rng(seed)
        if drift == "mix":
            rows, phase = stream_rows(tasks, heavy, light, args.requests, rng)
            scale = np.ones(len(rows))
        else:
            rows = rng.integers(0, len(test), size=args.requests)
            phase = (np.arange(args.requests) >= args.requests // 2).astype(int)
            scale = np.where(phase == 0, args.short, args.long)
        # what any λ in the controller's range can spend in each half: outside it the target is out of reach
        reach = []
        for p in (0, 1):
            sel = phase == p
            sub = Prediction(pred.models, pred.quality[rows[sel]], pred.cost[rows[sel]], available=pred.available[rows[sel]])
            spend = [float((costs[rows[sel], choose(sub, lam)] * scale[sel]).mean()) for lam in (lam0 / 100, lam0 * 100)]
            reach.append([spend[1] / target, spend[0] / target])
        for mode in MODES:
            out = asyncio.run(replay(pred, calib, costs, scores, rows, scale, target, mode))
            runs.append(
                {
                    "drift": drift,
                    "seed": seed,
                    "mode": mode,
                    "dev_pct": signed_dev(out["cost"], phase, target, args.settle),
                    "quality": float(out["score"].mean()),
                    "mean_cost": float(out["cost"].mean()),
                    "reachable_spend_over_target": reach,
                    "lambda_end_of_phase": [float(out["lam"][phase == p][-1]) for p in (0, 1)],
                }
            )
    summary: dict[str, Any] = {}
    t = Table(
        title=f"route budget modes under drift; target ${target:.6g}/request, λ0 {lam0:.4g} "
        f"(mix: {light} → {heavy}; length: ×{args.short} → ×{args.long})"
    )
    for col in (
        "drift",
        "mode",
        "worst settled |dev|",
        "settled dev per half (mean of seeds)",
        "worst overspend",
        "mean quality",
        "mean cost $",
    ):
        t.add_column(col)
    for drift in ("mix", "length"):
        for mode in MODES:
            rs = [r for r in runs if r["drift"] == drift and r["mode"] == mode]
            devs = np.array([r["dev_pct"] for r in rs])
            reach = np.array([r["reachable_spend_over_target"] for r in rs])
            s = {
                "worst_abs_dev_pct": float(np.abs(devs).max()),
                "mean_dev_pct": devs.mean(axis=0).tolist(),
                "reachable_pct_per_half": [
                    [float((reach[:, p, 0].max() - 1) * 100), float((reach[:, p, 1].min() - 1) * 100)] for p in (0, 1)
                ],
                "worst_overspend_pct": float(max(0.0, devs.max())),
                "quality": float(np.mean([r["quality"] for r in rs])),
                "mean_cost": float(np.mean([r["mean_cost"] for r in rs])),
            }
            summary[f"{drift}/{mode}"] = s
            t.add_row(
                drift,
                mode,
                f"{s['worst_abs_dev_pct']:.1f}%",
                " / ".join(f"{v:+.1f}%" for v in s["mean_dev_pct"]),
                f"{s['worst_overspend_pct']:.1f}%",
                f"{s['quality']:.4f}",
                f"{s['mean_cost']:.6g}",
            )
    console.print(t)
    for drift in ("mix", "length"):
        rr = summary[f"{drift}/pi"]["reachable_pct_per_half"]
        console.print(
            f"{drift}: spend reachable within λ0/100..λ0·100, per half (worst seed): "
            + " / ".join(f"{lo:+.1f}% .. {hi:+.1f}%" for lo, hi in rr)
        )
    holds = {m: all(summary[f"{d}/{m}"]["worst_abs_dev_pct"] <= GOAL_PCT for d in ("mix", "length")) for m in MODES}
    candidates = [m for m in ("tighten", "pi") if holds[m]] or ["tighten", "pi"]
    choice = min(candidates, key=lambda m: max(summary[f"{d}/{m}"]["worst_overspend_pct"] for d in ("mix", "length")))
    console.print(f"holds ±{GOAL_PCT:.0f}% on both drifts: {holds}; suggested default: [bold]{choice}[/bold]")
    doc = {
        "table": args.table,
        "target": target,
        "lambda_start": lam0,
        "requests": args.requests,
        "settle": args.settle,
        "seeds": args.seeds,
        "phases": {"mix": [light, heavy], "length": [args.short, args.long]},
        "goal_pct": GOAL_PCT,
        "summary": summary,
        "holds_target": holds,
        "suggested_default": choice,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
