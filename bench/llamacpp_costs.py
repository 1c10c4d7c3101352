"""Calibration: what does a real llama.cpp server spend on prefill, decode, and a cached prefix?

``bench/cache_affinity.py`` simulates a fleet of engine replicas whose time to first token is
``overhead + uncached prompt tokens / prefill speed`` and whose decode is ``output tokens / decode
speed``. This script measures those three numbers on a real server, the one turnout starts for its
embedded fleet: ``llama_cpp.server`` with the SmolLM2-135M-Instruct GGUF shipped on PyPI
(:class:`turnout.backends.llamacpp.LlamaCppServer`, ``OMP_WAIT_POLICY=PASSIVE``), on loopback.

What it sends (``/v1/completions``, temperature 0):

* **prefill**: prompts of several lengths, each starting with a fresh random tag so the slot's
  KV cache of the previous prompt matches nothing but the BOS token, ``max_tokens=1``. The fastest
  wall time per length is fitted as ``overhead + prompt_tokens / prefill_tok_s`` (least squares; the
  overhead absorbs HTTP, tokenization and the one sampled token). ``usage.prompt_tokens`` gives the
  length.
* **cached prefix**: a long prompt ``P`` (cold), then ``P + S`` with a short new suffix ``S``: the
  server keeps the previous prompt's KV cache in its slot and only evaluates the tokens after the
  longest common prefix. Compared with a cold ``P' + S`` of the same length: the time saved, and
  the tokens the fit says were evaluated. ``P`` sent twice shows the exact-repeat path.
* **decode**: a short prompt streamed with ``max_tokens=N`` and the end-of-sequence token banned
  (``logit_bias``), so exactly ``N`` tokens come back; decode speed is ``(chunks - 1) / (last - first
  chunk)``, which leaves the prefill out.

The server answers one request at a time and its responses carry ``usage`` (prompt and completion
tokens) but no ``timings`` block (that one is the C++ ``llama-server``'s); the script records which
fields it saw. Writes ``bench/results/llamacpp_costs.json``, which the simulator reads.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python bench/llamacpp_costs.py [--threads 1] [--reps 3]

The figures depend on the machine and on what else runs on it; say so when you quote them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "llamacpp_costs.json"
#: SmolLM2's end-of-sequence token id (banned in the decode run so every answer is exactly N tokens)
SMOLLM2_EOS = 2
_WORDS = (
    "river",
    "stone",
    "cloud",
    "maple",
    "orbit",
    "lantern",
    "copper",
    "meadow",
    "signal",
    "harbor",
    "pencil",
    "tunnel",
    "garden",
    "violet",
    "engine",
    "silver",
    "candle",
    "forest",
    "marble",
    "window",
    "rocket",
    "pepper",
    "island",
    "summer",
    "basket",
    "planet",
)


def _text(n_words: int, rng: random.Random) -> str:
    """Plain English-like filler, ~1.3 tokens a word for SmolLM2's tokenizer; a fresh random tag first."""
    tag = f"[{rng.getrandbits(40):010x}] "
    return tag + " ".join(rng.choice(_WORDS) for _ in range(n_words))


