"""Prefix affinity on real engines: two llama.cpp servers of SmolLM2 behind turnout, dualmap against least_loaded.

The simulator (``bench/cache_affinity.py``) predicts that sending requests which share a long prefix to the
engine that already holds it cuts time to first token. This bench checks it on the real thing:

* two ``llama_cpp.server`` processes of SmolLM2-135M-Instruct (the GGUF shipped on PyPI), one thread each,
  started fresh for every strategy (both begin with an empty cache), with ``--verbose True`` so that
  llama.cpp reports, per request, how much of the prompt it found already evaluated
  (``Llama.generate: N prefix-match hit, remaining M prompt tokens to eval``);
* turnout in this process (the real gateway: config, balancer, endpoints, its HTTP client), one model over
  the two engines, balanced by the strategy under test;
* one trace, replayed identically for every strategy: ``--prefixes`` long system prompts (documents of
  about ``--prefix-words`` words), each request one of them plus a short question of its own, in a
  seeded random order; ``--concurrency`` clients in a closed loop (each sends its next request when its
  last one has streamed its answer), ``max_tokens`` small so that prefill dominates.

Reported per strategy: TTFT (first streamed chunk, at the client) p50 / p90 / mean, the trace's wall time,
requests per engine, and llama.cpp's own account: prompt tokens found cached (summed over both engines)
and the requests that found at least 64 tokens cached (every prompt shares the chat template's first few
tokens, so shorter hits say nothing about the document). A llama.cpp server keeps the
KV of the prompt it evaluated last (one sequence per slot), so a request finds its prefix only on an
engine whose previous request had it: exactly what a prefix-affine balancer arranges.

The dualmap settings are fixed in advance, not tuned on this trace: ``slo_s`` 8 (a request may wait behind a
few cached ones rather than be prefilled cold elsewhere), ``prefill_tok_s`` 150 (this machine's llama.cpp,
1 thread, loaded), ``index_blocks`` 32 (about one 2,048-token context).

    OMP_WAIT_POLICY=PASSIVE python bench/affinity_live.py [--requests 40] [--prefixes 2] [--concurrency 2]
        [--strategies dualmap,least_loaded] [--json bench/results/affinity_live.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from turnout.backends.llamacpp import LlamaCppServer, default_fleet_models
from turnout.config import parse_config, resolve
from turnout.gateway.builder import build_gateway
from turnout.types import ChatRequest

RESULTS = HERE / "results" / "affinity_live.json"
console = Console(width=160)
#: a prefix hit at least this long is the shared document found cached, not only the chat template's first tokens
LONG_HIT = 64
_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")
_WORDS = [
    "river",
    "mountain",
    "policy",
    "ledger",
    "harvest",
    "engine",
    "quarterly",
    "invoice",
    "garden",
    "protocol",
    "signal",
    "archive",
    "velvet",
    "compass",
    "lantern",
    "meadow",
    "copper",
    "orbit",
    "canyon",
    "summit",
    "harbor",
    "beacon",
    "timber",
    "quartz",
    "falcon",
    "glacier",
    "prairie",
    "saddle",
    "thunder",
    "willow",
    "ember",
    "marble",
    "cobalt",
    "nectar",
    "pillar",
    "voyage",
    "fabric",
    "anchor",
    "cinder",
    "tundra",
]
BALANCE_PARAMS: dict[str, dict[str, Any]] = {
    "dualmap": {"slo_s": 8.0, "prefill_tok_s": 150.0, "index_blocks": 32},
}


def make_trace(prefixes: int, requests: int, prefix_words: int, seed: int) -> list[list[dict[str, str]]]:
    """``requests`` conversations: one of ``prefixes`` long system prompts, then a short question of its own."""
    rng = random.Random(seed)
    systems = []
    for p in range(prefixes):
        words = [rng.choice(_WORDS) for _ in range(prefix_words)]
        systems.append(f"Reference document {p}. Answer questions about it in one short sentence.\n" + " ".join(words))
    order = [i % prefixes for i in range(requests)]
    rng.shuffle(order)
    return [
        [
            {"role": "system", "content": systems[p]},
            {"role": "user", "content": f"Question {i}: which word comes after '{rng.choice(_WORDS)}'?"},
        ]
        for i, p in enumerate(order)
    ]


def gateway_config(strategy: str, urls: list[str]) -> Any:
    data = {
        "server": {"request_log": None, "metrics": False},
        "backends": {
            "llama": {
                "protocol": "openai",
                "base_url": urls[0],
                "timeouts": {"connect": 5, "first_token": 300, "total": 600},
                "retries": {"attempts": 1},
            }
        },
        "models": {
            "smollm2": {
                "endpoints": [{"backend": "llama", "base_url": u, "name": f"engine-{j}", "slots": 1} for j, u in enumerate(urls)],
                "balance": {"strategy": strategy, "params": BALANCE_PARAMS.get(strategy, {})},
                "context_window": 2048,
            }
        },
    }
    return resolve(parse_config(data, source="affinity_live"))


def cached_tokens(log: Path) -> tuple[int, int, list[int]]:
    """llama.cpp's own account in an engine's log: tokens found cached, requests with a hit, each hit's size."""
    hits = [int(m.group(1)) for m in _HIT.finditer(log.read_text(errors="replace"))]
    return sum(hits), len(hits), hits


