"""How much feedback the bandit's model needs: its ridge statistics fitted from chosen outcome designs.

``bench/bandit_replay.py`` measures the bandit after 2,000 requests, one score each, against offline routers
trained on the *full* outcomes of the same 2,000 prompts (every model's score, 9 or 11 per prompt). This
script separates the two things the bandit lacks, the adaptive choice of which outcome to observe and the
number of outcomes, by fitting the bandit's own model (its clusters, its per-arm ridge pooled towards the
average arm; ``BanditRouter`` with default settings) from fixed designs of the same stream:

- ``full``: every model's outcome on every stream prompt (what the offline routers see);
- ``random_1`` / ``random_2`` / ``random_4``: 1, 2 or 4 uniformly random models' outcomes per prompt
  (``random_1`` is as many outcomes as the bandit gets, without its adaptivity);
- ``full_on_n_over_k``: every model's outcome on ``n / K`` prompts (again as many outcomes as the bandit);
- ``bandit``: the bandit's own online pass (one adaptively chosen outcome per prompt), as in the replay.

Each fitted model is then run as a greedy policy at the replay's λ and read like the replay reads the
bandit: its quality against the best offline router's (``knn``, ``profile``, trained on the stream's full
outcomes) cost/quality hull at the same mean cost, in points. Read on **validation** (the train prompts not
in the stream: no test prompt is used to decide anything) and on the **test** split (the replay's yardstick).

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bandit_information.py \
        [--seeds 10] [--requests 2000] [--tables routerbench,dcrouter] [--json bench/results/bandit_information.json]

JSON: ``{TABLE: {designs: {DESIGN: {outcomes, val_gap_points, val_gap_sd, test_gap_points, test_gap_sd,
per_seed}}, seeds, requests, lambda}}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from bandit_replay import TABLES, crossfit_predictions, operating_lambda, replay, write_results

HERE = Path(__file__).resolve().parent
DESIGNS = ("full", "random_1", "random_2", "random_4", "full_on_n_over_k", "bandit")


def design_pairs(design: str, n: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The (prompt, model) outcomes a fixed design observes on a stream of ``n`` prompts and ``k`` models."""
    if design == "full":
        return [(i, j) for i in range(n) for j in range(k)]
    if design == "full_on_n_over_k":
        return [(i, j) for i in range(n // k) for j in range(k)]
    m = int(design.split("_")[1])
    return [(i, int(j)) for i in range(n) for j in rng.choice(k, m, replace=False)]


def measure(
    train: Any, test: Any, Xtr_all: np.ndarray, Xte: np.ndarray, n: int, seeds: int, on_seed: Any = None
) -> dict[str, Any]:
    """Every design on ``seeds`` streams of ``n`` train prompts; gaps read on the rest of train and on ``test``.

    ``Xtr_all`` / ``Xte`` are the embeddings of ``train`` / ``test`` in row order. The stream of seed ``s``
    is the replay's (``bench/bandit_replay.py``): the first ``n`` of a permutation seeded by ``s``.
    """
    from turnout.evaluation.curves import only_observed, sweep
    from turnout.evaluation.metrics import hull_quality_at, nondecreasing_hull
    from turnout.routing import choose, create_router
    from turnout.routing.bandit import BanditRouter

    rows_by: dict[str, list[dict[str, float]]] = {d: [] for d in DESIGNS}
    lams = []
    for seed in range(seeds):
        perm = np.random.default_rng(seed).permutation(len(train))  # the replay's stream for this seed
        stream, X = train.subset(perm[:n]), Xtr_all[perm[:n]]
        val, Xv = train.subset(perm[n:]), Xtr_all[perm[n:]]
        # λ as the replay chooses it: offline knn, cross-fitted on the stream, spends COST_SHARE of the best model's cost
        lam = operating_lambda(stream, *crossfit_predictions("knn", X, stream, 5, seed))
        lams.append(lam)
        hulls: dict[str, list[np.ndarray]] = {"val": [], "test": []}
        for name in ("knn", "profile"):
            router = create_router(name).fit(stream.to_training_data(X))
            for split, tab, Xs in (("val", val, Xv), ("test", test, Xte)):
                curve = sweep(only_observed(router.predict(Xs), tab), tab)["curve"]
                hulls[split].append(nondecreasing_hull(np.asarray(curve, dtype=float)))
        k = len(stream.models)
        rng = np.random.default_rng(seed + 99)
        for design in DESIGNS:
            if design == "bandit":
                bandit, outcomes = replay(X, stream, lam, seed, Xtr_all)["bandit"], n
            else:
                bandit = BanditRouter(seed=seed, models=list(stream.models), dim=X.shape[1])
                bandit.fit_projection(Xtr_all)  # unlabelled prompts, as in the replay
                Z = bandit.features(X)
                outcomes = 0
                for i, j in design_pairs(design, n, k, rng):
                    if not np.isnan(stream.scores[i, j]):
                        bandit.update_features(Z[i], j, float(stream.scores[i, j]), float(stream.costs[i, j]))
                        outcomes += 1
            row: dict[str, float] = {"seed": seed, "outcomes": outcomes}
            for split, tab, Xs in (("val", val, Xv), ("test", test, Xte)):
                idx = choose(only_observed(bandit.predict(Xs), tab), lam)
                r = np.arange(len(tab))
                q, c = float(np.mean(tab.scores[r, idx])), float(np.mean(tab.costs[r, idx]))
                best = float(np.nanmax([hull_quality_at(h, c) for h in hulls[split]]))
                row[f"{split}_gap_points"] = (best - q) * 100
            rows_by[design].append(row)
        if on_seed is not None:
            on_seed()
    designs = {}
    for design, rows in rows_by.items():
        entry: dict[str, Any] = {"outcomes": float(np.mean([r["outcomes"] for r in rows]))}
        for split in ("val", "test"):
            g = np.array([r[f"{split}_gap_points"] for r in rows])
            entry[f"{split}_gap_points"] = float(g.mean())
            entry[f"{split}_gap_sd"] = float(g.std(ddof=1)) if len(g) > 1 else None
        entry["per_seed"] = rows
        designs[design] = entry
    return {"designs": designs, "seeds": seeds, "requests": n, "lambda": float(np.mean(lams))}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import progress_bar
    from turnout.evaluation.splits import split_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="routerbench,dcrouter")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    ap.add_argument("--json", default=str(HERE / "results" / "bandit_information.json"))
    ap.add_argument("--plot", default=str(HERE / "results" / "bandit_information.png"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # the loaders' notes on the shared tables are known
    console = Console(width=max(Console().width, 140))
    emb = create_embedder(args.embedder, threads=os.cpu_count() or 1, progress=False)
    out: dict[str, Any] = {}
    for ds in args.tables.split(","):
        train, test = split_table(load_table(TABLES[ds]))
        Xtr_all, Xte = np.asarray(emb.embed(train.prompts)), np.asarray(emb.embed(test.prompts))
        n = min(args.requests, len(train) - 100)  # at least 100 train prompts are left to validate on
        with progress_bar() as bar:
            task = bar.add_task(f"{ds}: {args.seeds} seeds × {len(DESIGNS)} designs", total=args.seeds)
            out[ds] = measure(train, test, Xtr_all, Xte, n, args.seeds, on_seed=partial(bar.advance, task))

    title = f"the bandit's model fitted from outcome designs on {args.requests} prompts ({args.seeds} seeds)"
    t = Table(title=title + ": gap to offline at equal cost, points")
    for col in ("table", "design", "outcomes", "validation gap (mean ± sd)", "test gap (mean ± sd)"):
        t.add_column(col)
    for ds, r in out.items():
        for design, e in r["designs"].items():
            t.add_row(
                ds,
                design,
                f"{e['outcomes']:.0f}",
                f"{e['val_gap_points']:.2f} ± {e['val_gap_sd'] or 0:.2f}",
                f"{e['test_gap_points']:.2f} ± {e['test_gap_sd'] or 0:.2f}",
            )
    console.print(t)
    write_results(console, out, args.json, args.plot, partial(_plot, out))
    return 0


def _plot(out: dict[str, Any], path: Path) -> None:
    """Gap against the number of outcomes: random designs as a line, full-on-n/K and the bandit as points."""
    from turnout.evaluation.plot import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, len(out), figsize=(6 * len(out), 5.4), squeeze=False)
    for ax, (ds, r) in zip(axes[0], out.items()):
        d = r["designs"]
        marks = (
            (["random_1", "random_2", "random_4", "full"], {"marker": "o"}, "1, 2, 4 random models per prompt, then all"),
            (["bandit"], {"marker": "*", "ms": 14}, "the bandit (adaptive, online)"),
            (["full_on_n_over_k"], {"marker": "s", "mfc": "none"}, "all models on n/K prompts"),
        )
        for split, colour in (("val", "tab:blue"), ("test", "tab:orange")):
            name = "validation" if split == "val" else "test"
            for keys, style, what in marks:
                xs, ys = [d[k]["outcomes"] for k in keys], [d[k][f"{split}_gap_points"] for k in keys]
                ax.plot(xs, ys, color=colour, label=f"{name}: {what}", **style)
        ax.axhline(2.0, color="grey", ls="--", lw=0.8, label="goal: 2 points")
        ax.set_xscale("log")
        ax.set_xlabel("outcomes the model was fitted from")
        ax.set_ylabel("gap to the offline routers at equal cost (points)")
        ax.set_title(f"{ds}: mean of {r['seeds']} seeds, stream of {r['requests']} prompts")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
