"""Request signals and decision rules: each signal's own latency (p50/p99), the rules', and a typical stage's.

Prompts are real: dcrouter's test prompts (benchmark questions, some long), CLINC150 validation queries (short
chat requests) and the jailbreak dev rows (long role-play attacks and benign instructions), read in place from
``../shared/data`` (``TURNOUT_DATA``). Each signal is timed on every prompt, the fastest of ``--repeats`` runs
kept per prompt (a shared 2-core machine's time slices say nothing about the signal), then p50/p99 over prompts.

Learned signals read the prompt's embedding, which the gateway computes once per request and shares with the
router and the cache: their rows time the signal's own work on a ready vector ("head"); the MiniLM embedding's
own cost is a row of its own. The domain signal is fitted at start-up on 60 CLINC150 training rows per domain
(the start-up time is reported), the jailbreak signal uses the detector shipped in the wheel.

The *typical* rows time what the decision stage adds to a request with language + keyword + domain signals
and six decisions: computing those signals and evaluating the rules (with the embedding ready, and with it
computed fresh, as on a request whose route has no embedder). The whole pipeline's overhead with the guards
and the cache is measured by the guard stages' bench.

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 python bench/signals_latency.py [--json OUT] [--prompts N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))

SIGNALS: dict[str, dict[str, Any]] = {
    "kw": {
        "type": "keywords",
        "params": {
            "sets": {
                "code": [
                    "python",
                    "javascript",
                    "typescript",
                    "java",
                    "c++",
                    "rust",
                    "golang",
                    "sql",
                    "function",
                    "bug",
                    "stack trace",
                    "compile",
                    "exception",
                    "regex",
                    "api",
                ],
                "math": ["prove", "integral", "derivative", "equation", "theorem", "probability", "matrix", "solve for"],
                "legal": ["contract", "lawsuit", "liability", "gdpr", "copyright", "attorney", "court"],
                "medical": ["diagnosis", "symptom", "dosage", "prescription", "disease", "treatment"],
            }
        },
    },
    "rx": {
        "type": "regex",
        "params": {
            "patterns": {"ticket": r"\b[A-Z]{2,5}-\d{3,}\b", "url": r"https?://\S+", "version": r"\bv?\d+\.\d+(\.\d+)?\b"}
        },
    },
    "tok": {"type": "tokens", "params": {}},
    "conv": {"type": "conversation", "params": {}},
    "req": {"type": "request", "params": {}},
    "key": {"type": "key", "params": {}},
    "meta": {"type": "metadata", "params": {"headers": {"tier": "x-tier"}}},
    "st": {"type": "structure", "params": {}},
    "lang": {"type": "language", "params": {}},
    "pii": {"type": "pii", "params": {}},
    "domain": {"type": "domain", "params": {"examples": "", "embedder": "minilm"}},
    "jb": {"type": "jailbreak", "params": {"embedder": "minilm"}},
    "near": {
        "type": "similarity",
        "params": {
            "embedder": "minilm",
            "threshold": 0.6,
            "sets": {
                "refund": ["where is my refund", "i want my money back", "refund my last order", "how do i get a refund"],
                "password": ["i forgot my password", "reset my password", "i cannot log in to my account"],
                "human": ["let me talk to a human", "connect me to an agent", "i want to speak to a person"],
            },
        },
    },
    "hard": {
        "type": "score",
        "params": {
            "inputs": {"st.code": 0.3, "st.math": 0.3, "tok": 0.0005},
            "bands": {"easy": 0.3, "medium": 0.6, "hard": None},
        },
    },
}
TYPICAL = ["lang", "kw", "domain"]
DECISIONS = [
    {"name": "code", "priority": 60, "when": {"signal": "kw.code", "is": True}, "use": {"route": "auto"}},
    {
        "name": "math",
        "priority": 50,
        "when": {"all": [{"signal": "kw.math", "is": True}, {"signal": "lang", "eq": "en"}]},
        "use": {"lambda": 0},
    },
    {
        "name": "eu-languages",
        "priority": 40,
        "when": {"signal": "lang", "in": ["fr", "de", "es", "it"]},
        "use": {"route": "auto"},
    },
    {
        "name": "banking",
        "priority": 30,
        "when": {"all": [{"signal": "domain", "eq": "banking"}, {"signal": "domain.probability", "gte": 0.6}]},
        "use": {"route": "auto"},
    },
    {
        "name": "legal-or-medical",
        "priority": 20,
        "when": {"any": [{"signal": "kw.legal", "is": True}, {"signal": "kw.medical", "is": True}]},
        "use": {"route": "auto"},
    },
    {
        "name": "off-topic",
        "priority": 10,
        "when": {"not": {"signal": "domain", "in": ["banking", "travel"]}},
        "use": {"lambda": 100},
    },
]


def prompts(n: int, seed: int) -> list[str]:
    """``n`` real prompts: a third each from dcrouter test, CLINC150 val and jailbreak dev (seeded sample)."""
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    dc = pq.read_table(DATA / "dcrouter" / "dcrouter.parquet", columns=["prompt_id", "prompt", "split"]).to_pylist()
    dc_test = sorted({r["prompt_id"]: r["prompt"] for r in dc if r["split"] == "test"}.values())
    clinc = [
        json.loads(x)["text"]
        for x in (DATA / "clinc150" / "clinc150.jsonl").read_text().splitlines()
        if x.strip() and json.loads(x).get("split") == "val"
    ]
    jb = [json.loads(x)["text"] for x in (DATA / "guards" / "jailbreak" / "dev.jsonl").read_text().splitlines() if x]
    k = n // 3
    return rng.sample(dc_test, min(k, len(dc_test))) + rng.sample(clinc, k) + rng.sample(jb, n - 2 * k)


def domain_examples(path: Path, per_domain: int, seed: int) -> int:
    """Write ``per_domain`` CLINC150 training rows per domain to ``path`` (JSONL); returns the rows written."""
    rng = random.Random(seed)
    by: dict[str, list[str]] = {}
    for line in (DATA / "clinc150" / "clinc150.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "train" and r["domain"] != "out_of_scope":
            by.setdefault(r["domain"], []).append(r["text"])
    rows = [{"text": t, "label": d} for d, ts in by.items() for t in rng.sample(ts, min(per_domain, len(ts)))]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return len(rows)


class ReadyView:
    """A request view whose embedding is already computed (as the gateway's shared one is, once per request)."""

    def __init__(self, view: Any, vec: Any) -> None:
        self._v, self._vec = view, vec
        self.request, self.headers, self.key = view.request, view.headers, view.key

    prompt_text = property(lambda self: self._v.prompt_text)
    last_user_text = property(lambda self: self._v.last_user_text)
    system_text = property(lambda self: self._v.system_text)
    conversation_text = property(lambda self: self._v.conversation_text)

    async def embedding(self, embedder: str, text: str | None = None) -> Any:
        return self._vec if text is None else await self._v.embedding(embedder, text)


def stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "p50_ms": round(statistics.median(s), 4),
        "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 4),
        "mean_ms": round(statistics.fmean(s), 4),
        "max_ms": round(s[-1], 4),
    }


