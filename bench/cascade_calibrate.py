"""Which order and which threshold make a useful cascade on the embedded fleet? Measured on real answers.

The embedded default serves two tiny llama.cpp models: SmolLM2-135M-Instruct (chat) and Gemma 3 270M (a
base model behind a ``Question: ... Answer:`` completion template). This script asks both of them a set of
short questions with known answers (sums of small numbers, capitals, opposites: what such models can
sometimes get right), through turnout's own gateway and backends (``logprobs: true, top_logprobs: 2``, as a
cascade step asks), and records for every answer: right or wrong, its cost at the default fleet's prices,
and the confidence of each log-probability signal (``logprob_mean``, ``logprob_min``, ``margin``).

The prompts are split once (seeded, stratified by family) into train and test halves. Everything is
chosen on train: for each order (SmolLM2 → Gemma, Gemma → SmolLM2) and signal, the threshold for each
target escalation share (``threshold_for_share`` on the training confidences), and the configuration the
embedded default should use (the best training accuracy; on a tie the lower escalation share). Test
figures are reported for every configuration, next to each model alone.

Writes ``bench/results/cascade_calibrate.json`` and, with ``--sample OUT.jsonl``, the calibration sample a
cascade's ``calibrate: {sample: OUT.jsonl, target_escalation: ...}`` reads (one row per prompt, model and
signal, with its split: the gateway uses the train rows only).

    OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python bench/cascade_calibrate.py [--sample out/cascade_sample.jsonl]

Timings and answers depend on the machine (2 shared cores here); greedy decoding makes the answers repeatable.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from turnout.gateway.builder import build_gateway

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cascade_calibrate.json"
SIGNALS = ("logprob_mean", "logprob_min", "margin")
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
console = Console()

CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Russia": "Moscow",
    "China": "Beijing",
    "Egypt": "Cairo",
    "England": "London",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Hungary": "Budapest",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Cuba": "Havana",
    "Thailand": "Bangkok",
    "Denmark": "Copenhagen",
    "Finland": "Helsinki",
    "Belgium": "Brussels",
    "Turkey": "Ankara",
    "Argentina": "Buenos Aires",
    "South Korea": "Seoul",
    "Vietnam": "Hanoi",
}
OPPOSITES = {
    "hot": "cold",
    "up": "down",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "wet": "dry",
    "old": "young",
    "hard": "soft",
    "rich": "poor",
    "strong": "weak",
    "high": "low",
    "left": "right",
    "day": "night",
    "win": "lose",
    "push": "pull",
    "black": "white",
    "in": "out",
    "thick": "thin",
    "loud": "quiet",
    "first": "last",
    "true": "false",
    "buy": "sell",
    "north": "south",
    "inside": "outside",
    "before": "after",
    "always": "never",
}


def prompts(seed: int = 7) -> list[dict[str, Any]]:
    """The question set: 30 sums, 30 capitals, 30 opposites, each with its answer and a train/test split."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(30):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        out.append({"id": f"sum{i}", "family": "sum", "prompt": f"What is {a} + {b}?", "answer": str(a + b)})
    for country, city in CAPITALS.items():
        out.append({"id": f"cap-{country}", "family": "capital", "prompt": f"What is the capital of {country}?", "answer": city})
    for word, opposite in OPPOSITES.items():
        out.append(
            {"id": f"opp-{word}", "family": "opposite", "prompt": f"What is the opposite of '{word}'?", "answer": opposite}
        )
    for family in ("sum", "capital", "opposite"):
        rows = [r for r in out if r["family"] == family]
        rng.shuffle(rows)
        for j, r in enumerate(rows):
            r["split"] = "train" if j % 2 == 0 else "test"
    return out


def is_right(item: dict[str, Any], text: str) -> bool:
    """Whether the answer's first line gives the known answer (a sum: its last number; else the word)."""
    first = text.strip().split("\n")[0][:120].lower()
    if item["family"] == "sum":
        nums = re.findall(r"-?\d+", first)
        return bool(nums) and nums[-1] == item["answer"]
    return re.search(rf"\b{re.escape(item['answer'].lower())}\b", first) is not None


