"""What does a cascade cost in time to first token? Measured on the embedded fleet (real llama.cpp models).

A cascade must see a step's whole answer before it can accept it, so a streamed request gets its first
token only once an answer is accepted (``docs``: the streaming contract). This script measures that cost
through turnout's gateway (in process, no HTTP: the gateway's own ``chat_stream``), on the embedded
default's two models, for:

* ``<first> live`` / ``<second> live``: each model alone, asked by name, streamed live (the baseline);
* ``cascade kept at step 0``: the cascade with its first threshold at 0 (every judged answer is kept);
* ``cascade escalated, buffer``: threshold 1 (every answer short of certainty escalates), ``stream: buffer``;
* ``cascade escalated, live_last``: the same, but the last step (always kept) streams live;
* ``cascade default``: the embedded default's own cascade route (its calibrated threshold).

Every request asks ``max_tokens`` tokens at temperature 0; the configurations take turns on each prompt
(interleaved, so a slow spell of the shared machine falls on all of them). Reported per
configuration: time to first token (the first chunk with text) and to the end of the stream, p50 and
mean over the prompts, and the share of requests that escalated. Writes ``bench/results/cascade_ttft.json``.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python bench/cascade_ttft.py [--n 10] [--max-tokens 32]

The machine is a 2-core VM shared with other work: compare figures of one run with each other only.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from turnout.gateway.builder import build_gateway

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cascade_ttft.json"
console = Console()
QUESTIONS = ("What is the capital of {}?", "Name a city in {}.", "What language is spoken in {}?")
PLACES = ("France", "Japan", "Italy", "Spain", "Egypt", "Peru", "Kenya", "Norway", "Canada", "Greece", "Chile", "India")


def config(threshold_first: float | None) -> tuple[dict[str, Any], str, str]:
    """The embedded default plus three cascade routes of the same steps (kept, escalated buffered, escalated live)."""
    from turnout.config.default import DEFAULT

    data = copy.deepcopy(DEFAULT)
    data["server"]["request_log"] = None
    data["state"] = {"persist": False}
    base = data["routes"]["cascade"]
    steps = base["plan"]["steps"]
    first, second = steps[0]["model"], steps[1]["model"]

    def variant(threshold: float, stream: str) -> dict[str, Any]:
        r = copy.deepcopy(base)
        r["plan"]["steps"][0]["threshold"] = threshold
        r["plan"]["stream"] = stream
        return r

    data["routes"]["bench-kept"] = variant(0.0, "buffer")
    data["routes"]["bench-escalate-buffer"] = variant(1.0, "buffer")
    data["routes"]["bench-escalate-live"] = variant(1.0, "live_last")
    return data, first, second


async def measure(n: int, max_tokens: int) -> dict[str, Any]:
    from turnout.config import parse_config, resolve
    from turnout.types import ChatRequest

    data, first, second = config(None)
    gw = build_gateway(resolve(parse_config(data, source="<bench>")))
    targets = {
        f"{first} live": first,
        f"{second} live": second,
        "cascade kept at step 0": "bench-kept",
        "cascade escalated, buffer": "bench-escalate-buffer",
        "cascade escalated, live_last": "bench-escalate-live",
        "cascade default": "cascade",
    }
    prompts = [QUESTIONS[i % len(QUESTIONS)].format(PLACES[i % len(PLACES)]) for i in range(n)]
    out: dict[str, Any] = {"first": first, "second": second, "configs": {}}
    await gw.start()
    try:
        # one warm-up request per model: the first request after start-up pays for loading and caches
        for m in (first, second):
            await gw.chat(ChatRequest(model=m, messages=[{"role": "user", "content": "Hi"}], params={"max_tokens": 4}))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("streaming", total=n * len(targets))
            ttft: dict[str, list[float]] = {label: [] for label in targets}
            total: dict[str, list[float]] = {label: [] for label in targets}
            escalated = dict.fromkeys(targets, 0)
            # interleaved (every configuration on one prompt, then the next prompt): a shared machine's slow
            # spells then fall on every configuration alike instead of on whichever ran during them
            for p in prompts:
                for label, model in targets.items():
                    req = ChatRequest(
                        model=model,
                        messages=[{"role": "user", "content": p}],
                        stream=True,
                        params={"max_tokens": max_tokens, "temperature": 0.0},
                    )
                    t0 = time.perf_counter()
                    session = await gw.chat_stream(req)
                    first_at = None
                    async for chunk in session:
                        if chunk.text and first_at is None:
                            first_at = time.perf_counter() - t0
                    total[label].append(time.perf_counter() - t0)
                    ttft[label].append(first_at if first_at is not None else total[label][-1])
                    escalated[label] += any(a.accepted is False for a in session.attempts)
                    bar.advance(task)
            for label, model in targets.items():
                t, e = ttft[label], total[label]
                out["configs"][label] = {
                    "model": model,
                    "ttft_p50_s": statistics.median(t),
                    "ttft_mean_s": statistics.fmean(t),
                    "total_p50_s": statistics.median(e),
                    "total_mean_s": statistics.fmean(e),
                    "escalated": escalated[label] / n,
                    "ttft_s": t,
                    "total_s": e,
                }
    finally:
        await gw.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10, help="prompts per configuration")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    res = asyncio.run(measure(args.n, args.max_tokens))
    t = Table(title=f"time to first token through the gateway ({args.n} prompts, {args.max_tokens} tokens, greedy)")
    for col in ("configuration", "TTFT p50 s", "TTFT mean s", "end p50 s", "end mean s", "escalated"):
        t.add_column(col)
    for label, v in res["configs"].items():
        t.add_row(
            label,
            f"{v['ttft_p50_s']:.3f}",
            f"{v['ttft_mean_s']:.3f}",
            f"{v['total_p50_s']:.3f}",
            f"{v['total_mean_s']:.3f}",
            f"{v['escalated']:.2f}",
        )
    console.print(t)
    res.update(
        n=args.n,
        max_tokens=args.max_tokens,
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        machine="2-core VM shared with other agents; timings are noisy",
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