async def replay(
    gw: Any, trace: list[list[dict[str, str]]], concurrency: int, max_tokens: int, progress: Progress, label: str
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{} for _ in trace]
    todo = iter(range(len(trace)))
    task = progress.add_task(label, total=len(trace))

    async def worker() -> None:
        for i in todo:
            req = ChatRequest("smollm2", trace[i], params={"max_tokens": max_tokens, "temperature": 0.0})
            t0 = time.perf_counter()
            session = await gw.chat_stream(req)
            ttft = time.perf_counter() - t0
            text = ""
            async for chunk in session:
                text += chunk.text
            done = time.perf_counter() - t0
            endpoint = session.ctx.attempts[-1].endpoint if session.ctx.attempts else "?"
            out[i] = {"i": i, "ttft_s": ttft, "total_s": done, "endpoint": endpoint, "chars": len(text)}
            progress.advance(task)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def run_strategy(
    strategy: str, trace: list[list[dict[str, str]]], args: argparse.Namespace, tmp: Path, progress: Progress
) -> dict[str, Any]:
    gguf = default_fleet_models()["smollm2"]
    extra = ["--verbose", "True"]
    if args.ram_cache_mb > 0:  # llama-cpp-python's prompt cache: KV states of several prefixes kept in RAM
        extra += ["--cache", "True", "--cache_type", "ram", "--cache_size", str(args.ram_cache_mb << 20)]
    engines = [
        LlamaCppServer(gguf, n_threads=1, n_ctx=args.n_ctx, extra_args=extra, log_path=tmp / f"{strategy}-engine-{j}.log")
        for j in range(2)
    ]
    for e in engines:
        e.launch()
    try:
        for e in engines:
            await e.astart()
        gw = build_gateway(gateway_config(strategy, [e.base_url for e in engines]))
        try:
            t0 = time.perf_counter()
            rows = await replay(gw, trace, args.concurrency, args.max_tokens, progress, strategy)
            wall = time.perf_counter() - t0
        finally:
            await gw.aclose()
    finally:
        for e in engines:
            await e.astop()
    per_engine = [cached_tokens(tmp / f"{strategy}-engine-{j}.log") for j in range(2)]
    ttft = np.array([r["ttft_s"] for r in rows])
    cached = sum(c for c, _, _ in per_engine)
    hits = sum(n for _, n, _ in per_engine)
    return {
        "strategy": strategy,
        "requests": len(rows),
        "wall_s": wall,
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p90_s": float(np.percentile(ttft, 90)),
        "ttft_mean_s": float(ttft.mean()),
        "per_engine": dict(Counter(r["endpoint"] for r in rows)),
        "llamacpp_cached_tokens": cached,
        "llamacpp_prefix_hits": hits,
        "llamacpp_long_hits": sum(1 for _, _, h in per_engine for n in h if n >= LONG_HIT),
        "llamacpp_hits_per_engine": [h for _, _, h in per_engine],
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--prefixes", type=int, default=2)
    ap.add_argument("--prefix-words", type=int, default=280, help="words per shared prefix (about 1.4 tokens each)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ram-cache-mb",
        type=int,
        default=0,
        help="give each engine llama-cpp-python's RAM prompt cache of this size (0: the KV of the last "
        "prompt only, the server's default)",
    )
    ap.add_argument("--strategies", default="dualmap,least_loaded")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    trace = make_trace(args.prefixes, args.requests, args.prefix_words, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="turnout-affinity-"))
    results = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    with progress:
        for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
            results.append(asyncio.run(run_strategy(strategy, trace, args, tmp, progress)))

    prompt_chars = sum(len(m["content"]) for conv in trace for m in conv)
    table = Table(
        title=f"Two llama.cpp engines (SmolLM2, 1 thread each) behind turnout: {args.requests} requests, "
        f"{args.prefixes} shared prefixes of ~{args.prefix_words} words, concurrency {args.concurrency}"
    )
    for col in (
        "strategy",
        "TTFT p50 s",
        "TTFT p90 s",
        "TTFT mean s",
        "wall s",
        "per engine",
        "cached tokens (llama.cpp)",
        f"hits >= {LONG_HIT} tokens",
    ):
        table.add_column(col, justify="left" if col in ("strategy", "per engine") else "right")
    for r in results:
        table.add_row(
            r["strategy"],
            f"{r['ttft_p50_s']:.2f}",
            f"{r['ttft_p90_s']:.2f}",
            f"{r['ttft_mean_s']:.2f}",
            f"{r['wall_s']:.1f}",
            " ".join(f"{k}:{v}" for k, v in sorted(r["per_engine"].items())),
            str(r["llamacpp_cached_tokens"]),
            f"{r['llamacpp_long_hits']}/{r['requests']}",
        )
    console.print(table)
    by = {r["strategy"]: r for r in results}
    ratios = {}
    if "dualmap" in by and "least_loaded" in by:
        d, ll = by["dualmap"], by["least_loaded"]
        ratios = {
            "ttft_p50 least_loaded/dualmap": ll["ttft_p50_s"] / d["ttft_p50_s"],
            "ttft_mean least_loaded/dualmap": ll["ttft_mean_s"] / d["ttft_mean_s"],
            "cached tokens dualmap - least_loaded": d["llamacpp_cached_tokens"] - ll["llamacpp_cached_tokens"],
        }
        console.print(ratios)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "bench": "affinity_live",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "load_avg": os.getloadavg(),
                },
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
                | {"balance_params": BALANCE_PARAMS, "prompt_chars": prompt_chars},
                "results": results,
                "ratios": ratios,
            },
            indent=1,
        )
    )
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
