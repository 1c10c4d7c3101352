"""Bandit replay: the contextual bandit router learning online from RouterBench and DCRouter traffic.

Per table and seed, 2,000 prompts of the shared *train* split arrive in random order. For each, the
bandit (``turnout.routing.bandit.BanditRouter``, default settings, cold start) picks a model, the table's
score for that model is the feedback and its cost the actual cost, and the bandit updates. Reward is
``score − λ·cost``. λ is one operating point per table, chosen on the train prompts only: the λ at which
offline routers, cross-fitted on the 2,000 prompts, spend half the best single model's mean cost.

Measured:

- **cumulative regret** (reward) against the best fixed model in hindsight and against the offline
  routers, cross-fitted (5 folds) on the same 2,000 prompts (each prompt's choice comes from a router
  trained on the other folds' full outcomes), as a PNG curve;
- **after 2,000 requests** (the goal): the frozen bandit's greedy policy on the *test* split, against each
  offline router trained on the 2,000 prompts' full outcomes, *at equal cost*: the offline router's λ is
  swept on test and its cost/quality hull read at the bandit's realised mean cost (what ``turnout eval``
  calls quality at a cost; mixing two λ values reaches any point of the hull).
  ``gap_points_at_2000`` = (best offline quality at that cost − bandit quality) × 100, mean over seeds.
  Goal: ≤ 2 points.
- **what the yardstick costs any single policy:** each offline router run exactly as the bandit is (frozen,
  one policy at the same λ) and read against the same yardstick (``offline_policy_gap_points``): one
  operating point measured on a few hundred test prompts, against the best of several routers' test hulls
  (each the upper envelope of many λ points read on those same prompts), is behind by construction;
- **symmetric:** the bandit's own test hull (its predictions swept over λ) against the offline routers' at
  the same cost (``hull_gap_points``).

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bandit_replay.py \
        [--requests 2000] [--seeds 5] [--offline knn,profile] [--json bench/results/bandit_replay.json] \
        [--plot bench/results/bandit_regret.png]

JSON: ``{TABLE: {gap_points_at_2000, gap_points_se, hull_gap_points, offline_policy_gap_points, bandit_quality,
offline_quality, mean_cost, ...}}`` plus details per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("TURNOUT_DATA", HERE.parent.parent / "shared" / "data"))
TABLES = {"routerbench": DATA / "routerbench" / "routerbench.parquet", "dcrouter": DATA / "dcrouter" / "dcrouter.parquet"}
GOAL_POINTS = 2.0
#: share of the best single model's mean cost the operating point spends (offline routers, on train)
COST_SHARE = 0.5


def crossfit_predictions(name: str, X: np.ndarray, table: Any, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's predicted quality and cost from ``name`` fitted on the other folds (full outcomes)."""
    from turnout.routing import create_router

    n, K = table.scores.shape
    fold = np.random.default_rng(seed).permutation(n) % folds
    Q, C = np.empty((n, K)), np.empty((n, K))
    for f in range(folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        router = create_router(name).fit(table.subset(tr).to_training_data(X[tr]))
        p = router.predict(X[te])
        Q[te], C[te] = p.quality, p.cost
    return Q, C


def operating_lambda(stream: Any, Q: np.ndarray, C: np.ndarray) -> float:
    """The replay's λ: where the cross-fitted predictions ``Q``, ``C`` spend COST_SHARE of the best model's mean cost."""
    from turnout.routing import Prediction, calibrate_lambda

    best_single = int(np.nanargmax(np.nanmean(stream.scores, axis=0)))
    target = COST_SHARE * float(np.nanmean(stream.costs[:, best_single]))
    return float(calibrate_lambda(Prediction(list(stream.models), Q, C, available=~np.isnan(stream.scores)), target_cost=target))


def replay(
    X: np.ndarray, table: Any, lam: float, seed: int, Xproj: np.ndarray, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One online pass of a cold-start bandit over ``table``'s prompts in order; returns what it did."""
    from turnout.routing.bandit import BanditRouter

    bandit = BanditRouter(seed=seed, models=list(table.models), dim=X.shape[1], **(params or {}))
    bandit.fit_projection(Xproj)  # unlabelled prompts only: no outcome is used
    rng = np.random.default_rng(10_000 + seed)
    n = len(table)
    arms, probs, explored = np.empty(n, dtype=int), np.empty(n), np.empty(n, dtype=bool)
    t0 = time.perf_counter()
    for t in range(n):
        c = bandit.choose(X[t], costs=None, lam=lam, rng=rng, available=~np.isnan(table.scores[t]))
        q, cost = float(table.scores[t, c.arm]), float(table.costs[t, c.arm])
        bandit.update_features(c.features, c.arm, q, cost)
        arms[t], probs[t], explored[t] = c.arm, c.propensity, c.explored
    elapsed = time.perf_counter() - t0
    rows = np.arange(n)
    return {
        "bandit": bandit,
        "arms": arms,
        "quality": table.scores[rows, arms],
        "cost": table.costs[rows, arms],
        "propensity": probs,
        "explored": explored,
        "ms_per_request": 1000 * elapsed / n,
    }


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.embed import create_embedder
    from turnout.evaluation.curves import only_observed, sweep
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.metrics import hull_quality_at, nondecreasing_hull
    from turnout.evaluation.runner import progress_bar
    from turnout.evaluation.splits import split_table
    from turnout.routing import Prediction, choose, create_router

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="routerbench,dcrouter")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--offline", default="knn,profile", help="offline routers to compare with (numpy routers are quick)")
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    ap.add_argument("--json", default=str(HERE / "results" / "bandit_replay.json"))
    ap.add_argument("--plot", default=str(HERE / "results" / "bandit_regret.png"))
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="a BanditRouter setting other than its default, repeatable (e.g. max_explore=0.2)",
    )
    args = ap.parse_args(argv)
    from turnout.cli.train import parse_params

    params = parse_params(args.param)
    warnings.simplefilter("ignore", UserWarning)  # the loaders' notes on the shared tables are known
    console = Console(width=max(Console().width, 150))
    offline = [r for r in args.offline.split(",") if r]
    emb = create_embedder(args.embedder, threads=os.cpu_count() or 1, progress=False)
    out: dict[str, Any] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for ds in args.tables.split(","):
        train, test = split_table(load_table(TABLES[ds]))
        Xtr_all, Xte = np.asarray(emb.embed(train.prompts)), np.asarray(emb.embed(test.prompts))
        n = min(args.requests, len(train))
        per_seed: list[dict[str, Any]] = []
        regret_fixed, regret_off = [], []
        with progress_bar() as bar:
            task = bar.add_task(f"{ds}: {args.seeds} seeds × {n} requests", total=args.seeds)
            for seed in range(args.seeds):
                rows = np.random.default_rng(seed).permutation(len(train))[:n]  # the stream, in arrival order
                stream, X = train.subset(rows), Xtr_all[rows]
                # the operating point, on train only: offline routers cross-fitted on the stream spend COST_SHARE
                # of the best single model's mean cost
                cross = {name: crossfit_predictions(name, X, stream, 5, seed) for name in offline}
                lam = operating_lambda(stream, *cross[offline[0]])
                run = replay(X, stream, lam, seed, Xtr_all, params)
                reward = run["quality"] - lam * run["cost"]
                fixed = np.nanmean(stream.scores - lam * stream.costs, axis=0)
                best_fixed = int(np.argmax(fixed))
                regret_fixed.append(np.cumsum(stream.scores[:, best_fixed] - lam * stream.costs[:, best_fixed] - reward))
                off_reward = {}
                for name, (Q, C) in cross.items():
                    idx = choose(Prediction(list(stream.models), Q, C, available=~np.isnan(stream.scores)), lam)
                    off_reward[name] = stream.scores[np.arange(n), idx] - lam * stream.costs[np.arange(n), idx]
                best_off = max(off_reward, key=lambda k: off_reward[k].sum())
                regret_off.append(np.cumsum(off_reward[best_off] - reward))
                # after the stream: the frozen bandit's greedy policy on test, against offline routers at its cost
                bandit = run["bandit"]
                bpred = only_observed(bandit.predict(Xte), test)
                bidx = choose(bpred, lam)
                rows_te = np.arange(len(test))
                b_q = float(np.mean(test.scores[rows_te, bidx]))
                b_c = float(np.mean(test.costs[rows_te, bidx]))
                offline_q: dict[str, float | None] = {}
                hulls, points = [], {}
                for name in offline:
                    router = create_router(name).fit(stream.to_training_data(X))
                    opred = only_observed(router.predict(Xte), test)
                    hull = nondecreasing_hull(np.asarray(sweep(opred, test)["curve"], dtype=float))
                    hulls.append(hull)
                    q = hull_quality_at(hull, b_c)
                    offline_q[name] = None if np.isnan(q) else float(q)
                    oidx = choose(opred, lam)  # the offline router run as the bandit is: one policy at the same λ
                    points[name] = (float(np.mean(test.costs[rows_te, oidx])), float(np.mean(test.scores[rows_te, oidx])))
                valid = [v for v in offline_q.values() if v is not None]
                # the same yardstick applied to the offline routers' own one-λ policies: what reading a single
                # operating point against the best of several routers' test hulls costs any policy
                off_policy_gap = {
                    k: (float(np.nanmax([hull_quality_at(h, c) for h in hulls])) - q) * 100 for k, (c, q) in points.items()
                }
                # symmetric: the bandit's own test hull (its predictions swept over λ) at the same cost
                b_hull = hull_quality_at(nondecreasing_hull(np.asarray(sweep(bpred, test)["curve"], dtype=float)), b_c)
                per_seed.append(
                    {
                        "seed": seed,
                        "lambda": lam,
                        "bandit_quality": b_q,
                        "mean_cost": b_c,
                        "offline_quality": offline_q,
                        "gap_points": (max(valid) - b_q) * 100 if valid else None,
                        "hull_gap_points": (max(valid) - b_hull) * 100 if valid and not np.isnan(b_hull) else None,
                        "offline_policy_gap_points": off_policy_gap,
                        "online": {
                            "bandit_quality": float(run["quality"].mean()),
                            "bandit_cost": float(run["cost"].mean()),
                            "offline_quality": {
                                k: float(
                                    np.mean(
                                        stream.scores[
                                            np.arange(n),
                                            choose(
                                                Prediction(list(stream.models), *cross[k], available=~np.isnan(stream.scores)),
                                                lam,
                                            ),
                                        ]
                                    )
                                )
                                for k in offline
                            },
                            "explored_share": float(run["explored"].mean()),
                            "min_propensity": float(run["propensity"].min()),
                            "regret_vs_best_fixed": float(regret_fixed[-1][-1]),
                            "regret_vs_offline": float(regret_off[-1][-1]),
                            "offline_for_regret": best_off,
                        },
                        "ms_per_request": run["ms_per_request"],
                    }
                )
                bar.advance(task)
        gaps = [s["gap_points"] for s in per_seed if s["gap_points"] is not None]

        def mean(key: str, runs: list[dict[str, Any]] = per_seed) -> float:
            return float(np.mean([s[key] for s in runs]))

        hull_gaps = [s["hull_gap_points"] for s in per_seed if s["hull_gap_points"] is not None]
        policy_gaps = {k: [s["offline_policy_gap_points"][k] for s in per_seed] for k in offline}
        out[ds] = {
            "gap_points_at_2000": float(np.mean(gaps)) if gaps else None,
            "gap_points_sd": float(np.std(gaps, ddof=1)) if len(gaps) > 1 else None,
            "gap_points_se": float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None,
            # the bandit's test hull against the offline routers' at the same cost (both read on their hulls)
            "hull_gap_points": float(np.mean(hull_gaps)) if hull_gaps else None,
            # each offline router run as one policy at the bandit's λ, against the same yardstick as the bandit
            "offline_policy_gap_points": {k: float(np.nanmean(v)) for k, v in policy_gaps.items()},
            "bandit_quality": mean("bandit_quality"),
            "offline_quality": float(np.mean([max(v for v in s["offline_quality"].values() if v is not None) for s in per_seed])),
            "mean_cost": mean("mean_cost"),
            "requests": n,
            "bandit_params": params or "defaults",
            "seeds": args.seeds,
            "offline_routers": offline,
            "lambda": mean("lambda"),
            "goal_points": GOAL_POINTS,
            "passed": bool(gaps) and float(np.mean(gaps)) <= GOAL_POINTS,
            "per_seed": per_seed,
        }
        curves[ds] = {"fixed": np.mean(regret_fixed, axis=0), "offline": np.mean(regret_off, axis=0)}

    t = Table(title=f"bandit replay: {args.requests} requests, {args.seeds} seeds, test-split quality at equal cost")
    for col in (
        "table",
        "λ",
        "bandit quality",
        "offline quality (best of " + ",".join(offline) + ")",
        "mean cost $",
        "gap (points)",
        "goal ≤ 2",
        "hull gap",
        "offline as one policy: gap",
        "online q bandit / offline",
        "explored",
        "regret vs fixed / offline",
    ):
        t.add_column(col)
    for ds, r in out.items():
        on = r["per_seed"]
        oq = np.mean([max(s["online"]["offline_quality"].values()) for s in on])
        t.add_row(
            ds,
            f"{r['lambda']:.4g}",
            f"{r['bandit_quality']:.4f}",
            f"{r['offline_quality']:.4f}",
            f"{r['mean_cost']:.3g}",
            f"{r['gap_points_at_2000']:.2f} ± {r['gap_points_sd'] or 0:.2f}",
            "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]",
            f"{r['hull_gap_points']:.2f}" if r["hull_gap_points"] is not None else "-",
            ", ".join(f"{k} {v:.2f}" for k, v in r["offline_policy_gap_points"].items()),
            f"{np.mean([s['online']['bandit_quality'] for s in on]):.4f} / {oq:.4f}",
            f"{np.mean([s['online']['explored_share'] for s in on]):.1%}",
            f"{np.mean([s['online']['regret_vs_best_fixed'] for s in on]):.1f} / "
            f"{np.mean([s['online']['regret_vs_offline'] for s in on]):.1f}",
        )
    console.print(t)
    write_results(console, out, args.json, args.plot, lambda path: _plot(curves, out, path))
    return 0


def write_results(console: Any, out: dict[str, Any], json_path: str, plot_path: str, plot: Any) -> None:
    """Write ``out`` as JSON to ``json_path`` and, unless ``plot_path`` is empty, ``plot(Path(plot_path))``."""
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(out, indent=2))
    console.print(f"wrote {json_path}")
    if plot_path:
        plot(Path(plot_path))
        console.print(f"wrote {plot_path}")


def _plot(curves: dict[str, dict[str, np.ndarray]], out: dict[str, Any], path: Path) -> None:
    from turnout.evaluation.plot import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for ax, (ds, c) in zip(axes[0], curves.items()):
        t = np.arange(1, len(c["fixed"]) + 1)
        ax.plot(t, c["fixed"], label="vs best fixed model (hindsight)")
        ax.plot(t, c["offline"], label="vs offline router (cross-fitted, full outcomes)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{ds}: λ = {out[ds]['lambda']:.3g}, mean of {out[ds]['seeds']} seeds")
        ax.set_xlabel("requests")
        ax.set_ylabel("cumulative regret (score − λ·cost)")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
