"""The embedder quality gate: does a cheaper embedder keep every learned router's AIQ within 0.005 of MiniLM's?

For each table (shared train/test split, test prompts seen in train dropped, as
``turnout eval`` does) and each embedder, every learned router is fitted on the
training prompts' vectors and swept over λ on the test prompts, through the
same evaluation functions ``turnout eval`` uses (``turnout.evaluation.runner``).
A candidate embedder passes only if every (table, router) |ΔAIQ| against
MiniLM is <= ``--tolerance``. Each Δ also gets a paired 95% bootstrap interval
(the same test resamples for both embedders).

Served: a router trained on MiniLM vectors (every artifact saved so far) and
fed the candidate's vectors at serving time, without retraining: the routers
fitted on MiniLM predict from the candidate's test vectors ("served Δ"; only
for candidates of MiniLM's dimension). That is the swap a gateway makes when a
route's embedder changes under an existing artifact.

The noise floor: the same MiniLM vectors with every seeded router refitted
with ``seed=1`` (bt has no seed; the ensemble is composed of the seed-1
members). A Δ no larger than that is within the routers' own training noise.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false nice -n 5 \
        python bench/embedder_quality.py [--tables A.parquet B.parquet] [--embedders minilm-int8,minilm-static]
        [--routers knn,mlp,mf,bt,graph,profile,ensemble] [--bootstrap 200] [--json OUT]

Embeddings go through the on-disk cache (``~/.cache/turnout/embeddings``), so a
rerun only refits routers. Prints a rich table and writes
bench/results/embedder_quality.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))
DEFAULT_TABLES = (DATA / "routerbench" / "routerbench.parquet", DATA / "dcrouter" / "dcrouter.parquet")
LEARNED = "knn,mlp,mf,bt,graph,profile,ensemble"
REFERENCE = "minilm"
SEED_FLOOR = "minilm@seed1"


def fit_routers(routers: list[str], data: Any, seed: int) -> dict[str, Any]:
    """Every router in ``routers`` fitted on ``data``; seeded routers get ``seed``; an ensemble is composed
    of the members fitted here (as ``turnout eval`` composes it, so seed 0 gives ``turnout eval``'s routers)."""
    from turnout.routing.ensemble import EnsembleRouter, default_members
    from turnout.routing.registry import create_router, router_class

    fitted: dict[str, Any] = {}

    def one(name: str) -> Any:
        if name not in fitted:
            takes_seed = "seed" in inspect.signature(router_class(name).__init__).parameters
            fitted[name] = create_router(name, **({"seed": seed} if seed and takes_seed else {})).fit(data)
        return fitted[name]

    out = {}
    for name in routers:
        if name == "ensemble":
            out[name] = EnsembleRouter.compose([one(m) for m in default_members()], data)
        else:
            out[name] = one(name)
    return out


def evaluate_table(path: Path, embedders: list[str], routers: list[str], bootstrap: int, bar: Any) -> dict[str, Any]:
    """AIQ (and per-resample AIQ) of every router under every embedder on one table."""
    from turnout.embed import create_embedder
    from turnout.evaluation.bootstrap import aiq_resamples, bootstrap_weights
    from turnout.evaluation.curves import curve_metrics
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import align_models, baselines, drop_untrained_models, evaluate_router
    from turnout.evaluation.splits import drop_seen_prompts, split_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loaders' notes about the data are not this bench's subject
        table = load_table(path)
    train, test = split_table(table, 0.25, 0)
    test, dropped = drop_seen_prompts(train, test)
    train, _ = drop_untrained_models(train)
    test, _ = align_models(train, test)
    base = baselines(test)
    weights = bootstrap_weights(len(test), bootstrap, 0) if bootstrap else None
    res: dict[str, Any] = {
        "table": str(path),
        "n_train": len(train),
        "n_test": len(test),
        "test_prompts_seen_in_train_dropped": dropped,
        "embedders": {},
    }
    samples: dict[tuple[str, str], np.ndarray] = {}
    vectors: dict[str, np.ndarray] = {}
    reference_routers: dict[str, Any] = {}
    for label in [REFERENCE, SEED_FLOOR, *embedders]:
        emb_name, seed = (REFERENCE, 1) if label == SEED_FLOOR else (label, 0)
        bar.update(bar.task_ids[0], description=f"{path.stem}: embedding with {emb_name}")
        t0 = time.perf_counter()
        emb = create_embedder(emb_name, threads=os.cpu_count() or 1)
        Xtr, Xte = emb.embed(train.prompts), emb.embed(test.prompts)
        embed_s = time.perf_counter() - t0
        vectors[label] = Xte
        bar.update(bar.task_ids[0], description=f"{path.stem}: fitting {len(routers)} routers on {label}")
        t0 = time.perf_counter()
        fitted = fit_routers(routers, train.to_training_data(Xtr), seed)
        fit_s = time.perf_counter() - t0
        if label == REFERENCE:
            reference_routers = fitted
        block: dict[str, Any] = {
            "embedder": emb.name,
            "dim": emb.dim,
            "embed_s": round(embed_s, 2),
            "fit_s": round(fit_s, 2),
            "routers": {},
        }
        for name, router in fitted.items():
            r = evaluate_router(router, None, test, None, Xte, fit_s=0.0)
            block["routers"][name] = {"aiq": curve_metrics(r["curve"], base)["aiq"]}
            if weights is not None:
                samples[(label, name)] = aiq_resamples(r["_choices"], test, weights)
            # the reference runs first; a candidate of another width cannot feed routers fitted on its vectors
            if label not in (REFERENCE, SEED_FLOOR) and Xte.shape[1] == vectors[REFERENCE].shape[1]:
                served = evaluate_router(reference_routers[name], None, test, None, Xte, fit_s=0.0)
                block["routers"][name]["served_aiq"] = curve_metrics(served["curve"], base)["aiq"]
                if weights is not None:
                    samples[(label + "@served", name)] = aiq_resamples(served["_choices"], test, weights)
        res["embedders"][label] = block
        bar.advance(bar.task_ids[0])
    ref = res["embedders"][REFERENCE]["routers"]
    for label, block in res["embedders"].items():
        if label == REFERENCE:
            continue
        same_dim = vectors[label].shape[1] == vectors[REFERENCE].shape[1]
        if same_dim:
            cos = np.sum(vectors[label] * vectors[REFERENCE], axis=1)
            block["cosine_to_minilm"] = {"min": float(cos.min()), "mean": float(cos.mean())}
        for name, r in block["routers"].items():
            r["delta"] = r["aiq"] - ref[name]["aiq"]
            if "served_aiq" in r:
                r["served_delta"] = r["served_aiq"] - ref[name]["aiq"]
            if weights is not None:
                r["delta_ci95"] = _paired_ci(samples[(label, name)], samples[(REFERENCE, name)])
                if (label + "@served", name) in samples:
                    r["served_delta_ci95"] = _paired_ci(samples[(label + "@served", name)], samples[(REFERENCE, name)])
    return res


def _paired_ci(a: np.ndarray, b: np.ndarray) -> list[float]:
    """95% interval of ``a - b`` over the shared resamples (NaN resamples left out)."""
    d = a - b
    d = d[np.isfinite(d)]
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]


