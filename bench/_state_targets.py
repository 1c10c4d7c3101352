"""The shared-state targets of ``bench/gateway_overhead.py``: a keyed turnout, replicas behind nginx, their figures.

``turnout-keyed`` and ``turnout-redis`` serve requests of one API key whose USD budget and ``rpm``/``tpm``
limits are never reached, so every request pays for the hold, the rate windows and the settlements
without ever being refused; ``nginx-1`` / ``nginx-2`` are one and two such replicas sharing one Redis
behind nginx (``deploy/replicas.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
#: the key the state targets are called with
BENCH_KEY = "sk-bench-state"


def bench_keys() -> list[dict[str, object]]:
    """The ``keys`` section of the state targets' configs: one key, a budget and limits never reached."""
    return [
        {
            "name": "bench",
            "key_sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest(),
            "budget_usd": 1e9,
            "rpm": 10**9,
            "tpm": 10**12,
        }
    ]


def replicas_behind_nginx(tmp: Path, upstream: str, n: int) -> Any:
    """``n`` keyed turnout replicas sharing one Redis behind nginx (deploy/replicas.py), in front of ``upstream``."""
    spec = importlib.util.spec_from_file_location("deploy_replicas", REPO / "deploy" / "replicas.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["deploy_replicas"] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.Deployment(
        replicas=n,
        engines="scripted",
        upstreams=[upstream],
        workdir=tmp / f"nginx-{n}",
        extra={"keys": bench_keys(), "health": {"interval_s": 5.0, "active": False}},
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def state_comparisons(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float | None]:
    """Redis against in-process state (one replica), and two replicas against one behind nginx, per level."""
    out: dict[str, float | None] = {}
    if "turnout-keyed" in results and "turnout-redis" in results:
        for lvl, r in results["turnout-redis"].items():
            k = results["turnout-keyed"].get(lvl)
            if k:
                out[f"redis - in-process p50 ms {lvl}"] = r["p50_ms"] - k["p50_ms"]
                out[f"redis - in-process p99 ms {lvl}"] = r["p99_ms"] - k["p99_ms"]
                out[f"redis / in-process req/s {lvl}"] = _ratio(r["rps"], k["rps"])
    if "nginx-1" in results and "nginx-2" in results:
        for lvl, two in results["nginx-2"].items():
            one = results["nginx-1"].get(lvl)
            if one:
                out[f"2 / 1 replicas req/s {lvl}"] = _ratio(two["rps"], one["rps"])
    return out


def print_state_table(console: Console, state: dict[str, float | None]) -> None:
    if not state:
        return
    t = Table(title="shared state: Redis against in-process (one replica), and 2 replicas against 1 behind nginx")
    t.add_column("comparison")
    t.add_column("value", justify="right")
    for k, v in state.items():
        t.add_row(k, "—" if v is None else f"{v:.2f}")
    console.print(t)
