"""Bandit learning shared by replicas: what one exchange with Redis costs, and that the replicas end equal.

Two replicas' bandits (cold, a seeded random projection: what two gateways built from one config hold)
exchange through a local ``redis-server`` (no persistence) with :class:`turnout.gateway.bandit_sync.BanditSync`,
as ``bandit.share`` does every ``share_every_s``. Replica A learns ``--updates`` scores between two exchanges;
each exchange of A and of B is timed (a read, a compare-and-set write, a merge). Per fleet size: the blob's
size, the exchange's p50 and p95, and whether both replicas' statistics are equal at the end (they must be).

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bandit_share.py \\
        [--arms 4,11] [--d 24] [--rounds 200] [--json bench/results/bandit_share.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


async def measure(url: str, arms: int, d: int, rounds: int, updates: int, dim: int = 384) -> dict[str, Any]:
    from turnout.gateway.bandit_sync import FIELDS, BanditSync, encode
    from turnout.routing.bandit import BanditRouter
    from turnout.state import RedisCounters
    from turnout.state.shared_stats import RedisSharedStats

    def replica() -> BanditRouter:
        return BanditRouter(models=[f"m{i}" for i in range(arms)], dim=dim, projection="random", d=d)

    a, b = replica(), replica()
    ca, cb = RedisCounters(url, prefix=f"bench-{arms}-{d}:"), RedisCounters(url, prefix=f"bench-{arms}-{d}:")
    sa, sb = BanditSync(a, RedisSharedStats(ca), route="bench"), BanditSync(b, RedisSharedStats(cb), route="bench")
    await sa.sync()
    await sb.sync()
    rng = np.random.default_rng(0)
    times = []
    for _ in range(rounds):
        for _ in range(updates):
            a.update(rng.normal(size=dim), int(rng.integers(arms)), float(rng.random()), 1e-4)
        for sync in (sa, sb):
            t = time.perf_counter()
            await sync.sync()
            times.append(time.perf_counter() - t)
    sa_state, sb_state = a.get_state(), b.get_state()
    blob = encode({f: sa_state[f] for f in FIELDS}, {b"a" * 16: 1, b"b" * 16: 1})
    await ca.aclose()
    await cb.aclose()
    return {
        "arms": arms,
        "features": a.d1,
        "blob_kib": len(blob) / 1024,
        "exchange_ms_p50": float(np.median(times) * 1000),
        "exchange_ms_p95": float(np.percentile(times, 95) * 1000),
        "exchanges": len(times),
        "observations": float(sa_state["n"].sum()),
        "replicas_equal": all(np.allclose(sa_state[f], sb_state[f]) for f in FIELDS),
    }


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.backends._net import free_port

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="4,11", help="fleet sizes (the bandit's arms), comma-separated")
    ap.add_argument("--d", type=int, default=24, help="context features (the bandit's default is 24)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--updates", type=int, default=5, help="scores replica A learns between two exchanges")
    ap.add_argument("--json", default=str(HERE / "results" / "bandit_share.json"))
    args = ap.parse_args(argv)
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            url = f"redis://127.0.0.1:{port}/0"
            rows = [asyncio.run(measure(url, int(k), args.d, args.rounds, args.updates)) for k in args.arms.split(",")]
        finally:
            proc.terminate()
            proc.wait(10)
    t = Table(title=f"bandit sharing through Redis: {args.rounds} rounds, {args.updates} scores on replica A per round")
    for col in ("arms", "features", "blob KiB", "exchange p50 ms", "p95 ms", "exchanges", "replicas equal"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["arms"]),
            str(r["features"]),
            f"{r['blob_kib']:.1f}",
            f"{r['exchange_ms_p50']:.2f}",
            f"{r['exchange_ms_p95']:.2f}",
            str(r["exchanges"]),
            "yes" if r["replicas_equal"] else "[red]NO[/red]",
        )
    Console().print(t)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rounds": args.rounds, "updates": args.updates, "results": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0 if all(r["replicas_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
