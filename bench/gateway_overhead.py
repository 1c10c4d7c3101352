"""Gateway overhead: what does turnout add on top of a fixed-latency backend, next to LiteLLM?

Setup (every server is its own process, on loopback):

* upstream: ``python -m turnout.testing.scripted`` answering every chat request
  after a fixed ``--latency-ms`` (20 ms by default), non-streaming;
* targets, one at a time so no two gateways compete for the 2 cores:
  ``direct`` (the upstream itself), ``forwarder`` (``bench/_forwarder.py``, a
  keep-alive forwarder that parses nothing but the framing: what one more
  Python process on the path costs before any gateway does any work),
  ``turnout`` with a concrete model,
  ``turnout-auto`` (route ``auto``: MiniLM embedding of each prompt + a kNN
  router artifact + the policy), and ``litellm`` (its proxy from
  ``.bench-venv``, created here on first run, started offline with
  ``LITELLM_LOCAL_MODEL_COST_MAP=True``);
* the cost of shared state, side by side: ``turnout-keyed`` (an API key with a
  USD budget and ``rpm``/``tpm`` limits, so every request holds, settles and
  updates its rate windows, in process) and ``turnout-redis`` (the same key,
  the state in a local ``redis-server``: three Lua round trips per request and
  the feedback index written behind); then ``nginx-1`` and ``nginx-2``: one and
  two such replicas behind Debian's nginx (``deploy/replicas.py``), sharing one
  Redis, for throughput at concurrency 64 against one replica;
* ``turnout-before`` and ``turnout-auto-before`` (with ``--before-src``): the same configs served by an earlier
  turnout (a git worktree's ``src/``), side by side with the current code;
  ``turnout-auto-int8``: route ``auto`` embedding with MiniLM int8 instead of fp32;
* ``turnout-typical``: ``turnout-guards`` plus the issue's typical signals (language, keyword, domain) read by
  one decision rule;
* ``turnout-guards``: ``turnout`` plus the typical guard stages (a CLINC150
  domain guard flagging out-of-scope prompts, the shipped jailbreak detector,
  PII redaction, the semantic cache; every prompt is new, so every request pays
  a cache miss, a lookup and a store), measured beside plain ``turnout`` in the
  same run (``--only turnout,turnout-guards``);
* the load generator is *this* process (httpx, asyncio, one keep-alive pool of
  ``concurrency`` connections): it runs beside the servers rather than inside
  them, so it does not take CPU from the server's event loop, but on a 2-core
  machine it still shares the machine. Every request carries a distinct prompt,
  tagged with a random id per run, so that no cache makes repeats free (an
  on-disk embedding cache kept across runs would otherwise answer a rerun).

Reported per target and concurrency: p50/p99 latency, latency added versus
direct (p50, p99), throughput (req/s), errors, and the peak resident memory
(VmRSS from /proc) of the gateway process during the concurrency-64 run; then
turnout/LiteLLM ratios. Prints a rich table and writes
``bench/results/gateway_overhead.json``.

    OMP_WAIT_POLICY=PASSIVE python bench/gateway_overhead.py [--latency-ms 20] [--n1 200] [--n64 2000]
        [--skip litellm,turnout-auto] [--only turnout-keyed,turnout-redis,nginx-1,nginx-2]
        [--only turnout,turnout-guards --guards-embedder minilm|minilm-int8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own helper modules

import contextlib

from _state_targets import (
    BENCH_KEY,
    bench_keys,
    print_state_table,
    replicas_behind_nginx,
    state_comparisons,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "gateway_overhead.json"
BENCH_VENV = REPO / ".bench-venv"
LITELLM_KEY = "sk-bench-" + "5e1f" * 6  # the proxy refuses to start without a non-trivial master key
console = Console()


def free_port() -> int:
    from turnout.backends.llamacpp import free_port as _free

    return _free()


@dataclass
class Proc:
    """A server child process: started, waited for, measured, stopped."""

    name: str
    cmd: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        logf = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115 (kept open for the child's life)
        self.popen = subprocess.Popen(
            self.cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} while starting; see {self.log}")
            if self.ready_url.startswith("tcp://"):  # a server that speaks no HTTP (redis): its port is enough
                import socket

                try:
                    socket.create_connection(("127.0.0.1", int(self.ready_url.rsplit(":", 1)[1])), 0.5).close()
                    return
                except OSError:
                    time.sleep(0.1)
                    continue
            try:
                if httpx.get(self.ready_url, timeout=1.0, headers={"Authorization": f"Bearer {LITELLM_KEY}"}).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log}")

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (uvicorn workers, etc.)."""
        if self.popen is None:
            return 0.0
        total = 0
        pids = [self.popen.pid]
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read_text().split()]
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


