"""Routing at scale: fit time, decision latency and memory of every learned router on big tables.

The shared tables are small (2–6k prompts, 9–11 models); tables users bring can be far bigger
(RouterBench in full is 36k prompts, EmbedLLM-style tables have 100+ models). This bench builds
synthetic tables of a given size — 384-dimensional prompt features like MiniLM's, task
clusters, 0/1 outcomes from latent prompt × model skills, 10% of cells missing, per-prompt
costs — and for each router, each in its own subprocess so its peak memory is its own,
measures: fit seconds, one routing decision (predict one prompt + the policy, p50 and p95 over
200 held-out prompts), batch prediction throughput, peak RSS, and the held-out Brier score
(so a speed-up that broke predictions would show). Prints a rich table and writes
bench/results/routing_scale.json.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 python bench/routing_scale.py \\
        [--sizes 2000x11,30000x60] [--routers knn,mlp,mf,bt,graph,profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DIM = 384
HELD_OUT = 200


def synthetic(n: int, m: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n + HELD_OUT prompts × m models: features, 0/1 scores (10% missing), costs, task labels."""
    rng = np.random.default_rng(seed)
    tasks = 20
    centres = rng.normal(size=(tasks, DIM))
    t = rng.integers(0, tasks, n + HELD_OUT)
    X = (centres[t] + 0.8 * rng.normal(size=(n + HELD_OUT, DIM))).astype(np.float32)
    skill = rng.normal(size=(DIM, m)) / np.sqrt(DIM)
    logits = X @ skill + np.linspace(-1.0, 1.5, m)
    S = (rng.random((n + HELD_OUT, m)) < 1 / (1 + np.exp(-logits))).astype(float)
    S[rng.random(S.shape) < 0.1] = np.nan
    C = np.exp(np.linspace(-2, 3, m))[None] * rng.uniform(0.5, 1.5, S.shape) * 1e-4
    C[np.isnan(S)] = np.nan
    return {"X": X, "S": S, "C": C, "tasks": t}


def one(router: str, n: int, m: int) -> dict[str, Any]:
    """Run in a subprocess: fit ``router`` on an n × m table and time it."""
    from turnout.routing import Prediction, TrainingData, choose, create_router

    d = synthetic(n, m)
    data = TrainingData(
        X=d["X"][:n],
        scores=d["S"][:n],
        costs=d["C"][:n],
        models=[f"m{j}" for j in range(m)],
        tasks=[f"t{x}" for x in d["tasks"][:n]],
    )
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = create_router(router)
    t0 = time.perf_counter()
    r.fit(data)
    fit_s = time.perf_counter() - t0
    Xh, Sh = d["X"][n:], d["S"][n:]
    lat = []
    for i in range(HELD_OUT):
        t = time.perf_counter()
        p = r.predict(Xh[i : i + 1])
        choose(Prediction(p.models, p.quality, p.cost), 0.0)
        lat.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    q = r.predict(Xh).quality
    batch_s = time.perf_counter() - t
    obs = ~np.isnan(Sh)
    return {
        "router": router,
        "n": n,
        "m": m,
        "fit_s": fit_s,
        "p50_ms": float(np.median(lat)),
        "p95_ms": float(np.percentile(lat, 95)),
        "batch_per_s": HELD_OUT / batch_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_fit_mb": base_rss / 1024,
        "brier": float(((q - np.nan_to_num(Sh)) ** 2)[obs].mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000x11,30000x60", help="comma-separated PROMPTSxMODELS")
    ap.add_argument("--routers", default="knn,mlp,mf,bt,graph,profile")
    ap.add_argument("--out", default=str(HERE / "results" / "routing_scale.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: ROUTER:N:M, run in the subprocess
    args = ap.parse_args(argv)
    if args.one:
        router, n, m = args.one.split(":")
        print(json.dumps(one(router, int(n), int(m))))
        return 0

    from rich.progress import Progress
    from rich.table import Table

    from turnout.cli._ui import console

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    routers = [r for r in args.routers.split(",") if r]
    rows: list[dict[str, Any]] = []
    con = console()
    with Progress(console=con) as bar:
        task = bar.add_task("routing at scale", total=len(sizes) * len(routers))
        for n, m in sizes:
            for router in routers:
                bar.update(task, description=f"{router} on {n}×{m}")
                res = subprocess.run(
                    [sys.executable, __file__, "--one", f"{router}:{n}:{m}"],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
                )
                if res.returncode != 0:
                    con.print(f"[red]{router} on {n}×{m} failed[/red]\n{res.stderr[-2000:]}")
                    rows.append({"router": router, "n": n, "m": m, "error": res.stderr[-500:]})
                else:
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                    r = rows[-1]
                    bar.console.log(f"{router} {n}×{m}: fit {r['fit_s']:.1f} s, p50 {r['p50_ms']:.2f} ms")
                bar.advance(task)
    t = Table(title=f"learned routers on synthetic tables ({DIM}-d features, 10% cells missing)")
    for col in ["router", "prompts × models", "fit s", "p50 ms", "p95 ms", "batch /s", "peak RSS MB", "Brier"]:
        t.add_column(col, justify="left" if col == "router" else "right", no_wrap=True)
    for r in rows:
        if "error" in r:
            t.add_row(r["router"], f"{r['n']}×{r['m']}", "failed", "", "", "", "", "")
            continue
        t.add_row(
            r["router"],
            f"{r['n']}×{r['m']}",
            f"{r['fit_s']:.1f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['batch_per_s']:,.0f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['brier']:.4f}",
        )
    con.print(t)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "dim": DIM,
                "held_out": HELD_OUT,
                "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
            },
            indent=2,
        )
    )
    con.print(f"wrote {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
