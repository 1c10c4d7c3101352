"""Embedding speed: single-prompt latency, batch throughput, memory, and agreement with fp32 MiniLM.

Each embedder runs in its own subprocess so resident memory is its own.
Prompts are real ones from the shared dcrouter table when it is present
(otherwise a built-in set). Prints a rich table and writes
bench/results/embedding_speed.json.

    OMP_WAIT_POLICY=PASSIVE python bench/embedding_speed.py [--queries 200] [--batch 256] [--threads 1]
        [--batch-sizes 1,8,32,64] [--variants minilm-onnx minilm-int8 minilm-static ...]

Besides the real prompts (mixed lengths, RouterBench-style few-shot ones
included), each variant embeds short prompts (at most ``--short-chars``
characters: what a chat request's routing text looks like) in batches of each
of ``--batch-sizes``: texts/s per batch size tells what micro-batching
(``turnout.embed.BatchingEmbedder``) can gain. The bench is about the
embedders, not the cache: every variant runs uncached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))
VARIANTS = ("minilm-onnx", "minilm-torch", "minilm-int8", "minilm-static", "hashing")
_FALLBACK = [
    "What is 2+2?",
    "Write a haiku about the sea.",
    "Explain the difference between TCP and UDP.",
    "def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)",
    "Summarise the causes of the First World War in three bullet points.",
    "Translate 'where is the station' into German.",
]


def load_prompts(n: int, max_chars: int | None = None) -> tuple[list[str], str]:
    """``n`` real prompts (distinct; at most ``max_chars`` long when given), else built-in sentences."""
    table = DATA / "dcrouter" / "dcrouter.parquet"
    if table.exists():
        import pyarrow.parquet as pq

        df = pq.read_table(table, columns=["prompt_id", "prompt"]).to_pandas().drop_duplicates("prompt")
        if max_chars is not None:
            df = df[df["prompt"].str.len() <= max_chars]
        prompts = df["prompt"].sample(n=min(n, len(df)), random_state=0).tolist()
        return prompts, str(table) + (f" (<= {max_chars} chars)" if max_chars is not None else "")
    return [_FALLBACK[i % len(_FALLBACK)] + f" ({i})" for i in range(n)], "built-in sentences"


def rss_mb() -> float:
    # peak resident set of this process, in MiB (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(variant: str, prompts_file: Path, out_vecs: Path, batch: int, threads: int, batch_sizes: list[int]) -> dict:
    files = json.loads(prompts_file.read_text())
    prompts, short = files["prompts"], files["short"]
    sys.path.insert(0, str(REPO / "src"))
    from turnout.embed import HashingEmbedder, create_embedder, default_cache_dir
    from turnout.embed.minilm import MiniLMEmbedder

    t0 = time.perf_counter()
    if variant == "hashing":
        emb = HashingEmbedder()
    elif variant in ("minilm-int8", "minilm-static"):
        emb = create_embedder(variant, cache=False, progress=False, threads=threads)
    else:
        if variant == "minilm-torch":
            import torch

            torch.set_num_threads(threads)
        runtime = "onnx" if variant == "minilm-onnx" else "torch"
        emb = MiniLMEmbedder(onnx_dir=default_cache_dir() / "models", runtime=runtime, threads=threads, progress=False)
    emb.embed_one("warm up")  # loads the model (and exports ONNX on a fresh machine)
    load_s = time.perf_counter() - t0
    for p in prompts[:5]:
        emb.embed_one(p)
    lat = []
    for p in prompts:
        s = time.perf_counter()
        emb.embed_one(p)
        lat.append((time.perf_counter() - s) * 1000)
    batch_prompts = (prompts * (batch // max(1, len(prompts)) + 1))[:batch]
    s = time.perf_counter()
    vecs = emb.embed(batch_prompts)
    batch_s = time.perf_counter() - s
    np.save(out_vecs, emb.embed(prompts))
    short_rates = {}
    for size in batch_sizes:
        emb.embed(short[:size])  # warm: shapes of this size
        done, s = 0, time.perf_counter()
        while done < len(short):
            emb.embed(short[done : done + size])
            done += size
        short_rates[str(size)] = round(done / (time.perf_counter() - s), 1)
    return {
        "variant": variant,
        "name": emb.name,
        "dim": emb.dim,
        "load_s": round(load_s, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p95_ms": round(float(np.percentile(lat, 95)), 3),
        "batch_size": len(vecs),
        "batch_texts_per_s": round(len(vecs) / batch_s, 1),
        "peak_rss_mb": round(rss_mb(), 1),
        "short_texts_per_s_by_batch": short_rates,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200, help="single-prompt calls per embedder")
    ap.add_argument("--batch", type=int, default=256, help="texts in the throughput batch")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and torch")
    ap.add_argument("--batch-sizes", default="1,8,32,64", help="batch sizes for the short-prompt throughput")
    ap.add_argument("--short", type=int, default=512, help="short prompts per batch-size measurement")
    ap.add_argument("--short-chars", type=int, default=200, help="longest short prompt, in characters")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "embedding_speed.json")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vecs-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        print(json.dumps(worker(args.worker, args.prompts_file, args.vecs_file, args.batch, args.threads, sizes)))
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(width=140)
    prompts, source = load_prompts(args.queries)
    short, short_source = load_prompts(args.short, args.short_chars)
    rows, vec_files = [], {}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as bar:
        pfile = Path(tmp) / "prompts.json"
        pfile.write_text(json.dumps({"prompts": prompts, "short": short}))
        task = bar.add_task("benchmarking embedders", total=len(args.variants))
        for variant in args.variants:
            bar.update(task, description=f"benchmarking {variant}")
            vec_files[variant] = Path(tmp) / f"{variant}.npy"
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--prompts-file",
                str(pfile),
                "--vecs-file",
                str(vec_files[variant]),
                "--batch",
                str(args.batch),
                "--threads",
                str(args.threads),
                "--batch-sizes",
                args.batch_sizes,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)  # a failure is reported
            if proc.returncode != 0:
                console.print(f"[red]{variant} failed[/red]:\n{proc.stderr[-2000:]}")
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            bar.advance(task)
        # cosine to fp32 MiniLM (ONNX) on the same prompts, for every variant of the same dimension
        agreement: dict[str, dict[str, float]] = {}
        ref = vec_files.get("minilm-onnx")
        for v, f in vec_files.items():
            if v == "minilm-onnx" or ref is None or not (ref.exists() and f.exists()):
                continue
            a, b = np.load(ref), np.load(f)
            if a.shape == b.shape:
                cos = np.sum(a * b, axis=1)
                agreement[v] = {"n": len(cos), "min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}

    table = Table(title=f"Embedding speed ({len(prompts)} prompts from {source}, {args.threads} thread(s))")
    for col in ("variant", "name", "dim", "load s", "p50 ms", "p95 ms", f"batch {args.batch} texts/s", "peak RSS MiB"):
        table.add_column(col, justify="left" if col in ("variant", "name") else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            r["name"],
            str(r["dim"]),
            f"{r['load_s']:.2f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['batch_texts_per_s']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    console.print(table)
    sizes = args.batch_sizes.split(",")
    short_table = Table(
        title=f"Short prompts: texts/s by batch size ({len(short)} prompts from {short_source}, {args.threads} thread(s))"
    )
    short_table.add_column("variant")
    for size in sizes:
        short_table.add_column(f"batch {size}", justify="right")
    for r in rows:
        short_table.add_row(r["variant"], *(f"{r['short_texts_per_s_by_batch'][s]:.0f}" for s in sizes))
    console.print(short_table)
    for v, a in agreement.items():
        console.print(f"{v} vs minilm-onnx cosine over {a['n']} prompts: min {a['min']}, mean {a['mean']}")
    result = {
        "prompts": len(prompts),
        "source": source,
        "threads": args.threads,
        "batch": args.batch,
        "short_prompts": len(short),
        "short_source": short_source,
        "batch_sizes": [int(s) for s in sizes],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_avg_at_end": os.getloadavg(),
        "results": rows,
        "cosine_to_minilm_onnx": agreement,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
