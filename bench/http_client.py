"""The upstream HTTP client, side by side: turnout's own (hardened) client, aiohttp and httpx.

One non-streamed POST round trip (a small chat request, a small JSON answer),
through each client behind turnout's ``Transport`` seam (``send`` then
``read``), against the same loopback upstream: ``python -m
turnout.testing.scripted`` in its own process, so its CPU is not counted here.

* ``native``: :class:`turnout.backends._http.NativeTransport` (the default);
* ``aiohttp``: an aiohttp ``ClientSession`` behind the same seam (``AiohttpTransport``
  below, local to this bench);
* ``httpx``: :class:`turnout.backends._http.HttpxTransport` over an ``httpx.AsyncClient``.

Each client runs ``--rounds`` times, the clients interleaved round by round
(so a load change on a shared machine hits all of them alike), at concurrency
1 and 64, each with one keep-alive pool. Reported: wall latency p50/p99 (µs),
client CPU per request (µs: this process's CPU time over the run, divided by
the requests; the upstream runs elsewhere), throughput. The issue's rule: keep
the native client unless aiohttp is within 0.1 ms p50 of it at concurrency 1.

    python bench/http_client.py [--n1 2000] [--n64 6000] [--rounds 3] [--loop uvloop|asyncio] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from turnout.backends._h1 import Limits, ResponseTooLarge, bounded_lines, check_request_headers
from turnout.backends._http import HttpxTransport, NativeTransport, Transport, WireResponse

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "http_client.json"
console = Console()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
BODY = json.dumps(
    {
        "model": "scripted",
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours of the rainbow, please, and nothing else."},
        ],
    }
).encode()


class _AiohttpResponse:
    """An aiohttp answer behind the WireResponse shape (bounded as the native one is)."""

    def __init__(self, resp: Any, limits: Limits) -> None:
        self._resp = resp
        self._limits = limits
        self.status = resp.status
        self.reason = resp.reason or ""

    async def read(self) -> bytes:
        if (self._resp.content_length or 0) > self._limits.body:
            raise ResponseTooLarge("declared body over the limit")
        data: bytes = await self._resp.content.read(self._limits.body + 1)
        if len(data) > self._limits.body:
            raise ResponseTooLarge("body over the limit")
        return data

    async def _pieces(self) -> AsyncIterator[bytes]:
        async for piece in self._resp.content.iter_any():
            yield piece

    def iter_lines(self) -> AsyncIterator[str]:
        return bounded_lines(self._pieces(), self._limits.line)

    async def aclose(self) -> None:
        self._resp.release()


class AiohttpTransport:
    """turnout's Transport seam over an aiohttp ClientSession (one pool of ``max_connections``)."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str], *, max_connections: int = 256, limits: Limits | None = None
    ) -> None:
        import aiohttp

        check_request_headers(headers)
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.limits = limits or Limits()
        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def send(self, method: str, path: str, body: bytes, *, connect_timeout: float) -> WireResponse:
        timeout = self._aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        resp = await self.session.request(method, self.base_url + path, data=body, headers=self.headers, timeout=timeout)
        return _AiohttpResponse(resp, self.limits)

    async def aclose(self) -> None:
        await self.session.close()


def make_client(kind: str, base_url: str, concurrency: int) -> Transport:
    if kind == "native":
        return NativeTransport(base_url, HEADERS, max_connections=concurrency)
    if kind == "aiohttp":
        return AiohttpTransport(base_url, HEADERS, max_connections=concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return HttpxTransport(httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None)), base_url, HEADERS, owned=True)


