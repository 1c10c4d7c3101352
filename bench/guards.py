"""Every guard's quality and latency on the shared data, through the same table as ``turnout guards eval``.

Runs each guard kind of :data:`turnout.cli.guards.KINDS` on its shared data set
(the domain guard on CLINC150, the jailbreak detector on guards/jailbreak with
extra benign prompts, leave-one-source-out checks, in-the-wild benign prompts
and the hand-written probes in bench/probes/, PII on guards/pii, the semantic
cache on guards/cache_pairs), prints one summary table and writes every full
report as JSON. A kind whose evaluation module is missing, or whose data is not
there, is skipped with a note. Latency is per request with the embedding, one
thread, no vector cache: on a shared machine it is noisy (the JSON records the
load average).

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \\
        python bench/guards.py [--json bench/results/guards.json] [--kinds domain,jailbreak,pii,cache] \\
        [--domain-embedders minilm,minilm-int8,minilm-static]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))
PROBES = HERE / "probes" / "jailbreak_probes.jsonl"
sys.path.insert(0, str(REPO / "src"))

#: the figures the summary shows for each kind (the JSON has the whole report)
QUALITY = {
    "domain": ("domain_accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "overall_accuracy", "balanced_accuracy"),
    "jailbreak": ("detection_rate", "false_positive_rate", "auc"),
    "pii": ("micro_f1_structured", "micro_precision_structured", "micro_recall_structured"),
    "cache": ("threshold", "hit_rate", "false_hit_rate"),
}


def runs(domain_embedders: list[str]) -> list[tuple[str, str, str, str | None, dict[str, Any], list[Path]]]:
    """(kind, variant, test, train, options, files that must exist) for each evaluation the bench makes."""
    clinc = DATA / "clinc150" / "clinc150.jsonl"
    jb = DATA / "guards" / "jailbreak"
    dc = DATA / "dcrouter" / "dcrouter.parquet"
    mqp = DATA / "guards" / "cache_pairs" / "mqp.jsonl"
    out: list[tuple[str, str, str, str | None, dict[str, Any], list[Path]]] = []
    for e in domain_embedders:
        out.append(("domain", e, str(clinc), None, {"embedder": e}, [clinc]))
    out.append(
        (
            "jailbreak",
            "minilm",
            str(jb / "dev.jsonl"),
            str(jb / "train.jsonl"),
            {
                "embedder": "minilm",
                "benign": [str(clinc), str(dc)],
                "wild": [str(clinc), str(dc), str(mqp)],
                "probes": str(PROBES),
            },
            [jb / "dev.jsonl", jb / "train.jsonl", clinc, dc, mqp],
        )
    )
    out.append(("pii", "default", str(DATA / "guards" / "pii" / "pii.jsonl"), None, {}, [DATA / "guards" / "pii"]))
    out.append(("cache", "minilm", str(mqp), None, {"embedder": "minilm"}, [mqp]))
    return out


def latency_of(report: dict[str, Any]) -> tuple[float | None, float | None]:
    """(p50, p99) per request in ms wherever the kind's report keeps them."""
    if "p50_ms" in report:
        return report.get("p50_ms"), report.get("p99_ms")
    lat = report.get("latency") or {}  # the cache reports its own latency record (no p99 with the embedding)
    return lat.get("with_embedding_p50_ms") or lat.get("lookup_p50_ms"), None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(HERE / "results" / "guards.json"))
    ap.add_argument("--kinds", default="domain,jailbreak,pii,cache")
    ap.add_argument("--domain-embedders", default="minilm,minilm-int8,minilm-static")
    ap.add_argument("--latency-samples", type=int, default=300)
    args = ap.parse_args()

    from rich.table import Table

    from turnout.cli._ui import console, print_table
    from turnout.cli.guards import GuardUnavailable, options_of, resolve
    from turnout.errors import TurnoutError

    con = console()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "runs": {},
        "skipped": {},
    }
    for kind, variant, test, train, opts, needs in runs([e for e in args.domain_embedders.split(",") if e]):
        if kind not in kinds:
            continue
        key = f"{kind}/{variant}"
        missing = [str(p) for p in needs if not p.exists()]
        if missing:
            results["skipped"][key] = f"data not found: {', '.join(missing)} (set TURNOUT_DATA)"
            continue
        try:
            fn = resolve(kind)
        except GuardUnavailable as exc:
            results["skipped"][key] = str(exc)
            continue
        accepted = options_of(fn)
        opts = {k: v for k, v in opts.items() if k in accepted}
        if "latency_samples" in accepted:
            opts["latency_samples"] = args.latency_samples
        con.print(f"[bold]{key}[/bold]: {test}")
        t0 = time.perf_counter()
        try:
            report = fn(test, train, **opts)
        except TurnoutError as exc:  # e.g. a missing extra: the other kinds still run
            results["skipped"][key] = f"failed: {exc}"
            continue
        report["bench_wall_s"] = time.perf_counter() - t0
        results["runs"][key] = report
    domain_embedders = [k.split("/", 1)[1] for k in results["runs"] if k.startswith("domain/")]
    if len(domain_embedders) > 1:
        results["domain_paired_latency"] = paired_domain_latency(domain_embedders, args.latency_samples)
    results["machine"]["load_avg_end"] = os.getloadavg()

    t = Table(title="guards on the shared data (latency per request, embedding included, 1 thread)")
    for c in ("guard", "quality", "p50 ms", "p99 ms", "wall s"):
        t.add_column(c, justify="left" if c in ("guard", "quality") else "right")
    for key, rep in results["runs"].items():
        kind = key.split("/")[0]
        q = ", ".join(f"{k} {rep[k]:.3f}" for k in QUALITY.get(kind, ()) if isinstance(rep.get(k), (int, float)))
        p50, p99 = latency_of(rep)
        t.add_row(
            key, q, f"{p50:.2f}" if p50 is not None else "", f"{p99:.2f}" if p99 is not None else "", f"{rep['bench_wall_s']:.0f}"
        )
    print_table(con, t)
    paired = results.get("domain_paired_latency")
    if paired:
        con.print(
            "domain guard, round-robin latency (same load for each embedder): "
            + ", ".join(f"{e} p50 {v['p50_ms']:.2f} / p99 {v['p99_ms']:.2f} ms" for e, v in paired.items()),
            markup=False,
        )
    jb = results["runs"].get("jailbreak/minilm")
    if jb:
        _jailbreak_tables(con, jb)
    for key, why in results["skipped"].items():
        con.print(f"skipped {key}: {why}", style="yellow", markup=False)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    con.print(f"wrote {args.json}", markup=False)
    return 0