async def time_each(views: list[Any], fn: Callable[[Any], Any], repeats: int) -> list[float]:
    out = []
    for v in views:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = fn(v)
            if asyncio.iscoroutine(r):
                await r
            best = min(best, (time.perf_counter() - t0) * 1000)
        out.append(best)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from turnout.embed import create_embedder
    from turnout.signals.base import BuildContext, StaticView
    from turnout.signals.decisions import DecisionSet, parse_decisions
    from turnout.signals.registry import SignalSet, build_signal

    texts = prompts(args.prompts, args.seed)
    emb = create_embedder("minilm", cache=False, progress=False, threads=1)
    emb.embed_one("warm up")
    build = BuildContext(embedder=lambda name: emb)
    key = SimpleNamespace(name="alice", team="research", tags=("beta",))
    views = [
        StaticView.of(t, key=key, headers={"x-turnout-tags": "beta,mobile", "x-tier": "gold"}, embedders={"minilm": emb})
        for t in texts
    ]
    t0 = time.perf_counter()
    vecs = emb.embed(texts)
    batch_ms = (time.perf_counter() - t0) * 1000
    ready = [ReadyView(v, vec) for v, vec in zip(views, vecs)]

    lengths = sorted(len(t) for t in texts)
    results: dict[str, Any] = {
        "prompts": len(texts),
        "chars": {"p50": lengths[len(lengths) // 2], "max": lengths[-1], "min": lengths[0]},
        "repeats": args.repeats,
        "signals": {},
        "startup_ms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ex = Path(tmp) / "domains.jsonl"
        results["domain_examples"] = domain_examples(ex, args.per_domain, args.seed)
        built = {}
        for name, spec in SIGNALS.items():
            params = dict(spec["params"])
            if spec["type"] == "domain":
                params["examples"] = str(ex)
            t0 = time.perf_counter()
            built[name] = build_signal(name, spec["type"], params, build=build)
            results["startup_ms"][name] = round((time.perf_counter() - t0) * 1000, 1)
    sigs = SignalSet(built)
    for name, sig in built.items():
        if name == "hard":
            inputs = await asyncio.gather(*(sigs.extract(v, sigs.plan(["st.code", "tok"])) for v in ready))
            ms = await time_each([i.values for i in inputs], sig.derive, args.repeats)
        elif sig.inline:
            ms = await time_each(ready, sig.extract, args.repeats)
        else:
            ms = await time_each(ready, sig.extract_async, args.repeats)
        results["signals"][name] = {"type": sig.type_name, "inline": sig.inline, **stats(ms)}
        print(f"  {name:8s} {sig.type_name:12s} p50 {results['signals'][name]['p50_ms']:.4f} ms", file=sys.stderr)
    # MiniLM itself, one prompt at a time (what a request whose route has no embedder pays once)
    ms = await time_each(texts, emb.embed_one, 1)
    results["signals"]["(minilm embedding)"] = {"type": "embedding", "inline": False, **stats(ms)}
    results["minilm_batch_ms_per_prompt"] = round(batch_ms / len(texts), 3)

    # the typical stage: language + keywords + domain, six decisions
    typical = SignalSet({n: built[n] for n in TYPICAL})
    ds = DecisionSet(parse_decisions(DECISIONS), typical, routes=["auto"], models=["m"], conflicts="warn")
    plan = ds.plan

    async def stage(v: Any) -> None:
        found = await typical.extract(v, plan)
        ds.evaluate(found.values, "auto")

    found_all = [await typical.extract(v, plan) for v in ready]
    results["typical"] = {
        "signals": TYPICAL,
        "decisions": len(DECISIONS),
        "conflicts": [c.message for c in ds.conflicts],
        "rules_only": stats(await time_each(found_all, lambda f: ds.evaluate(f.values, "auto"), args.repeats)),
        "signals_and_rules_embedding_ready": stats(await time_each(ready, stage, args.repeats)),
        "signals_and_rules_with_embedding": stats(
            await time_each([StaticView.of(t, embedders={"minilm": emb}) for t in texts], stage, 1)
        ),
        "matched": {
            d["name"]: sum(
                1
                for f in found_all
                if ds.evaluate(f.values, "auto").matched is not None and ds.evaluate(f.values, "auto").matched.name == d["name"]
            )
            for d in DECISIONS
        },
    }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=600, help="prompts timed (a third from each source)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per prompt; the fastest is kept")
    ap.add_argument("--per-domain", type=int, default=60, help="CLINC150 training rows per domain for the domain signal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(HERE / "results" / "signals_latency.json"))
    args = ap.parse_args()
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        print("warning: set OPENBLAS_NUM_THREADS=1 (numpy's threads spin and slow ONNX Runtime)", file=sys.stderr)

    from rich.console import Console
    from rich.table import Table

    results = asyncio.run(run(args))
    results.update(
        machine=platform.platform(),
        python=platform.python_version(),
        cpus=os.cpu_count(),
        load_avg_at_end=os.getloadavg(),
        env={k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")},
    )
    table = Table(title=f"signal latency per request ({results['prompts']} real prompts; learned: on a ready embedding)")
    for col in ("signal", "type", "runs", "p50 ms", "p99 ms", "max ms", "start-up ms"):
        table.add_column(col, justify="left" if col in ("signal", "type", "runs") else "right")
    for name, r in results["signals"].items():
        table.add_row(
            name,
            r["type"],
            "inline" if r["inline"] else "awaited",
            f"{r['p50_ms']:.4f}",
            f"{r['p99_ms']:.4f}",
            f"{r['max_ms']:.3f}",
            str(results["startup_ms"].get(name, "")),
        )
    t = results["typical"]
    for label, key in (
        ("rules only (6 decisions)", "rules_only"),
        ("lang+kw+domain + rules, embedding ready", "signals_and_rules_embedding_ready"),
        ("lang+kw+domain + rules, embedding computed", "signals_and_rules_with_embedding"),
    ):
        table.add_row(label, "typical", "", f"{t[key]['p50_ms']:.4f}", f"{t[key]['p99_ms']:.4f}", f"{t[key]['max_ms']:.3f}", "")
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(table)
    console.print(f"load average at the end: {results['load_avg_at_end']} (a shared machine: rerun on a quiet one)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
