"""Embedding speed: single-prompt latency, batch throughput, memory, and ONNX/torch agreement.

Each embedder runs in its own subprocess so resident memory is its own.
Prompts are real ones from the shared dcrouter table when it is present
(otherwise a built-in set). Prints a rich table and writes
bench/results/embedding_speed.json.

    OMP_WAIT_POLICY=PASSIVE python bench/embedding_speed.py [--queries 200] [--batch 256] [--threads 1]

The bench is about the embedders, not the cache: every variant runs uncached.
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
VARIANTS = ("minilm-onnx", "minilm-torch", "hashing")
_FALLBACK = [
    "What is 2+2?",
    "Write a haiku about the sea.",
    "Explain the difference between TCP and UDP.",
    "def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)",
    "Summarise the causes of the First World War in three bullet points.",
    "Translate 'where is the station' into German.",
]


def load_prompts(n: int) -> tuple[list[str], str]:
    table = DATA / "dcrouter" / "dcrouter.parquet"
    if table.exists():
        import pyarrow.parquet as pq

        df = pq.read_table(table, columns=["prompt_id", "prompt"]).to_pandas().drop_duplicates("prompt_id")
        prompts = df["prompt"].sample(n=min(n, len(df)), random_state=0).tolist()
        return prompts, str(table)
    return [_FALLBACK[i % len(_FALLBACK)] + f" ({i})" for i in range(n)], "built-in sentences"


def rss_mb() -> float:
    # peak resident set of this process, in MiB (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(variant: str, prompts_file: Path, out_vecs: Path, batch: int, threads: int) -> dict:
    prompts = json.loads(prompts_file.read_text())
    sys.path.insert(0, str(REPO / "src"))
    from turnout.embed import HashingEmbedder, default_cache_dir
    from turnout.embed.minilm import MiniLMEmbedder

    t0 = time.perf_counter()
    if variant == "hashing":
        emb = HashingEmbedder()
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
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200, help="single-prompt calls per embedder")
    ap.add_argument("--batch", type=int, default=256, help="texts in the throughput batch")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and torch")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "embedding_speed.json")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vecs-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.prompts_file, args.vecs_file, args.batch, args.threads)))
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(width=140)
    prompts, source = load_prompts(args.queries)
    rows, vec_files = [], {}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as bar:
        pfile = Path(tmp) / "prompts.json"
        pfile.write_text(json.dumps(prompts))
        task = bar.add_task("benchmarking embedders", total=len(args.variants))
        for variant in args.variants:
            bar.update(task, description=f"benchmarking {variant}")
            vec_files[variant] = Path(tmp) / f"{variant}.npy"
            cmd = [sys.executable, __file__, "--worker", variant, "--prompts-file", str(pfile),
                   "--vecs-file", str(vec_files[variant]), "--batch", str(args.batch), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                console.print(f"[red]{variant} failed[/red]:\n{proc.stderr[-2000:]}")
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            bar.advance(task)
        agreement = None
        if all(v in vec_files and vec_files[v].exists() for v in ("minilm-onnx", "minilm-torch")):
            a, b = np.load(vec_files["minilm-onnx"]), np.load(vec_files["minilm-torch"])
            cos = np.sum(a * b, axis=1)
            agreement = {"n": int(len(cos)), "min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}

    table = Table(title=f"Embedding speed ({len(prompts)} prompts from {source}, {args.threads} thread(s))")
    for col in ("variant", "name", "dim", "load s", "p50 ms", "p95 ms", f"batch {args.batch} texts/s", "peak RSS MiB"):
        table.add_column(col, justify="left" if col in ("variant", "name") else "right")
    for r in rows:
        table.add_row(r["variant"], r["name"], str(r["dim"]), f"{r['load_s']:.2f}", f"{r['p50_ms']:.2f}",
                      f"{r['p95_ms']:.2f}", f"{r['batch_texts_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}")
    console.print(table)
    if agreement:
        console.print(f"ONNX vs torch cosine over {agreement['n']} prompts: min {agreement['min']}, mean {agreement['mean']}")
    result = {
        "prompts": len(prompts), "source": source, "threads": args.threads, "batch": args.batch,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_avg_at_end": os.getloadavg(), "results": rows, "onnx_torch_cosine": agreement,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
