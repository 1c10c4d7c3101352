"""Semantic cache: lookup latency as the store grows, and memory per entry.

The store holds N entries of a 384-d embedder (MiniLM's dimension) with
answers of about 1 KB, either all in one context (the worst case: one
matrix-vector product over N rows) or spread over many contexts (the usual
case: a bucket holds one system prompt's questions). Each lookup is what the
gateway does after embedding: fingerprint the request, exact lookup, nearest
neighbours, the look-alike guard on the candidates. Embedding is not included
(``turnout guards eval cache`` reports it with the real embedder).

    OMP_WAIT_POLICY=PASSIVE python bench/cache_lookup.py [--sizes 1000,10000,50000] [--queries 2000] [--json OUT]

Prints a rich table and writes bench/results/cache_lookup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from turnout.cache import ContextFingerprint, InMemoryCacheStore, SemanticCache
from turnout.types import ChatRequest

DIM = 384
WORDS = [
    "dose",
    "pain",
    "fever",
    "child",
    "adult",
    "night",
    "morning",
    "week",
    "tablet",
    "safe",
    "take",
    "side",
    "effect",
    "blood",
    "pressure",
    "sugar",
    "sleep",
    "headache",
    "stomach",
    "allergy",
    "rash",
    "cough",
    "cold",
    "flu",
    "vaccine",
    "pregnancy",
    "alcohol",
]


def question(rng: np.random.Generator) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(6, 14)))
    return "Is it " + " ".join(words) + f" with {int(rng.integers(1, 500))} mg?"


def answer(rng: np.random.Generator) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS, size=160))  # about 1 KB of content
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 200, "total_tokens": 220},
    }


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.normal(size=(n, DIM)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def request(context: int, text: str) -> ChatRequest:
    return ChatRequest(
        "auto",
        [{"role": "system", "content": f"You are assistant number {context}."}, {"role": "user", "content": text}],
        params={"temperature": 0},
    )


async def run(size: int, contexts: int, queries: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    texts = [question(rng) for _ in range(size)]
    vecs = unit_rows(rng, size)
    answers = [answer(rng) for _ in range(size)]

    async def fill() -> SemanticCache:
        cache = SemanticCache(InMemoryCacheStore(max_entries=size, ttl_s=None), threshold=0.86, space="minilm")
        for i in range(size):
            fp = ContextFingerprint.of(request(i % contexts, texts[i]), tenant="bench")
            await cache.store(fp, vecs[i], answers[i])
        return cache

    # memory on a fill of its own: tracemalloc slows every allocation, so the timed fill runs without it
    tracemalloc.start()
    traced = await fill()
    mem_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del traced
    t0 = time.perf_counter()
    cache = await fill()
    store_s = time.perf_counter() - t0
    # half the queries are near a cached question (a hit after the guard), half are new
    lat: list[float] = []
    hits = 0
    for q in range(queries):
        i = int(rng.integers(0, size))
        near = q % 2 == 0
        vec = vecs[i] + (0.02 * rng.normal(size=DIM).astype(np.float32) if near else 0)
        vec = vec if near else unit_rows(rng, 1)[0]
        text = texts[i].replace("Is it", "Would it be") if near else question(rng)
        t0 = time.perf_counter()
        fp = ContextFingerprint.of(request(i % contexts, text), tenant="bench")
        result = await cache.lookup(fp, vec)
        lat.append((time.perf_counter() - t0) * 1e3)
        hits += result.hit is not None
    return {
        "entries": size,
        "contexts": contexts,
        "bucket_size": size // contexts,
        "lookup_p50_ms": statistics.median(lat),
        "lookup_p99_ms": float(np.percentile(lat, 99)),
        "hit_share": hits / queries,
        "store_us_per_entry": store_s / size * 1e6,
        "memory_mb": mem_mb,
        "kb_per_entry": mem_mb * 1024 / size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--json", default=str(HERE / "results" / "cache_lookup.json"))
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for contexts in (1, max(1, size // 50)):
            rows.append(asyncio.run(run(size, contexts, args.queries)))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="semantic cache lookup (embedding excluded), 384-d vectors, ~1 KB answers")
    for col in ("entries", "contexts", "bucket", "p50 ms", "p99 ms", "hits", "store µs/entry", "MB", "KB/entry"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["entries"]),
            str(r["contexts"]),
            str(r["bucket_size"]),
            f"{r['lookup_p50_ms']:.3f}",
            f"{r['lookup_p99_ms']:.3f}",
            f"{r['hit_share']:.0%}",
            f"{r['store_us_per_entry']:.1f}",
            f"{r['memory_mb']:.1f}",
            f"{r['kb_per_entry']:.2f}",
        )
    Console().print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
