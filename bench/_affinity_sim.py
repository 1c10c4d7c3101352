"""A discrete-event simulator of engine replicas with prefix caches, driven by turnout's real balancers.

Used by ``bench/cache_affinity.py`` (and its tests). The model, stated once:

* **Replicas**: ``replicas`` engines, each with ``slots`` request slots (1: llama.cpp's server runs
  one request at a time) and a FIFO queue in front of them. Each slot is served at the calibrated
  speeds (no batching interference between slots).
* **Prefix cache**: per replica, an LRU cache of ``cache_tokens`` tokens in blocks of
  ``block_tokens`` (16, as vLLM). A block's identity is the whole token prefix up to its end, so a
  prompt hits its longest cached run of leading blocks. When a request starts, its prompt blocks
  are looked up and then inserted; when it finishes, the blocks of prompt + answer are (the engine
  keeps generated tokens too, and the next turn of the conversation repeats the answer). Blocks
  are touched deepest first, root last, so eviction drops leaves before their ancestors.
* **Costs**: time to first token after a request starts = ``prefill_overhead_s + uncached prompt
  tokens / prefill_tok_s``; decode = ``output tokens / decode_tok_s``; both from a measured
  llama.cpp run (``bench/results/llamacpp_costs.json``, see :func:`load_costs` for the fallback).
* **Trace**: sessions start as a Poisson process; a session is a multi-turn chat (one of a few long
  shared system prompts, or a short unique one; the first user message is sometimes a pasted
  document), a single-turn request on a shared system prompt (a template), or a unique prompt.
  Turn ``k+1`` arrives after turn ``k``'s zero-load response time plus an exponential think time,
  fixed when the trace is built (open loop: it never waits for the simulated answer). Load is
  raised by starting sessions faster; think times stay the same.
* **Balancing**: each arrival's :class:`~turnout.gateway.balance.BalanceKey` is computed once by
  :func:`turnout.gateway.balance.prefix_key` from the real chat messages, and the strategy object
  from :func:`turnout.gateway.balance.create_balancer` chooses among live
  :class:`~turnout.gateway.balance.EndpointView`\\ s: ``in_flight``, ``ewma_ttft_s``,
  ``ewma_prefill_tok_s`` (the calibrated speed, as an engine reports it) and ``ewma_service_s``
  (updated, as the gateway would, from requests sent while their replica had a free slot).
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnout.gateway.balance import BalanceKey, Balancer, EndpointView, prefix_key

#: SmolLM2-135M with llama.cpp on this machine kind (LOCAL-COMPONENTS.md): used when no calibration file exists
FALLBACK_COSTS = {"prefill_tok_s": 260.0, "decode_tok_s": 95.0, "prefill_overhead_s": 0.0}
CHARS_PER_TOKEN = 4  # the trace writes 4 characters per simulated token, prefix_key's default estimate


@dataclass(frozen=True)
class Costs:
    """Engine speeds: prefill and decode tokens/s, a fixed per-request overhead, and where they came from."""

    prefill_tok_s: float
    decode_tok_s: float
    prefill_overhead_s: float = 0.0
    source: str = "fallback"


def load_costs(path: Path | None) -> Costs:
    """Costs from ``bench/llamacpp_costs.py``'s JSON; without it, LOCAL-COMPONENTS.md's figures (260 / 95 tok/s)."""
    if path is not None and path.exists():
        doc = json.loads(path.read_text())
        return Costs(
            float(doc["prefill_tok_s"]),
            float(doc["decode_tok_s"]),
            float(doc.get("prefill_overhead_s", 0.0)),
            source=f"measured: {path.name} ({doc.get('model', '?')}, {doc.get('threads', '?')} thread(s))",
        )
    return Costs(
        FALLBACK_COSTS["prefill_tok_s"],
        FALLBACK_COSTS["decode_tok_s"],
        FALLBACK_COSTS["prefill_overhead_s"],
        source="fallback: LOCAL-COMPONENTS.md SmolLM2 figures (prefill 260, decode 95 tok/s)",
    )


@dataclass(frozen=True)
class TraceSpec:
    """The shape of a synthetic trace (token counts are simulated tokens; 4 characters each in the text)."""

    sessions: int = 1500
    chat_frac: float = 0.55  # multi-turn conversations
    template_frac: float = 0.25  # single turn on a shared system prompt; the rest are unique prompts
    system_prompts: int = 6  # the shared pool, Zipf-popular
    system_tokens: tuple[int, int] = (300, 1200)
    shared_system_frac: float = 0.7  # chats using a pooled system prompt (else a short unique one)
    mean_turns: float = 4.0  # geometric, at least 2 for a chat
    max_turns: int = 10
    user_tokens_median: int = 60
    document_frac: float = 0.3  # chats whose first user message is a pasted document
    document_tokens_median: int = 500
    unique_tokens_median: int = 400
    output_tokens: tuple[int, int] = (40, 200)
    think_s_mean: float = 8.0
    session_id_frac: float = 0.5  # chats whose client sends x-session-id


@dataclass
class TraceRequest:
    session_u: float  # session start at unit session rate
    offset_s: float  # seconds after the session start
    key: BalanceKey
    prompt_tokens: int
    output_tokens: int
    prompt_blocks: tuple[int, ...]
    seq_blocks: tuple[int, ...]  # prompt + answer
    kind: str


@dataclass
class Trace:
    requests: list[TraceRequest]
    sessions: int
    block_tokens: int

    def mean_cold_service_s(self, costs: Costs) -> float:
        return float(
            np.mean(
                [
                    costs.prefill_overhead_s + r.prompt_tokens / costs.prefill_tok_s + r.output_tokens / costs.decode_tok_s
                    for r in self.requests
                ]
            )
        )

    def cold_ttft_quantile(self, costs: Costs, q: float) -> float:
        return float(np.quantile([costs.prefill_overhead_s + r.prompt_tokens / costs.prefill_tok_s for r in self.requests], q))


def _lognormal(rng: random.Random, median: int, sigma: float = 0.6, lo: int = 4, hi: int = 4000) -> int:
    return int(min(hi, max(lo, round(median * math.exp(rng.gauss(0.0, sigma))))))


def _engine_blocks(segments: Sequence[tuple[int, int]], block_tokens: int) -> tuple[int, ...]:
    """Ids of the full token blocks of a sequence of (content uid, tokens) segments; an id names its whole prefix."""
    ids: list[int] = []
    chain = 0
    start = 0
    for uid, n in segments:
        end = start + n
        t = (start // block_tokens + 1) * block_tokens
        while t <= end:
            ids.append(hash((chain, uid, t - start)))
            t += block_tokens
        chain = hash((chain, uid, n))
        start = end
    return tuple(ids)


def build_trace(spec: TraceSpec, *, seed: int, block_tokens: int = 16, costs: Costs | None = None) -> Trace:
    """A seeded trace: real chat messages (for prefix_key), engine block ids, session-relative arrival offsets."""
    rng = random.Random(seed)
    costs = costs or load_costs(None)
    uid = iter(range(1, 1 << 62))
    texts: dict[int, str] = {}

    def content(u: int, tokens: int) -> str:
        text = texts.get(u)
        if text is None:  # one string per content uid, shared by every later turn that repeats it
            tag = f"<{u:x}>"
            text = texts[u] = (tag * (tokens * CHARS_PER_TOKEN // len(tag) + 1))[: tokens * CHARS_PER_TOKEN]
        return text

    pool = [(next(uid), rng.randint(*spec.system_tokens)) for _ in range(spec.system_prompts)]
    zipf = [1.0 / (i + 1) for i in range(len(pool))]
    requests: list[TraceRequest] = []
    t_u = 0.0
    for s in range(spec.sessions):
        t_u += rng.expovariate(1.0)
        x = rng.random()
        kind = "chat" if x < spec.chat_frac else "template" if x < spec.chat_frac + spec.template_frac else "unique"
        segments: list[tuple[int, int]] = []  # (uid, tokens) of the prompt so far
        messages: list[dict[str, str]] = []
        if kind == "unique":
            turns = 1
        elif kind == "template":
            turns = 1
            segments.append(rng.choices(pool, zipf)[0])
            messages.append({"role": "system", "content": ""})
        else:
            turns = 2  # a chat has at least two turns; the rest is geometric with mean mean_turns - 2
            if spec.mean_turns > 2:
                turns += int(math.log(1.0 - rng.random()) / math.log(1.0 - 1.0 / (spec.mean_turns - 1)))
            turns = min(spec.max_turns, turns)
            segments.append(rng.choices(pool, zipf)[0] if rng.random() < spec.shared_system_frac else (next(uid), 40))
            messages.append({"role": "system", "content": ""})
        session_id = f"s{s}" if kind == "chat" and rng.random() < spec.session_id_frac else None
        offset = 0.0
        for turn in range(turns):
            if kind == "unique":
                n_user = _lognormal(rng, spec.unique_tokens_median)
            elif kind == "chat" and turn == 0 and rng.random() < spec.document_frac:
                n_user = _lognormal(rng, spec.document_tokens_median)
            else:
                n_user = _lognormal(rng, spec.user_tokens_median)
            segments.append((next(uid), n_user))
            messages.append({"role": "user", "content": ""})
            n_out = rng.randint(*spec.output_tokens)
            answer = (next(uid), n_out)
            # the messages' text is derived from the segment uids: equal content <=> equal uid
            msgs = [{"role": m["role"], "content": content(*seg)} for m, seg in zip(messages, segments)]
            key = prefix_key(msgs, session_id=session_id)
            prompt_tokens = sum(n for _, n in segments)
            requests.append(
                TraceRequest(
                    t_u,
                    offset,
                    key,
                    prompt_tokens,
                    n_out,
                    _engine_blocks(segments, block_tokens),
                    _engine_blocks([*segments, answer], block_tokens),
                    kind,
                )
            )
            # the user reads the answer (zero-load response time) and thinks before the next turn
            offset += (
                costs.prefill_overhead_s
                + prompt_tokens / costs.prefill_tok_s
                + n_out / costs.decode_tok_s
                + rng.expovariate(1.0 / spec.think_s_mean)
            )
            segments.append(answer)
            messages.append({"role": "assistant", "content": ""})
    return Trace(requests, spec.sessions, block_tokens)


@dataclass(frozen=True)
class SimConfig:
    """The simulated fleet."""

    replicas: int = 8
    slots: int = 1
    cache_tokens: int = 16384
    warmup_frac: float = 0.2  # requests of sessions started in the first 20% of the span are not measured
    ewma_alpha: float = 0.2


@dataclass
class RunStats:
    """One simulated run at one rate."""

    rate_rps: float
    requests: int
    hit_rate: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    imbalance: float
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate_rps": self.rate_rps,
            "requests": self.requests,
            "hit_rate": self.hit_rate,
            "ttft_mean_s": self.ttft_mean_s,
            "ttft_p50_s": self.ttft_p50_s,
            "ttft_p99_s": self.ttft_p99_s,
            "imbalance": self.imbalance,
            **({"reasons": self.reasons} if self.reasons else {}),
        }


class _Replica:
    __slots__ = ("busy_s", "cache", "queue", "running", "view")

    def __init__(self, view: EndpointView) -> None:
        self.view = view
        self.queue: deque[int] = deque()
        self.running = 0
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.busy_s = 0.0


def _touch(cache: OrderedDict[int, None], blocks: Sequence[int], capacity: int) -> None:
    for b in reversed(blocks):  # deepest first, root last: the root ends up most recently used
        if b in cache:
            cache.move_to_end(b)
        else:
            cache[b] = None
    while len(cache) > capacity:
        cache.popitem(last=False)


def simulate(trace: Trace, rate_rps: float, balancer: Balancer, cfg: SimConfig, costs: Costs) -> RunStats:
    """Replay ``trace`` at ``rate_rps`` requests per second through ``balancer``; all requests run to completion."""
    reqs = trace.requests
    n = len(reqs)
    session_rate = rate_rps * trace.sessions / n
    arrival = [r.session_u / session_rate + r.offset_s for r in reqs]
    order = sorted(range(n), key=arrival.__getitem__)
    span_end = max(r.session_u for r in reqs) / session_rate
    measured = [r.session_u / session_rate >= cfg.warmup_frac * span_end for r in reqs]

    views = [EndpointView(f"replica-{j}", slots=cfg.slots, ewma_prefill_tok_s=costs.prefill_tok_s) for j in range(cfg.replicas)]
    reps = [_Replica(v) for v in views]
    where = {id(v): j for j, v in enumerate(views)}
    balancer.on_change(views)
    capacity = max(1, cfg.cache_tokens // trace.block_tokens)
    bt = trace.block_tokens
    alpha = cfg.ewma_alpha
    pf, dec, over = costs.prefill_tok_s, costs.decode_tok_s, costs.prefill_overhead_s

    ttft = [math.nan] * n
    free_slot = [False] * n
    cached_tok = 0
    prompt_tok = 0
    busy = [0.0] * cfg.replicas
    reasons: Counter[str] = Counter()
    heap: list[tuple[float, int, int, int, int]] = []  # (time, seq, kind 0=first token 1=done, replica, request)
    seq = 0

    def start(j: int, i: int, now: float) -> None:
        nonlocal seq, cached_tok, prompt_tok
        r, rep = reqs[i], reps[j]
        hit = 0
        for b in r.prompt_blocks:
            if b not in rep.cache:
                break
            hit += 1
        uncached = r.prompt_tokens - min(hit * bt, r.prompt_tokens)
        _touch(rep.cache, r.prompt_blocks, capacity)
        prefill = over + uncached / pf
        service = prefill + r.output_tokens / dec
        if measured[i]:
            cached_tok += r.prompt_tokens - uncached
            prompt_tok += r.prompt_tokens
            busy[j] += service
        heapq.heappush(heap, (now + prefill, seq, 0, j, i))
        heapq.heappush(heap, (now + service, seq + 1, 1, j, i))
        seq += 2

    k = 0
    while k < n or heap:
        if heap and (k >= n or heap[0][0] <= arrival[order[k]]):
            now, _, kind, j, i = heapq.heappop(heap)
            rep = reps[j]
            v = rep.view
            if kind == 0:
                ttft[i] = now - arrival[i]
                v.ewma_ttft_s = ttft[i] if v.ewma_ttft_s is None else (1 - alpha) * v.ewma_ttft_s + alpha * ttft[i]
                continue
            _touch(rep.cache, reqs[i].seq_blocks, capacity)
            v.in_flight -= 1
            if free_slot[i]:  # it waited in no queue: its latency is pure service, as the gateway would see it
                lat = now - arrival[i]
                v.ewma_service_s = lat if v.ewma_service_s is None else (1 - alpha) * v.ewma_service_s + alpha * lat
            rep.running -= 1
            if rep.queue:
                rep.running += 1
                start(j, rep.queue.popleft(), now)
            continue
        i = order[k]
        k += 1
        now = arrival[i]
        chosen = balancer.choose(views, reqs[i].key)
        reason = getattr(balancer, "last_reason", "")
        if reason and measured[i]:
            reasons[reason] += 1
        j = where[id(chosen)]
        free_slot[i] = chosen.in_flight < chosen.slots
        chosen.in_flight += 1
        rep = reps[j]
        if rep.running < cfg.slots:
            rep.running += 1
            start(j, i, now)
        else:
            rep.queue.append(i)

    sample = np.array([ttft[i] for i in range(n) if measured[i]])
    mean_busy = float(np.mean(busy))
    return RunStats(
        rate_rps,
        int(sample.size),
        cached_tok / prompt_tok if prompt_tok else 0.0,
        float(sample.mean()),
        float(np.quantile(sample, 0.5)),
        float(np.quantile(sample, 0.99)),
        max(busy) / mean_busy if mean_busy > 0 else 1.0,
        dict(reasons),
    )


def find_capacity(
    run: Callable[[float], RunStats], grid: Sequence[float], slo_s: float, *, bisect_steps: int = 5
) -> tuple[float, list[RunStats]]:
    """The highest rate whose p99 TTFT stays within ``slo_s``: a sweep of ``grid`` (ascending), then bisection
    between the last rate that passed (with every lower one passing) and the first that failed.

    Returns (capacity, every run in the order made); capacity is 0 when even the lowest rate fails.
    """
    runs: list[RunStats] = []
    ok_rate, bad_rate = 0.0, math.inf
    for rate in grid:
        st = run(rate)
        runs.append(st)
        if st.ttft_p99_s <= slo_s:
            ok_rate = rate
        else:
            bad_rate = rate
            break
    if ok_rate == 0.0 or bad_rate == math.inf:
        return ok_rate, runs
    lo, hi = ok_rate, bad_rate
    for _ in range(bisect_steps):
        mid = math.sqrt(lo * hi)
        st = run(mid)
        runs.append(st)
        if st.ttft_p99_s <= slo_s:
            lo = mid
        else:
            hi = mid
    return lo, runs
