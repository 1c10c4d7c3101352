"""Route ``auto``'s embed stage under load: 64 concurrent asyncio callers through BatchingEmbedder.

Simulates what the gateway does per request, without the gateway: each of
``--concurrency`` callers loops over distinct short prompts (real ones from the
shared dcrouter table, at most ``--max-chars`` long) and awaits one embedding,
over a 2-thread executor (the gateway's offload pool). Per embedder, in one
subprocess:

* ``alone``: every request embeds alone on the pool (today's gateway);
* ``batched bN xK``: through :class:`turnout.embed.BatchingEmbedder` with
  ``max_batch`` N and ``max_in_flight`` K, for each N in ``--max-batch`` and K in ``--in-flight``.

For each it reports embeddings/s, p50/p99 latency, the mean batch, and the CPU
time the process spent per embedding (the issue's budget: the embed stage must
leave CPU for the HTTP work, about 1 ms of CPU per request at most, so that 600
req/s fit in two cores). Then the same at concurrency 1 (the lone-request
latency that must not get worse), alone and batched taking turns call by
call so that the load of a shared machine hits both alike.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
        python bench/batching.py [--requests 3000] [--concurrency 64] [--embedders minilm minilm-int8 minilm-static]
        [--max-batch 8,32] [--in-flight 1,2]

Writes bench/results/batching.json. No memory cache: every prompt is new.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))
EMBEDDERS = ("minilm", "minilm-int8", "minilm-static")


def load_short_prompts(n: int, max_chars: int) -> tuple[list[str], str]:
    """``n`` distinct prompts of at most ``max_chars`` characters (real ones when the table is there)."""
    table = DATA / "dcrouter" / "dcrouter.parquet"
    if table.exists():
        import pyarrow.parquet as pq

        df = pq.read_table(table, columns=["prompt"]).to_pandas().drop_duplicates("prompt")
        short = df[df["prompt"].str.len() <= max_chars]["prompt"].sample(frac=1.0, random_state=0).tolist()
        if len(short) >= n:
            return short[:n], f"{table} (prompts <= {max_chars} chars)"
        # not enough distinct ones: number the repeats, so that every prompt is still new to the model
        return [
            f"{short[i % len(short)]} ({i // len(short)})" if i >= len(short) else short[i] for i in range(n)
        ], f"{table} (prompts <= {max_chars} chars, repeats numbered)"
    base = [
        "What is 2+2?",
        "Write a haiku about the sea.",
        "Explain the difference between TCP and UDP.",
        "Translate 'where is the station' into German.",
        "Who wrote Pride and Prejudice?",
    ]
    return [f"{base[i % len(base)]} (variant {i})" for i in range(n)], "built-in sentences"


async def _drive(embed: Any, prompts: list[str], concurrency: int) -> tuple[list[float], float]:
    """``concurrency`` callers take prompts from one queue until it is empty; per-call latencies (ms) and wall s."""
    it = iter(prompts)
    lat: list[float] = []

    async def caller() -> None:
        for p in it:  # the iterator is shared: each prompt is taken by exactly one caller
            t = time.perf_counter()
            await embed(p)
            lat.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0


def worker(
    name: str,
    prompts: list[str],
    concurrency: int,
    warmup: int,
    max_batches: list[int],
    max_wait_ms: float,
    in_flights: list[int],
    lone_n: int,
) -> dict[str, Any]:
    """One embedder: alone and batched (each setting) at full concurrency, then both at concurrency 1, interleaved."""
    sys.path.insert(0, str(REPO / "src"))
    from turnout.embed import BatchingEmbedder, create_embedder
    from turnout.embed.batching import BatchingStats

    emb = create_embedder(name, cache=False, progress=False, threads=1)  # the gateway's setting: one thread per call
    emb.embed_one("warm up")
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="offload")

    async def run() -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        async def alone(text: str) -> Any:
            return await loop.run_in_executor(pool, emb.embed_one, text)

        modes: dict[str, Any] = {"alone": (alone, None)}
        for mb in max_batches:
            for k in in_flights:
                b = BatchingEmbedder(emb, pool, max_batch=mb, max_wait_ms=max_wait_ms, max_in_flight=k)
                modes[f"batched b{mb} x{k}"] = (b.embed, b)
        loaded: dict[str, Any] = {}
        for label, (embed, batcher) in modes.items():
            await _drive(embed, [f"warm-up {i} {label}: {t}" for i, t in enumerate(prompts[:warmup])], concurrency)
            if batcher is not None:
                batcher.stats = BatchingStats()  # count the measured run only
            texts = [f"{t} [{label}]" for t in prompts]  # new to the model in every mode, same lengths
            cpu0 = time.process_time()
            lat, wall = await _drive(embed, texts, concurrency)
            cpu = time.process_time() - cpu0
            loaded[label] = {
                "n": len(lat),
                "per_s": round(len(lat) / wall, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "cpu_ms_per_embedding": round(cpu * 1000 / len(lat), 3),
                "mean_batch": round(batcher.stats.mean_batch, 2) if batcher is not None else 1.0,
            }
        # concurrency 1: alone and the first batched setting take turns, so machine load drifts hit both alike
        lone_batcher = BatchingEmbedder(emb, pool, max_batch=max_batches[0], max_wait_ms=max_wait_ms, max_in_flight=in_flights[0])
        lone_lat: dict[str, list[float]] = {"alone": [], "batched": []}
        lone_cpu = {"alone": 0.0, "batched": 0.0}
        for i, text in enumerate(prompts[:lone_n]):
            mode = "alone" if i % 2 == 0 else "batched"
            call = alone if mode == "alone" else lone_batcher.embed
            c, t = time.process_time(), time.perf_counter()
            await call(f"{text} [lone]")
            lone_lat[mode].append((time.perf_counter() - t) * 1000)
            lone_cpu[mode] += time.process_time() - c
        lone = {
            m: {
                "n": len(v),
                "p50_ms": round(float(np.percentile(v, 50)), 3),
                "p99_ms": round(float(np.percentile(v, 99)), 3),
                "cpu_ms_per_embedding": round(lone_cpu[m] * 1000 / len(v), 3),
            }
            for m, v in lone_lat.items()
        }
        return {"loaded": loaded, "lone": lone}

    out = asyncio.run(run())
    pool.shutdown()
    return {"embedder": name, "name": emb.name, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="distinct prompts per mode at full concurrency")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-chars", type=int, default=200, help="longest prompt used (short chat-like prompts)")
    ap.add_argument("--max-batch", default="32", help="BatchingEmbedder.max_batch values, comma-separated")
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--in-flight", default="1,2", help="BatchingEmbedder.max_in_flight values, comma-separated")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lone", type=int, default=600, help="calls at concurrency 1 (alone and batched take turns)")
    ap.add_argument("--embedders", nargs="+", default=list(EMBEDDERS), choices=EMBEDDERS)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "batching.json")
    ap.add_argument("--worker", choices=EMBEDDERS, help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    max_batches = [int(v) for v in args.max_batch.split(",") if v]
    in_flights = [int(v) for v in args.in_flight.split(",") if v]
    if args.worker:
        prompts = json.loads(args.prompts_file.read_text())
        print(
            json.dumps(
                worker(args.worker, prompts, args.concurrency, args.warmup, max_batches, args.max_wait_ms, in_flights, args.lone)
            )
        )
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(width=150)
    prompts, source = load_short_prompts(args.requests, args.max_chars)
    rows: list[dict[str, Any]] = []
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as bar:
        pfile = Path(tmp) / "prompts.json"
        pfile.write_text(json.dumps(prompts))
        task = bar.add_task("simulating", total=len(args.embedders))
        for variant in args.embedders:
            bar.update(task, description=f"{variant}: {args.concurrency} callers, {len(prompts)} prompts")
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--prompts-file",
                str(pfile),
                "--concurrency",
                str(args.concurrency),
                "--warmup",
                str(args.warmup),
                "--max-batch",
                args.max_batch,
                "--max-wait-ms",
                str(args.max_wait_ms),
                "--in-flight",
                args.in_flight,
                "--lone",
                str(args.lone),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)  # a failure is reported
            if proc.returncode != 0:
                console.print(f"[red]{variant} failed[/red]:\n{proc.stderr[-2000:]}")
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            bar.advance(task)

    mean_chars = sum(len(p) for p in prompts) / len(prompts)
    table = Table(
        title=f"Embed stage under load: {args.concurrency} asyncio callers over a 2-thread pool, "
        f"{len(prompts)} distinct prompts (mean {mean_chars:.0f} chars) from {source}; "
        f"max_wait {args.max_wait_ms} ms; bN xK: max_batch N, K batches in flight"
    )
    for col in ("embedder", "mode", "emb/s", "p50 ms", "p99 ms", "CPU ms/emb", "mean batch"):
        table.add_column(col, justify="left" if col in ("embedder", "mode") else "right")
    for r in rows:
        for label, ld in r["loaded"].items():
            table.add_row(
                r["embedder"],
                label,
                f"{ld['per_s']:.0f}",
                f"{ld['p50_ms']:.2f}",
                f"{ld['p99_ms']:.2f}",
                f"{ld['cpu_ms_per_embedding']:.3f}",
                f"{ld['mean_batch']:.1f}",
            )
    console.print(table)
    lone = Table(title=f"Concurrency 1: alone vs batched (b{max_batches[0]} x{in_flights[0]}), calls interleaved")
    for col in ("embedder", "alone p50 ms", "batched p50 ms", "alone p99 ms", "batched p99 ms", "alone CPU ms", "batched CPU ms"):
        lone.add_column(col, justify="left" if col == "embedder" else "right")
    for r in rows:
        a, b = r["lone"]["alone"], r["lone"]["batched"]
        lone.add_row(
            r["embedder"],
            f"{a['p50_ms']:.3f}",
            f"{b['p50_ms']:.3f}",
            f"{a['p99_ms']:.3f}",
            f"{b['p99_ms']:.3f}",
            f"{a['cpu_ms_per_embedding']:.3f}",
            f"{b['cpu_ms_per_embedding']:.3f}",
        )
    console.print(lone)
    console.print(
        "CPU ms/emb: the process's CPU time (all threads) per embedding; at 600 req/s two cores leave "
        "3.3 ms of CPU per request for everything, of which the embed stage should take at most ~1 ms."
    )
    out = {
        "prompts": len(prompts),
        "source": source,
        "mean_chars": round(mean_chars, 1),
        "concurrency": args.concurrency,
        "max_batch": max_batches,
        "max_wait_ms": args.max_wait_ms,
        "in_flight": in_flights,
        "results": rows,
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
