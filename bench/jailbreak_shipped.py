"""The jailbreak detector turnout ships: train it on licensed rows only, write the package artifact, measure it.

The shared training file mixes llm-warden (MIT) with Lakera Gandalf and Mosscap rows (via parapet, no stated
licence). An artifact inside turnout's wheel may only learn from rows whose licence allows it, so the shipped
detector (``src/turnout/signals/data/jailbreak-EMBEDDER.npz`` for ``minilm`` and ``minilm-int8``, used by the
``jailbreak`` gateway stage when no ``artifact`` is given) is fitted on:

* ``guards/jailbreak/train.jsonl`` rows with ``source == "llm-warden"`` (MIT): attacks and benign prompts;
* extra benign prompts: CLINC150's train rows (CC BY 3.0, clinc/oos-eval; attribution kept in the artifact's
  provenance) and dcrouter's train prompts (LLMRouter, MIT), as ``turnout signals train --benign`` does.

It is then measured on ``dev.jsonl`` (every source: Gandalf and Mosscap attacks are *evaluated*, never fitted),
on unseen benign prompts (CLINC150 val, dcrouter test, the medical question pairs) and on the hand-written probes,
next to (with ``--compare-full``) the same detector fitted on every training row, which shows what leaving the
unlicensed rows out costs. Thresholds are the detector's own rule on the training rows; nothing is tuned on dev.

    OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python bench/jailbreak_shipped.py [--embedder minilm|minilm-int8]
        [--compare-full] [--data ../shared/data] [--out FILE.npz] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA_DIR = REPO / "src" / "turnout" / "signals" / "data"
RESULTS = HERE / "results" / "jailbreak_shipped_{embedder}.json"
#: the training rows whose licence allows shipping a model fitted on them
LICENSED_SOURCES = ("llm-warden",)
#: the embedded default blocks from this score and flags below it: set a priori (rule hits score 0.99), not tuned
ACT_AT = 0.9
console = Console(width=max(120, Console().width))


def _licensed_rows(train: Path, tmp: Path) -> tuple[Path, int]:
    """The licensed rows of ``train`` written to a JSONL file of their own (the fitting code reads files)."""
    out = tmp / "jailbreak-licensed.jsonl"
    n = 0
    with open(train, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip() and json.loads(line).get("source") in LICENSED_SOURCES:
                dst.write(line)
                n += 1
    return out, n


def _fit(train: Path, benign: Sequence[Path], provenance: dict[str, Any], embedder: str) -> Any:
    from turnout.embed import create_embedder
    from turnout.signals.examples import read_examples, read_texts
    from turnout.signals.jailbreak import JailbreakDetector

    emb = create_embedder(embedder)  # the disk cache makes reruns cheap
    rows = [r for r in read_examples(train) if r.split in (None, "train")]
    return JailbreakDetector.fit(
        [r.text for r in rows],
        [str(r.label) for r in rows],
        emb,
        embedder_name=embedder,
        sources=[r.source for r in rows],
        extra_benign=read_texts(list(benign)),
        provenance=provenance,
    )


def _evaluate(artifact: Path, data: Path, embedder: str) -> dict[str, Any]:
    from turnout.evaluation.guards import evaluate_jailbreak

    wild = [
        data / "clinc150" / "clinc150.jsonl",
        data / "dcrouter" / "dcrouter.parquet",
        data / "guards" / "cache_pairs" / "mqp.jsonl",
    ]
    probes = HERE / "probes" / "jailbreak_probes.jsonl"
    return evaluate_jailbreak(
        str(data / "guards" / "jailbreak" / "dev.jsonl"),
        artifact=str(artifact),
        embedder=embedder,
        wild=[str(w) for w in wild if w.exists()],
        probes=str(probes) if probes.exists() else None,
        latency_samples=200,
    )


def _tiers(artifact: Path, data: Path, levels: Sequence[float], embedder: str) -> dict[str, Any]:
    """Detection and false positives when only scores >= each level count (the stage's ``act_at``)."""
    import numpy as np

    from turnout.embed import create_embedder
    from turnout.signals.examples import read_examples, read_texts
    from turnout.signals.jailbreak import JailbreakDetector

    emb = create_embedder(embedder)
    det = JailbreakDetector.load(artifact, emb)
    dev = read_examples(data / "guards" / "jailbreak" / "dev.jsonl")
    texts = [r.text for r in dev]
    y = np.array([r.label == "attack" for r in dev])
    dev_scores = np.array([v.score for v in det.score_batch(texts, emb.embed(texts))])
    wild = {
        "clinc150 val": [data / "clinc150" / "clinc150.jsonl"],
        "dcrouter test": [data / "dcrouter" / "dcrouter.parquet"],
        "mqp": [data / "guards" / "cache_pairs" / "mqp.jsonl"],
    }
    wild_scores = {}
    for name, paths in wild.items():
        if all(p.exists() for p in paths):
            w = read_texts(paths, splits=("val", "test"))
            wild_scores[name] = np.array([v.score for v in det.score_batch(w, emb.embed(w))])
    out = {}
    for level in levels:
        out[f"{level:.4f}"] = {
            "dev_detection": float(np.mean(dev_scores[y] >= level)),
            "dev_fpr": float(np.mean(dev_scores[~y] >= level)),
            **{f"fpr {k}": float(np.mean(v >= level)) for k, v in wild_scores.items()},
        }
    return out


def _row(name: str, rep: dict[str, Any]) -> list[str]:
    src = rep["per_source"]

    def rate(source: str, label: str) -> str:
        v = src.get(source, {}).get("by_label", {}).get(label, {}).get("flagged_rate")
        return "—" if v is None else f"{v:.3f}"

    wild = rep.get("wild_benign", {})
    probes = rep.get("probes") or {}
    return [
        name,
        f"{rep['detection_rate']:.3f}",
        f"{rep['false_positive_rate']:.3f}",
        f"{rep['auc']:.3f}",
        rate("gandalf", "attack"),
        rate("mosscap", "attack"),
        rate("llm-warden", "attack"),
        " / ".join(f"{w['false_positive_rate']:.3f}" for w in wild.values()) or "—",
        f"{probes.get('detection_rate', float('nan')):.2f} / {probes.get('false_positive_rate', float('nan')):.2f}",
        f"{rep['threshold']:.3f}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--embedder", default="minilm", help="minilm (the default stage's) or minilm-int8")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the shipped artifact is written (default: the package's data/jailbreak-EMBEDDER.npz)",
    )
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/jailbreak_shipped_EMBEDDER.json")
    ap.add_argument(
        "--compare-full",
        action="store_true",
        help="also fit on every training row (unlicensed ones included; never shipped) and measure it",
    )
    args = ap.parse_args(argv)
    args.out = args.out or DATA_DIR / f"jailbreak-{args.embedder}.npz"
    args.json = args.json or Path(str(RESULTS).format(embedder=args.embedder))
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        console.print("[yellow]OPENBLAS_NUM_THREADS is not 1: latency figures will be inflated (docs/guards.md)")
    data = args.data
    train = data / "guards" / "jailbreak" / "train.jsonl"
    benign = [data / "clinc150" / "clinc150.jsonl", data / "dcrouter" / "dcrouter.parquet"]
    for p in [train, *benign]:
        if not p.exists():
            console.print(f"[red]{p} is missing: point --data (or TURNOUT_DATA) at the shared data folder")
            return 2
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="turnout-jb-") as tmp:
        licensed, n = _licensed_rows(train, Path(tmp))
        t0 = time.perf_counter()
        det = _fit(
            licensed,
            benign,
            {
                "train": f"guards/jailbreak/train.jsonl, rows with source in {list(LICENSED_SOURCES)} ({n} rows)",
                "benign": ["clinc150/clinc150.jsonl (train rows)", "dcrouter/dcrouter.parquet (train prompts)"],
                "licences": {
                    "llm-warden": "MIT (jackhhao/llm-warden)",
                    "clinc150": "CC BY 3.0 (clinc/oos-eval: Larson et al., 2019)",
                    "dcrouter": "MIT (ulab-uiuc/LLMRouter)",
                },
                "left_out": "Lakera Gandalf and Mosscap rows (via Parapet-Tech/parapet): no stated licence",
                "built_by": "bench/jailbreak_shipped.py",
            },
            args.embedder,
        )
        fit_s = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        det.save(args.out)
        console.print(
            f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB; fitted in {fit_s:.0f} s; threshold {det.threshold:.4f})"
        )
        reports["shipped (llm-warden + benign)"] = _evaluate(args.out, data, args.embedder) | {"fit_s": fit_s}
        # the jailbreak stage may act only from a higher score (act_at) and flag the rest: both tiers measured
        tiers = _tiers(args.out, data, [det.threshold, ACT_AT], args.embedder)
        if args.compare_full:
            full = _fit(train, benign, {"train": "guards/jailbreak/train.jsonl (every row; not shippable)"}, args.embedder)
            path = Path(tmp) / "full.npz"
            full.save(path)
            reports["every training row (not shipped)"] = _evaluate(path, data, args.embedder)

    table = Table(
        title=f"Jailbreak detector ({args.embedder}) on guards/jailbreak/dev.jsonl (thresholds chosen on training rows only)"
    )
    for col in (
        "detector",
        "det.",
        "FPR",
        "AUC",
        "gandalf",
        "mosscap",
        "llm-warden",
        "unseen benign FPR",
        "probes det./FPR",
        "thr.",
    ):
        table.add_column(col, justify="left" if col == "detector" else "right")
    for name, rep in reports.items():
        table.add_row(*_row(name, rep))
    console.print(table)
    console.print(
        "gandalf / mosscap / llm-warden: detection per attack source; unseen benign FPR: CLINC150 val / "
        "dcrouter test / medical question pairs (never fitted)"
    )
    tt = Table(title="Shipped detector: acting only from a score (act_at) — dev and unseen benign prompts")
    first = next(iter(tiers.values()))
    for col in ("score >=", *first):
        tt.add_column(col, justify="right")
    for level, row in tiers.items():
        tt.add_row(level, *(f"{v:.3f}" for v in row.values()))
    console.print(tt)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "bench": "jailbreak_shipped",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "artifact": str(args.out),
                "reports": reports,
                "tiers": tiers,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