def _complete(client: httpx.Client, prompt: str, max_tokens: int = 1) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = client.post("/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0})
    wall = time.perf_counter() - t0
    r.raise_for_status()
    return wall, r.json()


def fit_prefill(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(overhead_s, tok_s) of the least-squares line ``wall = overhead + tokens / tok_s``.

    Fitted on the fastest repetition of each prompt length: on a shared machine the slower ones
    measure the other processes, not the engine.
    """
    fastest: dict[int, float] = {}
    for n, w in points:
        fastest[n] = min(w, fastest.get(n, w))
    x = np.array(list(fastest), dtype=float)
    y = np.array(list(fastest.values()), dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:
        raise RuntimeError(f"prefill time does not grow with prompt length ({points}); the machine is too busy to measure")
    return float(max(intercept, 0.0)), float(1.0 / slope)


def measure(
    base_url: str, *, lengths: list[int], reps: int, cached_lengths: list[int], decode_tokens: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base_url, timeout=600.0) as client:
        _complete(client, _text(20, rng))  # warm-up: first request pays model paging and allocation
        fields: set[str] = set()
        points: list[tuple[int, float]] = []
        for n_words in lengths:
            for _ in range(reps):
                wall, body = _complete(client, _text(n_words, rng))
                fields |= set(body)
                points.append((int(body["usage"]["prompt_tokens"]), wall))
        overhead, tok_s = fit_prefill(points)
        out["prefill"] = {
            "tok_s": tok_s,
            "overhead_s": overhead,
            "points": [{"prompt_tokens": n, "wall_s": w} for n, w in points],
        }
        out["response_fields"] = sorted(fields)

        cached = []
        for n_words in cached_lengths:
            prefix, other = _text(n_words, rng), _text(n_words, rng)
            suffix = " " + " ".join(rng.choice(_WORDS) for _ in range(24))
            cold_p, body_p = _complete(client, prefix)
            warm, body_w = _complete(client, prefix + suffix)  # the slot still holds `prefix`
            repeat, _ = _complete(client, prefix + suffix)  # the exact same prompt again
            cold, _ = _complete(client, other + suffix)  # same length, nothing shared
            n_total = int(body_w["usage"]["prompt_tokens"])
            n_prefix = int(body_p["usage"]["prompt_tokens"])
            cached.append(
                {
                    "prefix_tokens": n_prefix,
                    "prompt_tokens": n_total,
                    "cold_prefix_s": cold_p,
                    "cold_s": cold,
                    "warm_s": warm,
                    "repeat_s": repeat,
                    "saved_s": cold - warm,
                    "saved_fraction": (cold - warm) / cold if cold > 0 else 0.0,
                    # tokens the fitted line says were evaluated in the warm request
                    "warm_evaluated_tokens_est": max(0.0, (warm - overhead) * tok_s),
                }
            )
        out["cached_prefix"] = cached

        decode = []
        for _ in range(reps):
            prompt = _text(30, rng) + "\nWrite a long story about the river:"
            first = last = None
            chunks = 0
            t0 = time.perf_counter()
            with client.stream(
                "POST",
                "/completions",
                json={
                    "prompt": prompt,
                    "max_tokens": decode_tokens,
                    "temperature": 0.0,
                    "stream": True,
                    "logit_bias": {str(SMOLLM2_EOS): -100.0},
                },
            ) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    chunks += 1
            if first is None or last is None or chunks < 2:
                raise RuntimeError("the decode stream returned fewer than two chunks")
            decode.append(
                {"chunks": chunks, "ttft_s": first - t0, "decode_s": last - first, "tok_s": (chunks - 1) / (last - first)}
            )
        out["decode"] = {"tok_s": statistics.median(d["tok_s"] for d in decode), "runs": decode}
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.backends.llamacpp import LlamaCppServer, default_fleet_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (turnout's default backend uses 1)")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--lengths", default="40,150,300,600,1100", help="prompt lengths in filler words (~1.3 tokens each)")
    ap.add_argument("--cached-lengths", default="300,1100", help="prefix lengths in words for the cached-prefix runs")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=RESULTS, help=f"output JSON (default {RESULTS.relative_to(HERE.parent)})")
    args = ap.parse_args(argv)
    console = Console()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    model = default_fleet_models()["smollm2"]
    t0 = time.perf_counter()
    with LlamaCppServer(model, n_threads=args.threads, n_ctx=args.n_ctx) as srv:
        console.print(f"llama.cpp server for {model.name} ready in {time.perf_counter() - t0:.1f}s at {srv.base_url}")
        res = measure(
            srv.base_url,
            lengths=[int(v) for v in args.lengths.split(",")],
            reps=args.reps,
            cached_lengths=[int(v) for v in args.cached_lengths.split(",")],
            decode_tokens=args.decode_tokens,
            seed=args.seed,
        )
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    doc = {
        "model": model.name,
        "engine": "llama_cpp.server (llama-cpp-python)",
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "prefill_tok_s": res["prefill"]["tok_s"],
        "prefill_overhead_s": res["prefill"]["overhead_s"],
        "decode_tok_s": res["decode"]["tok_s"],
        **res,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "loadavg_at_end": list(load),
            "note": "shared machine: other processes were running; figures are noisy",
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")

    t = Table(title=f"llama.cpp costs: {model.name}, {args.threads} thread(s)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("prefill tok/s (fit)", f"{doc['prefill_tok_s']:.0f}")
    t.add_row("prefill overhead (fit)", f"{doc['prefill_overhead_s'] * 1000:.0f} ms")
    t.add_row("decode tok/s (median)", f"{doc['decode_tok_s']:.1f}")
    for c in res["cached_prefix"]:
        t.add_row(
            f"{c['prompt_tokens']} tok: cold / prefix cached / repeat",
            f"{c['cold_s']:.2f} / {c['warm_s']:.2f} / {c['repeat_s']:.2f} s ({c['saved_fraction']:.0%} saved)",
        )
    t.add_row("response fields", ", ".join(res["response_fields"]))
    console.print(t)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