def verdicts(results: list[dict[str, Any]], tolerance: float) -> dict[str, dict[str, Any]]:
    """Per candidate embedder: the largest |ΔAIQ| over every (table, router), and whether it is within tolerance.

    ``passes`` is the gate as the issue states it (every |Δ| <= tolerance); ``passes_no_loss``
    only asks that no router lose more than the tolerance (a gain never fails it).
    """
    out: dict[str, dict[str, Any]] = {}
    for res in results:
        for label, block in res["embedders"].items():
            if label == REFERENCE:
                continue
            for name, r in block["routers"].items():
                where = f"{Path(res['table']).stem}/{name}"
                for key, delta in ((label, r["delta"]), (f"{label}@served", r.get("served_delta"))):
                    if delta is None:
                        continue
                    v = out.setdefault(key, {"max_abs_delta": 0.0, "worst": None, "largest_loss": 0.0, "over": []})
                    if abs(delta) > v["max_abs_delta"]:
                        v["max_abs_delta"], v["worst"] = abs(delta), where
                    v["largest_loss"] = max(v["largest_loss"], -delta)
                    if abs(delta) > tolerance:
                        v["over"].append(f"{where} ({delta:+.4f})")
    for v in out.values():
        v["passes"] = not v["over"]
        v["passes_no_loss"] = v["largest_loss"] <= tolerance
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", type=Path, default=list(DEFAULT_TABLES))
    ap.add_argument("--embedders", default="minilm-int8,minilm-static", help="candidates, compared with minilm")
    ap.add_argument("--routers", default=LEARNED)
    ap.add_argument("--bootstrap", type=int, default=200, help="test resamples for the paired ΔAIQ intervals (0: none)")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "embedder_quality.json")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    missing = [str(t) for t in args.tables if not t.exists()]
    if missing:
        sys.exit(f"table(s) not found: {', '.join(missing)} (set TURNOUT_DATA, or pass --tables)")
    embedders = [e for e in args.embedders.split(",") if e]
    routers = [r for r in args.routers.split(",") if r]
    console = Console(width=160)
    results = []
    t_start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        bar.add_task("starting", total=len(args.tables) * (len(embedders) + 2))
        for path in args.tables:
            results.append(evaluate_table(path, embedders, routers, args.bootstrap, bar))

    labels = [SEED_FLOOR, *embedders]
    first = results[0]["embedders"]
    served = [e for e in embedders if "served_delta" in next(iter(first[e]["routers"].values()))]
    table = Table(
        title=f"AIQ per router and embedder (Δ against {REFERENCE}; paired 95% CI over "
        f"{args.bootstrap} test resamples; tolerance ±{args.tolerance})"
    )
    table.add_column("table")
    table.add_column("router")
    table.add_column(REFERENCE, justify="right")
    for label in labels:
        table.add_column(f"Δ {label}", justify="right")
    for label in served:
        table.add_column(f"served Δ {label}", justify="right")
    for res in results:
        emb = res["embedders"]
        for name in routers:
            cells = []
            for label, key in [*((lb, "delta") for lb in labels), *((lb, "served_delta") for lb in served)]:
                r = emb[label]["routers"][name]
                ci = r.get(f"{key}_ci95")
                mark = "" if label == SEED_FLOOR or abs(r[key]) <= args.tolerance else " ✗"
                cells.append(f"{r[key]:+.4f}{mark}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))
            table.add_row(Path(res["table"]).stem, name, f"{emb[REFERENCE]['routers'][name]['aiq']:.4f}", *cells)
    console.print(table)
    verdict = verdicts(results, args.tolerance)
    for label in [*embedders, *(f"{e}@served" for e in served)]:
        v = verdict[label]
        state = "[green]passes[/green]" if v["passes"] else "[red]fails[/red]"
        console.print(
            f"{label}: {state} (largest |ΔAIQ| {v['max_abs_delta']:.4f} at {v['worst']}"
            + (f"; over {args.tolerance}: {', '.join(v['over'])}" if v["over"] else "")
            + f"; largest loss {v['largest_loss']:+.4f}: "
            + ("no router loses more than the tolerance" if v["passes_no_loss"] else "a router loses more")
            + ")"
        )
    floor = verdict[SEED_FLOOR]
    console.print(
        f"noise floor (MiniLM, routers refitted with seed 1): largest |ΔAIQ| {floor['max_abs_delta']:.4f} at {floor['worst']}"
    )
    out = {
        "tolerance": args.tolerance,
        "bootstrap": args.bootstrap,
        "reference": REFERENCE,
        "routers": routers,
        "results": results,
        "verdicts": verdict,
        "total_s": round(time.perf_counter() - t_start, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