def auc(conf: np.ndarray, right: np.ndarray) -> float | None:
    """P(a right answer's confidence > a wrong one's), ties half; unjudged answers count as 0 confidence."""
    c = np.nan_to_num(conf, nan=0.0)
    pos, neg = c[right], c[~right]
    if not len(pos) or not len(neg):
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


async def collect(items: list[dict[str, Any]], max_tokens: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ask both embedded models every question (logprobs on, greedy); one record per (question, model)."""
    from turnout.config import parse_config, resolve
    from turnout.config.default import DEFAULT
    from turnout.gateway.cascade import read_logprobs
    from turnout.routing.acceptance import AnswerView, create_signal, judge
    from turnout.types import ChatRequest

    data = copy.deepcopy(DEFAULT)
    data["server"]["request_log"] = None
    data["state"] = {"persist": False}
    gw = build_gateway(resolve(parse_config(data, source="<embedded default>")))
    models = list(data["models"])
    signals = {s: create_signal(s) for s in SIGNALS}
    records: list[dict[str, Any]] = []
    await gw.start()
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("asking both models", total=len(items) * len(models))
            for item in items:
                for m in models:  # one at a time: the two children share 2 cores
                    req = ChatRequest(
                        model=m,
                        messages=[{"role": "user", "content": item["prompt"]}],
                        params={"max_tokens": max_tokens, "temperature": 0.0, "logprobs": True, "top_logprobs": 2},
                    )
                    t0 = time.perf_counter()
                    resp, _, attempts = await gw.chat(req)
                    wall = time.perf_counter() - t0
                    text = resp.content or ""
                    lps, margins = read_logprobs(resp.body)
                    view = AnswerView(prompt=item["prompt"], answer=text, model=m, token_logprobs=lps, top2_margins=margins)
                    conf = {s: judge(sig, view) for s, sig in signals.items()}
                    records.append(
                        {
                            "id": item["id"],
                            "family": item["family"],
                            "split": item["split"],
                            "model": m,
                            "answer": text,
                            "right": is_right(item, text),
                            "confidence": conf,
                            "cost_usd": sum(a.cost_usd for a in attempts),
                            "latency_s": wall,
                            "tokens": len(lps or []),
                        }
                    )
                    bar.advance(task)
    finally:
        await gw.aclose()
    return records, {"models": models, "prices": {m: data["models"][m]["price"] for m in models}}


def analyse(records: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Single models, signal AUCs, and every (order, signal, share) cascade: thresholds on train, figures on both."""
    from turnout.routing.thresholds import escalates, threshold_for_share

    ids = list(dict.fromkeys(r["id"] for r in records))
    by = {(r["id"], r["model"]): r for r in records}
    split = np.array([by[(i, models[0])]["split"] for i in ids])
    right = {m: np.array([by[(i, m)]["right"] for i in ids]) for m in models}
    cost = {m: np.array([by[(i, m)]["cost_usd"] for i in ids]) for m in models}
    conf = {
        (m, s): np.array([np.nan if (c := by[(i, m)]["confidence"][s]) is None else c for i in ids])
        for m in models
        for s in SIGNALS
    }
    out: dict[str, Any] = {
        "n": {sp: int((split == sp).sum()) for sp in ("train", "test")},
        "single": {},
        "auc": {},
        "cascades": [],
    }
    for m in models:
        out["single"][m] = {
            sp: {"accuracy": float(right[m][split == sp].mean()), "mean_cost": float(cost[m][split == sp].mean())}
            for sp in ("train", "test")
        }
        out["single"][m]["mean_latency_s"] = float(np.mean([by[(i, m)]["latency_s"] for i in ids]))
        for s in SIGNALS:
            out["auc"][f"{m}/{s}"] = {sp: auc(conf[(m, s)][split == sp], right[m][split == sp]) for sp in ("train", "test")}
    for first, second in ((models[0], models[1]), (models[1], models[0])):
        for s in SIGNALS:
            tr = split == "train"
            for share in SHARES:
                th = threshold_for_share(conf[(first, s)][tr], share)
                esc = escalates(conf[(first, s)], th)
                ok = np.where(esc, right[second], right[first])
                c = cost[first] + np.where(esc, cost[second], 0.0)
                out["cascades"].append(
                    {
                        "order": f"{first}->{second}",
                        "signal": s,
                        "share_target": share,
                        "threshold": None if not np.isfinite(th) else th,
                        **{
                            sp: {
                                "accuracy": float(ok[split == sp].mean()),
                                "mean_cost": float(c[split == sp].mean()),
                                "escalated": float(esc[split == sp].mean()),
                            }
                            for sp in ("train", "test")
                        },
                    }
                )
    # chosen on train only: the best training accuracy; on a tie, less escalation (cheaper)
    best = max(out["cascades"], key=lambda e: (round(e["train"]["accuracy"], 9), -e["share_target"]))
    out["chosen"] = best
    return out


def report(res: dict[str, Any]) -> None:
    t = Table(title="single models (greedy, 16 tokens)")
    for col in ("model", "train acc", "test acc", "test mean cost (USD)", "mean latency s"):
        t.add_column(col)
    for m, v in res["single"].items():
        t.add_row(
            m,
            f"{v['train']['accuracy']:.3f}",
            f"{v['test']['accuracy']:.3f}",
            f"{v['test']['mean_cost']:.3g}",
            f"{v['mean_latency_s']:.2f}",
        )
    console.print(t)
    t = Table(title="AUC of each signal for 'this model's answer is right'")
    for col in ("model/signal", "train", "test"):
        t.add_column(col)
    for k, v in res["auc"].items():
        t.add_row(k, *(f"{v[sp]:.3f}" if v[sp] is not None else "-" for sp in ("train", "test")))
    console.print(t)
    t = Table(title="cascades: threshold from the train share; test figures")
    for col in ("order", "signal", "share", "threshold", "train acc", "test acc", "test cost", "test escalated"):
        t.add_column(col)
    for e in res["cascades"]:
        if e["share_target"] in (0.0, 0.2, 0.3, 0.5, 0.7, 1.0):
            t.add_row(
                e["order"],
                e["signal"],
                f"{e['share_target']:.1f}",
                "-" if e["threshold"] is None else f"{e['threshold']:.3f}",
                f"{e['train']['accuracy']:.3f}",
                f"{e['test']['accuracy']:.3f}",
                f"{e['test']['mean_cost']:.3g}",
                f"{e['test']['escalated']:.2f}",
            )
    console.print(t)
    c = res["chosen"]
    console.print(
        f"chosen on train: {c['order']} by {c['signal']} at share {c['share_target']} (threshold "
        f"{c['threshold']}): test accuracy {c['test']['accuracy']:.3f}, cost {c['test']['mean_cost']:.3g}, "
        f"escalated {c['test']['escalated']:.2f}"
    )


def write_sample(records: list[dict[str, Any]], path: Path) -> None:
    """The calibration sample a cascade's ``calibrate:`` reads: one row per (prompt, model, signal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.writelines(
                json.dumps(
                    {
                        "prompt_id": r["id"],
                        "model": r["model"],
                        "signal": s,
                        "confidence": r["confidence"][s],
                        "cost_usd": r["cost_usd"],
                        "split": r["split"],
                    }
                )
                + "\n"
                for s in SIGNALS
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--sample", type=Path, default=None, help="also write the calibration sample (JSONL)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0, help="only the first N questions of each family (a smoke run)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    items = prompts()
    if args.limit:
        items = [r for f in ("sum", "capital", "opposite") for r in [x for x in items if x["family"] == f][: args.limit]]
    t0 = time.perf_counter()
    records, meta = asyncio.run(collect(items, args.max_tokens))
    res = analyse(records, meta["models"])
    report(res)
    res.update(
        meta=meta,
        max_tokens=args.max_tokens,
        wall_s=time.perf_counter() - t0,
        records=records,
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        machine="2-core VM shared with other agents; timings are noisy",
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    if args.sample is not None:
        write_sample(records, args.sample)
    console.print(f"wrote {args.json}" + (f" and {args.sample}" if args.sample else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
