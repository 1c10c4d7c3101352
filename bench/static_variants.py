"""Screening cheaper static-embedder variants against MiniLM before the full quality gate (issue: request pipeline).

The static embedder (``minilm-static``: distilled word-piece vectors, mean-pooled) would take the embedding of an
``auto`` request from ~2.1 ms (MiniLM int8) to ~0.1 ms, enough for ``auto`` ≥ 600 req/s on two cores; it fails
``bench/embedder_quality.py``'s gate on DCRouter ``profile`` (ΔAIQ −0.023 against the gate's ±0.005). This script
screens pooling variants on the two routers that tell them apart fastest (``knn``, ``profile``), on the shared
splits, with the same AIQ as ``turnout eval`` (the hull over the single models' cost range):

* ``base``: the shipped embedder (MiniLM's head-and-tail clip, a plain mean);
* ``tailN``: only the last N word pieces (the question of a few-shot prompt, not its examples);
* ``poswG``: later pieces weigh more (``exp(G · (i − L + 1) / L)``);
* ``…+c``: the mean vector of a generic corpus (the shared guard data's jailbreak and PII texts, not the routing
  tables) subtracted and the rows renormalised, which spreads the cosines out to MiniLM's (mean pairwise cosine on
  DCRouter 0.23 → 0.08, MiniLM's 0.06).

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/static_variants.py \\
        [--variants base,tail64,tail32,posw3,base+c,tail64+c] [--json bench/results/static_variants.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("TURNOUT_DATA", HERE.parent.parent / "shared" / "data"))
TABLES = {"routerbench": DATA / "routerbench" / "routerbench.parquet", "dcrouter": DATA / "dcrouter" / "dcrouter.parquet"}
GENERIC = (DATA / "guards" / "jailbreak" / "train.jsonl", DATA / "guards" / "pii" / "pii.jsonl")
TOLERANCE = 0.005


class Pooled:
    """The shipped static table, pooled one of the ways the module docstring lists."""

    def __init__(self) -> None:
        from turnout.embed.static import StaticEmbedder

        emb = StaticEmbedder(model_dir=Path("~/.cache/turnout/embeddings/models").expanduser(), progress=False)
        self.table, self.tok = emb._ensure_loaded()  # the distilled table and its tokenizer (a bench may look inside)

    def embed(self, texts: list[str], mode: str) -> np.ndarray:
        from turnout.embed.static import _clip_ids

        out = np.zeros((len(texts), self.table.shape[1]), np.float32)
        for i, enc in enumerate(self.tok.encode_batch(texts, add_special_tokens=False)):
            ids = list(enc.ids)
            if mode.startswith("tail"):
                ids = ids[-int(mode[4:]) :]
                w = np.ones(len(ids))
            else:
                ids = _clip_ids(ids)
                L = len(ids)
                g = float(mode[4:]) if mode.startswith("posw") else 0.0
                w = np.exp(g * (np.arange(L) - (L - 1)) / max(L, 1))
            if ids:
                v = (self.table[ids] * w[:, None]).sum(axis=0)
                out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out


def variant(pooled: Pooled, texts: list[str], name: str, generic: list[str]) -> np.ndarray:
    mode, centred = name.removesuffix("+c"), name.endswith("+c")
    X = pooled.embed(texts, mode)
    if centred:
        X = X - pooled.embed(generic, mode).mean(axis=0)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def aiq_of(router: str, Xtr: np.ndarray, Xte: np.ndarray, train: Any, test: Any) -> float:
    from turnout.evaluation.curves import only_observed, sweep
    from turnout.evaluation.metrics import aiq
    from turnout.routing import create_router

    r = create_router(router).fit(train.to_training_data(Xtr))
    curve = np.asarray(sweep(only_observed(r.predict(Xte), test), test)["curve"], dtype=float)
    costs = np.nanmean(test.costs, axis=0)
    return aiq(curve, float(costs.min()), float(costs.max()))


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.splits import split_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="base,tail64,tail32,posw3,base+c,tail64+c")
    ap.add_argument("--routers", default="knn,profile")
    ap.add_argument("--json", default=str(HERE / "results" / "static_variants.json"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # the loaders' notes on the shared tables are known
    names = [v for v in args.variants.split(",") if v]
    minilm, pooled = create_embedder("minilm", threads=os.cpu_count() or 1, progress=False), Pooled()
    generic = [json.loads(line)["text"] for path in GENERIC for line in path.open()][:6000]
    out: dict[str, Any] = {}
    t = Table(title=f"static pooling variants: ΔAIQ against MiniLM (gate ±{TOLERANCE})")
    for col in ("table", "router", "MiniLM AIQ", *names):
        t.add_column(col)
    for ds, path in TABLES.items():
        train, test = split_table(load_table(path))
        vecs = {"minilm": (np.asarray(minilm.embed(train.prompts)), np.asarray(minilm.embed(test.prompts)))}
        for v in names:
            vecs[v] = (variant(pooled, list(train.prompts), v, generic), variant(pooled, list(test.prompts), v, generic))
        for router in args.routers.split(","):
            a = {k: aiq_of(router, A, B, train, test) for k, (A, B) in vecs.items()}
            deltas = {k: a[k] - a["minilm"] for k in names}
            out.setdefault(ds, {})[router] = {"minilm_aiq": a["minilm"], "delta": deltas}
            t.add_row(
                ds,
                router,
                f"{a['minilm']:.4f}",
                *(f"[{'green' if abs(d) <= TOLERANCE else 'red'}]{d:+.4f}" for d in deltas.values()),
            )
    Console().print(t)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