# ---------------------------------------------------------------------------
# load generation
# ---------------------------------------------------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough to POST JSON and read the answer.

    The load generator uses these instead of httpx: with 64 connections in one
    httpx pool the *client* spent about 9 ms of CPU per request on this 2-core
    machine (httpcore's pool bookkeeping grows with connections × waiters) and
    became the bottleneck it was meant to measure. A raw connection costs a few
    tens of microseconds.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        u = httpx.URL(url)
        self.host, self.port, self.path = u.host, u.port or 80, u.raw_path.decode()
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{self.extra}\r\n".encode()
            + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            data = await self.reader.read()
        if hdrs.get("connection", "").lower() == "close":
            self.writer.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_load(
    url: str,
    model: str,
    n: int,
    conc: int,
    progress: Progress,
    label: str,
    watch: Proc | None,
    headers: dict[str, str],
    run_tag: str = "",
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    peak_rss = 0.0
    conns = [RawConnection(url, headers) for _ in range(conc)]
    free: asyncio.Queue[RawConnection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    if True:  # one block for symmetry with the connection cleanup below

        async def one(i: int) -> None:
            body = json.dumps(
                {
                    "model": model,
                    "max_tokens": 16,
                    "messages": [
                        {
                            "role": "user",
                            "content": f"Bench prompt {i} ({label}, run {run_tag}): summarise story number {i} in one line.",
                        }
                    ],
                }
            ).encode()
            conn = await free.get()
            t0 = time.perf_counter()
            try:
                status, data = await conn.post(body)
                ok = status == 200
                if not ok:
                    errors.append(f"{status}: {data[:200]!r}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                ok = False
                errors.append(repr(e))
                conn.close()
                conn.writer = None
            finally:
                free.put_nowait(conn)
            if ok:
                latencies.append(time.perf_counter() - t0)

        # warm-up: open the pool's connections and load lazy parts (embedder, router) before timing
        await asyncio.gather(*(one(-1 - i) for i in range(min(2 * conc, 64))))
        latencies.clear()
        errors.clear()
        task = progress.add_task(label, total=n)
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                await one(i)
                progress.advance(task)

        async def sample() -> None:
            nonlocal peak_rss
            while True:
                if watch is not None:
                    peak_rss = max(peak_rss, watch.rss_mb())
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall = time.perf_counter() - t0
        sampler.cancel()
    for c in conns:
        c.close()
    lat = np.array(latencies) * 1000
    return {
        "requests": n,
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "mean_ms": float(lat.mean()) if len(lat) else float("nan"),
        "rps": len(latencies) / wall,
        "peak_rss_mb": peak_rss if watch is not None else None,
    }


# ---------------------------------------------------------------------------
# the targets
# ---------------------------------------------------------------------------


def router_artifact(tmp: Path) -> Path:
    """A kNN artifact over two fleet names, both served by the upstream.

    Its training rows are random unit vectors: the decision does not matter
    here, only the work done per request (embed the prompt, score, decide).
    """
    from turnout.routing.artifact import save_router
    from turnout.routing.base import TrainingData
    from turnout.routing.registry import create_router

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    scores = rng.uniform(size=(500, 2))
    costs = np.tile([0.1, 1.0], (500, 1))
    router = create_router("knn", k=20).fit(TrainingData(X=X, scores=scores, costs=costs, models=["small", "large"]))
    return save_router(router, tmp / "knn.npz", meta={"embedder": "minilm", "lambda": 0.0})


# ---- turnout: the only part that depends on the server engineer's `turnout serve` ----
def turnout_proc(
    tmp: Path,
    upstream: str,
    artifact: Path | None,
    *,
    keyed: bool = False,
    redis_url: str | None = None,
    tag: str = "turnout",
    stages: list[dict[str, Any]] | None = None,
    src: Path | None = None,
    auto_embedder: str = "minilm",
    extra: dict[str, Any] | None = None,
) -> tuple[Proc, str]:
    import yaml

    port = free_port()
    cfg: dict[str, object] = {
        "server": {"host": "127.0.0.1", "port": port, "request_log": str(tmp / f"requests-{tag}.sqlite")},
        "backends": {"up": {"protocol": "openai", "base_url": upstream, "retries": {"attempts": 1}}},
        "models": {
            "scripted": {"backend": "up"},
            "small": {"backend": "up", "upstream_model": "scripted"},
            "large": {"backend": "up", "upstream_model": "scripted"},
        },
    }
    if artifact is not None:
        cfg["routes"] = {
            "auto": {
                "router": {"type": "knn", "artifact": str(artifact)},
                "embedder": auto_embedder,
                "candidates": ["small", "large"],
                "lambda": 0.0,
            }
        }
    if keyed:
        cfg["keys"] = bench_keys()
    if redis_url is not None:
        cfg["state"] = {"redis_url": redis_url}
    if stages is not None:
        cfg["stages"] = stages
    cfg.update(extra or {})
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-c",
        "import sys; from turnout.cli.main import main; sys.exit(main())",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
    ]
    env = {
        "PYTHONPATH": str(src or REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    return (Proc(tag, cmd, f"http://127.0.0.1:{port}/readyz", env, tmp / f"{tag}.log"), f"http://127.0.0.1:{port}/v1")


# ---- end of the turnout-specific part ----


def guard_stages(tmp: Path, embedder: str) -> list[dict[str, Any]]:
    """The typical guard config (docs: language and keyword signals are not stages of this helper's yet).

    The domain guard is fitted on CLINC150 (10 domains, 1,500 prototypes: the serving cost of a real
    guard) when the shared data is there; it only flags, so that the bench's story prompts, out of scope for
    CLINC's domains, still reach the upstream and the comparison with plain turnout stays like for like.
    """
    stages: list[dict[str, Any]] = [{"type": "jailbreak", "params": {"action": "block", "act_at": 0.9, "embedder": embedder}}]
    clinc = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data")) / "clinc150" / "clinc150.jsonl"
    if clinc.exists():
        # fitted by the CLI in a process of its own: MiniLM's and numpy's threads must not stay in the load generator
        art = tmp / "clinc-domains.npz"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "turnout.cli.main",
                "signals",
                "train",
                "domain",
                str(clinc),
                "--embedder",
                embedder,
                "--out",
                str(art),
                "--quiet",
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OPENBLAS_NUM_THREADS": "1"},
        )
        stages.append({"type": "domain_guard", "params": {"artifact": str(art), "action": "flag"}})
    else:
        console.print(f"[yellow]turnout-guards runs without its domain guard: {clinc} is missing (set TURNOUT_DATA)")
    stages += [
        {"type": "pii", "params": {"action": "redact"}},
        {"type": "cache", "params": {"ttl_s": 3600, "embedder": embedder}},
    ]
    return stages


def typical_signals(stages: list[dict[str, Any]], embedder: str) -> dict[str, Any]:
    """The issue's typical config beyond the guards: language, keyword and domain signals, read by one decision
    rule (signals are computed only when a rule reads them) that changes nothing for the bench's prompts."""
    domain = next((s["params"]["artifact"] for s in stages if s["type"] == "domain_guard"), None)
    signals: dict[str, Any] = {
        "lang": {"type": "language"},
        "kw": {"type": "keywords", "params": {"sets": {"code": ["python", "javascript", "stack trace"]}}},
    }
    leaves: list[dict[str, Any]] = [{"signal": "lang", "in": ["fr"]}, {"signal": "kw.code", "is": True}]
    if domain is not None:
        signals["dom"] = {"type": "domain", "params": {"artifact": domain, "embedder": embedder}}
        leaves.append({"signal": "dom", "eq": "banking"})
    rule = {"name": "french-code", "when": {"all": leaves}, "applies_to": ["scripted"], "use": {"params": {"max_tokens": 64}}}
    return {"signals": signals, "decisions": [rule]}


def redis_proc(tmp: Path) -> tuple[Proc, str]:
    """A redis-server of the bench's own (no persistence), for the shared-state targets."""
    import shutil

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    return (
        Proc(
            "redis",
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            f"tcp://127.0.0.1:{port}",
            {},
            tmp / "redis.log",
        ),
        f"redis://127.0.0.1:{port}/0",
    )


def ensure_litellm() -> Path:
    """The LiteLLM proxy lives in its own venv (its pins clash with ours); create it when missing."""
    exe = BENCH_VENV / "bin" / "litellm"
    if not exe.exists():
        console.print("[yellow]creating .bench-venv with litellm[proxy] (one-off, a few minutes)…")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(BENCH_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return exe


def litellm_proc(tmp: Path, upstream: str) -> tuple[Proc, str]:
    import yaml

    port = free_port()
    cfg = {
        "model_list": [
            {"model_name": "scripted", "litellm_params": {"model": "openai/scripted", "api_base": upstream, "api_key": "unused"}}
        ],
        "litellm_settings": {"drop_params": True},
    }
    path = tmp / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [str(ensure_litellm()), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOG": "ERROR"}
    return Proc(
        "litellm", cmd, f"http://127.0.0.1:{port}/health/liveliness", env, tmp / "litellm.log"
    ), f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--n1", type=int, default=200, help="requests at concurrency 1")
    ap.add_argument("--n64", type=int, default=2000, help="requests at concurrency 64")
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated targets to skip: forwarder,turnout,turnout-auto,litellm,"
        "turnout-keyed,turnout-redis,nginx-1,nginx-2,turnout-guards",
    )
    ap.add_argument(
        "--guards-embedder",
        default="minilm-int8",
        choices=["minilm", "minilm-int8"],
        help="the embedder the turnout-guards stages share (each has a shipped jailbreak detector); "
        "minilm-int8 is the embedded default's",
    )
    ap.add_argument("--only", default="", help="comma-separated targets to run (direct always runs: the baseline)")
    ap.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help="the src/ folder of an earlier turnout (e.g. a git worktree of the commit before a change): adds the "
        "targets turnout-before and turnout-auto-before, served by that code on the same config, side by side",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    levels = [(1, args.n1), (64, args.n64)]

    tmp = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    run_tag = os.urandom(4).hex()  # makes every prompt of this run new to any cache
    up_port = free_port()
    upstream = Proc(
        "scripted",
        [sys.executable, "-m", "turnout.testing.scripted", "--port", str(up_port), "--latency-ms", str(args.latency_ms)],
        f"http://127.0.0.1:{up_port}/v1/models",
        {"PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")},
        tmp / "scripted.log",
    )
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    results: dict[str, dict[str, dict[str, float]]] = {}
    notes: dict[str, str] = {}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    try:
        upstream.start(30)
        targets: list[tuple[str, str]] = [
            ("direct", "scripted"),
            ("forwarder", "scripted"),
            ("turnout-before", "scripted"),
            ("turnout", "scripted"),
            ("turnout-auto-before", "auto"),
            ("turnout-auto", "auto"),
            ("turnout-auto-int8", "auto"),
            ("litellm", "scripted"),
            ("turnout-keyed", "scripted"),
            ("turnout-redis", "scripted"),
            ("nginx-1", "smollm2"),
            ("nginx-2", "smollm2"),
            ("turnout-guards", "scripted"),
            ("turnout-typical", "scripted"),
        ]
        with progress:
            for name, model in targets:
                if name in skip or (only and name != "direct" and name not in only):
                    continue
                if name.endswith("-before") and args.before_src is None:
                    continue
                proc: Proc | None = None
                extra_procs: list[Any] = []
                headers: dict[str, str] = {}
                try:
                    if name == "direct":
                        base = upstream_url
                    elif name == "forwarder":
                        fport = free_port()
                        proc = Proc(
                            "forwarder",
                            [sys.executable, str(HERE / "_forwarder.py"), str(fport), str(up_port)],
                            f"http://127.0.0.1:{fport}/v1/models",
                            {},
                            tmp / "forwarder.log",
                        )
                        proc.start(30)
                        base = f"http://127.0.0.1:{fport}/v1"
                    elif name in ("turnout-keyed", "turnout-redis"):
                        redis_url = None
                        if name == "turnout-redis":
                            rproc, redis_url = redis_proc(tmp)
                            rproc.start(15)
                            extra_procs.append(rproc)
                        proc, base = turnout_proc(tmp, upstream_url, None, keyed=True, redis_url=redis_url, tag=name)
                        proc.start(120)
                        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
                    elif name.startswith("nginx-"):
                        dep = replicas_behind_nginx(tmp, upstream_url, int(name.split("-")[1]))
                        extra_procs.append(dep)
                        dep.start()
                        base = dep.url
                        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
                    elif name in ("turnout-guards", "turnout-typical"):
                        stages = guard_stages(tmp, args.guards_embedder)
                        extra = typical_signals(stages, args.guards_embedder) if name == "turnout-typical" else None
                        proc, base = turnout_proc(tmp, upstream_url, None, tag=name, stages=stages, extra=extra)
                        proc.start(120)
                    elif name.startswith("turnout"):
                        art = router_artifact(tmp) if name.startswith("turnout-auto") else None
                        proc, base = turnout_proc(
                            tmp,
                            upstream_url,
                            art,
                            tag=name,
                            src=args.before_src if name.endswith("-before") else None,
                            auto_embedder="minilm-int8" if name == "turnout-auto-int8" else "minilm",
                        )
                        proc.start(120)
                    else:
                        proc, base = litellm_proc(tmp, upstream_url)
                        proc.start(180)
                        headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
                    results[name] = {}
                    for conc, n in levels:
                        results[name][f"c{conc}"] = asyncio.run(
                            run_load(
                                base + "/chat/completions",
                                model,
                                n,
                                conc,
                                progress,
                                f"{name} c={conc}",
                                proc if conc == 64 else None,
                                headers,
                                run_tag,
                            )
                        )
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    notes[name] = str(e)
                    console.print(f"[red]{name}: {e}")
                finally:
                    if proc is not None:
                        proc.stop()
                    for p in reversed(extra_procs):
                        p.stop()
    finally:
        upstream.stop()

    # -- derived figures ------------------------------------------------------
    derived: dict[str, dict[str, float]] = {}
    for name, per in results.items():
        for lvl, r in per.items():
            d = results.get("direct", {}).get(lvl)
            if d and name != "direct":
                r["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
                r["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
    state = state_comparisons(results)
    guards: dict[str, float] = {}  # what the typical guard stages add over plain turnout, same run
    for gname, label in (("turnout-guards", "guards"), ("turnout-typical", "typical")):
        if "turnout" not in results or gname not in results:
            continue
        for lvl, g in results[gname].items():
            t = results["turnout"].get(lvl)
            if t:
                guards[f"{label} - passthrough p50 ms {lvl}"] = g["p50_ms"] - t["p50_ms"]
                guards[f"{label} - passthrough p99 ms {lvl}"] = g["p99_ms"] - t["p99_ms"]
                guards[f"{label} / passthrough req/s {lvl}"] = g["rps"] / t["rps"]
    # the same config served by the code before a change (--before-src), side by side in this run
    before: dict[str, float] = {}
    for now, was in (("turnout", "turnout-before"), ("turnout-auto", "turnout-auto-before")):
        for lvl in results.get(now, {}):
            a, b = results[now][lvl], results.get(was, {}).get(lvl)
            if b:
                before[f"{now} - before: added p50 ms {lvl}"] = a.get("added_p50_ms", 0.0) - b.get("added_p50_ms", 0.0)
                before[f"{now} / before: req/s {lvl}"] = a["rps"] / b["rps"]
    for tname in ("turnout", "turnout-auto"):
        if tname in results and "litellm" in results:
            for lvl in results[tname]:
                t, lt = results[tname][lvl], results["litellm"].get(lvl)
                if not lt:
                    continue
                derived[f"{tname}/litellm {lvl}"] = {
                    "added_p50": _ratio(t.get("added_p50_ms"), lt.get("added_p50_ms")),
                    "added_p99": _ratio(t.get("added_p99_ms"), lt.get("added_p99_ms")),
                    "rps": _ratio(t["rps"], lt["rps"]),
                    "rss": _ratio(t.get("peak_rss_mb"), lt.get("peak_rss_mb")),
                }

    table = Table(title=f"Gateway overhead (upstream latency {args.latency_ms:g} ms, non-streaming)")
    for col in ("target", "conc", "p50 ms", "p99 ms", "added p50", "added p99", "req/s", "errors", "peak RSS MB"):
        table.add_column(col, justify="right" if col != "target" else "left", no_wrap=col == "target")
    for name, per in results.items():
        for lvl, r in per.items():
            table.add_row(
                name,
                lvl[1:],
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                _fmt(r.get("added_p50_ms")),
                _fmt(r.get("added_p99_ms")),
                f"{r['rps']:.0f}",
                str(r["errors"]),
                _fmt(r.get("peak_rss_mb"), 0),
            )
    console.print(table)
    if derived:
        rt = Table(title="turnout / LiteLLM (lower is better for added latency and RSS, higher for req/s)")
        for col in ("comparison", "added p50", "added p99", "req/s", "RSS"):
            rt.add_column(col)
        for k, v in derived.items():
            rt.add_row(k, *(_fmt(v[c], 2) for c in ("added_p50", "added_p99", "rps", "rss")))
        console.print(rt)
    print_state_table(console, state)
    if guards:
        gt = Table(title="typical guard stages (jailbreak, domain, PII, cache miss + store) against plain turnout")
        gt.add_column("comparison")
        gt.add_column("value", justify="right")
        for k, v in guards.items():
            gt.add_row(k, _fmt(v, 2))
        console.print(gt)
    if before:
        bt = Table(title="this code against the code before the change (same config, same run)")
        bt.add_column("comparison")
        bt.add_column("value", justify="right")
        for k, v in before.items():
            bt.add_row(k, _fmt(v, 2))
        console.print(bt)
    for name, why in notes.items():
        console.print(f"[yellow]{name} not measured: {why}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "bench": "gateway_overhead",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                "settings": {
                    "upstream_latency_ms": args.latency_ms,
                    "levels": dict((f"c{c}", n) for c, n in levels),
                    "client": "httpx AsyncClient in the bench process, keep-alive pool = concurrency",
                    "stream": False,
                    "guards_embedder": args.guards_embedder,
                    "load_average": os.getloadavg(),
                },
                "results": results,
                "ratios": derived,
                "state": state,
                "guards": guards,
                "before": before,
                "not_measured": notes,
            },
            indent=2,
            default=float,
        )
    )
    console.print(f"wrote {args.out}")
    return 0 if not notes else 1


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