def paired_domain_latency(embedders: list[str], samples: int) -> dict[str, Any]:
    """The domain guard's per-request latency for each embedder, measured round-robin prompt by prompt.

    On a shared machine the load drifts over the minutes between two runs; taking
    turns on every prompt puts each embedder under the same load, so their ratio
    holds even when the absolute figures do not.
    """
    import numpy as np

    from turnout.embed import create_embedder
    from turnout.signals.domain import DomainClassifier
    from turnout.signals.examples import read_examples

    rows = read_examples(DATA / "clinc150" / "clinc150.jsonl")
    train = [r for r in rows if r.split == "train"]
    texts = [r.text for r in rows if r.split == "val"]
    texts = [texts[i] for i in np.random.default_rng(1).choice(len(texts), min(samples, len(texts)), replace=False)]
    pipes = {}
    for e in embedders:
        clf = DomainClassifier.fit_examples(train, [], create_embedder(e, progress=False), embedder_name=e)
        live = create_embedder(e, cache=False, progress=False)
        live.embed_one("warm up")
        pipes[e] = (clf, live)
    ms: dict[str, list[float]] = {e: [] for e in embedders}
    for t in texts:
        for e, (clf, live) in pipes.items():
            start = time.perf_counter()
            clf.predict(live.embed_one(t))
            ms[e].append((time.perf_counter() - start) * 1000)
    return {e: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)), "n": len(v)} for e, v in ms.items()}


def _jailbreak_tables(con: Any, rep: dict[str, Any]) -> None:
    """The jailbreak detector's per-source, held-out-source, length-band and probe tables."""
    from rich.table import Table

    from turnout.cli._ui import print_table

    t = Table(title="jailbreak: held-out sources (trained without that source's attacks)")
    for c in ("source", "n", "detection (trained on)", "detection (held out)", "FPR (held out)"):
        t.add_column(c, justify="right")
    for s, r in rep.get("held_out_sources", {}).items():
        t.add_row(
            s,
            str(r["n_test_attacks"]),
            f"{r['detection_trained_on']:.3f}",
            f"{r['detection_held_out']:.3f}",
            f"{r['false_positive_rate_held_out']:.3f}",
        )
    print_table(con, t)
    t = Table(title="jailbreak: by length band (characters)")
    for c in ("band", "attacks", "detected", "benign", "flagged"):
        t.add_column(c, justify="right")
    for band, r in rep["per_length_band"].items():
        a, b = r["attack"], r["benign"]
        t.add_row(band, str(a["n"]), _pct(a["flagged_rate"]), str(b["n"]), _pct(b["flagged_rate"]))
    print_table(con, t)
    probes = rep.get("probes")
    if probes:
        t = Table(title="jailbreak: hand-written probes (bench/probes; not in the shared data, never trained on)")
        for c in ("family", "label", "n", "flagged"):
            t.add_column(c, justify="right")
        for fam, r in probes["per_family"].items():
            t.add_row(fam, r["label"], str(r["n"]), _pct(r["flagged_rate"]))
        print_table(con, t)
    wild = rep.get("wild_benign")
    if wild:
        con.print(
            "jailbreak: false positives on unseen benign prompts: "
            + ", ".join(f"{k} {v['false_positive_rate']:.3f} (n={v['n']})" for k, v in wild.items()),
            markup=False,
        )


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