async def run_one(kind: str, base_url: str, concurrency: int, n: int, advance: Callable[[int], None]) -> dict[str, Any]:
    """``n`` round trips at ``concurrency`` through a fresh client (after a warm-up that fills its pool)."""
    client = make_client(kind, base_url, concurrency)
    latencies: list[float] = []
    errors = 0

    async def one(record: bool) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            resp = await client.send("POST", "/chat/completions", BODY, connect_timeout=5.0)
            data = await resp.read()
            await resp.aclose()
            if resp.status != 200 or b"choices" not in data:
                errors += 1
        except Exception:  # noqa: BLE001 - counted and reported, the bench goes on
            errors += 1
        if record:
            latencies.append(time.perf_counter() - t0)

    async def worker(count: int, record: bool) -> None:
        for _ in range(count):
            await one(record)
            if record:
                advance(1)

    try:
        await asyncio.gather(*(worker(max(2, 200 // concurrency), False) for _ in range(concurrency)))
        per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(k, True) for k in per))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await client.aclose()
    return {"latencies": latencies, "cpu_s": cpu, "wall_s": wall, "errors": errors}


def start_upstream() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout.testing.scripted", "--port", "0", "--text", "red, orange, yellow"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"the scripted upstream did not start: {line!r}")
    return proc, line.rsplit("listening on ", 1)[1].strip()


def summarise(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    lat = np.array([x for r in runs for x in r["latencies"]]) * 1e6
    cpu = sum(r["cpu_s"] for r in runs) / (n * len(runs)) * 1e6
    return {
        "p50_us": float(np.percentile(lat, 50)),
        "p99_us": float(np.percentile(lat, 99)),
        "cpu_us": cpu,
        "rps": n * len(runs) / sum(r["wall_s"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "round_p50_us": [float(np.percentile(np.array(r["latencies"]) * 1e6, 50)) for r in runs],
    }


async def bench(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    plan = [(c, n) for c, n in ((1, args.n1), (64, args.n64)) if n]
    kinds = args.clients.split(",")
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {k: {c: [] for c, _ in plan} for k in kinds}
    total = sum(n for _, n in plan) * len(kinds) * args.rounds
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("round trips", total=total)
        for rnd in range(args.rounds):
            for c, n in plan:
                for kind in kinds:
                    progress.update(task, description=f"round {rnd + 1}/{args.rounds} {kind} c={c}")
                    raw[kind][c].append(await run_one(kind, base_url, c, n, lambda k: progress.advance(task, k)))
    return {kind: {str(c): summarise(raw[kind][c], n) for c, n in plan} for kind in kinds}


def report(results: dict[str, Any]) -> str:
    table = Table(title="one non-streamed POST round trip, loopback upstream (µs)")
    for col in ("client", "conc.", "p50", "p99", "CPU/req", "req/s", "errors", "p50 per round"):
        table.add_column(col, justify="left" if col == "client" else "right")
    for kind, by_c in results.items():
        for c, r in by_c.items():
            table.add_row(
                kind,
                c,
                f"{r['p50_us']:.0f}",
                f"{r['p99_us']:.0f}",
                f"{r['cpu_us']:.0f}",
                f"{r['rps']:.0f}",
                str(r["errors"]),
                " / ".join(f"{x:.0f}" for x in r["round_p50_us"]),
            )
    console.print(table)
    if "native" in results and "aiohttp" in results and "1" in results["native"]:
        nat, aio = results["native"], results["aiohttp"]
        gap = statistics.median(aio["1"]["round_p50_us"]) - statistics.median(nat["1"]["round_p50_us"])
        rule = "within" if gap <= 100 else "not within"
        line = f"aiohttp - native, median round p50 at concurrency 1: {gap:+.0f} µs ({rule} the issue's 0.1 ms rule)"
        if "64" in nat and "64" in aio:
            line += (
                f"; at concurrency 64: {aio['64']['rps']:.0f} vs {nat['64']['rps']:.0f} req/s, "
                f"{aio['64']['cpu_us']:.0f} vs {nat['64']['cpu_us']:.0f} µs CPU per request"
            )
        console.print(line)
        return line
    return ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n1", type=int, default=2000, help="requests per round at concurrency 1 (0 skips)")
    p.add_argument("--n64", type=int, default=6000, help="requests per round at concurrency 64 (0 skips)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", default="native,aiohttp,httpx")
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the client's event loop (turnout serve runs on uvloop when it is installed)",
    )
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args()
    proc, base_url = start_upstream()
    try:
        if args.loop == "uvloop":
            import uvloop

            results = uvloop.run(bench(args, base_url))
        else:
            results = asyncio.run(bench(args, base_url))
    finally:
        proc.terminate()
        proc.wait(10)
    decision = report(results)
    versions = {"python": platform.python_version(), "httpx": httpx.__version__}
    try:
        import aiohttp

        versions["aiohttp"] = aiohttp.__version__
    except ImportError:
        pass
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "bench": "http_client",
                "loop": args.loop,
                "rounds": args.rounds,
                "n1": args.n1,
                "n64": args.n64,
                "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs (shared while measured)",
                "versions": versions,
                "decision": decision,
                "results": results,
                "median_round_p50_us": {
                    k: {c: statistics.median(r["round_p50_us"]) for c, r in v.items()} for k, v in results.items()
                },
            },
            indent=2,
        )
    )
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
