"""Cancellation paths of the pipeline's accounting: a request cancelled (its client gone) wherever it is — in a
stage, holding its budget while the model answers, between retries, right after its stream committed — is paid
for once, its hold settled, its endpoint freed, its breaker probe released, and logged as ``cancelled``.

The gateway runs in process over :class:`ScriptedBackend` (the fault-injection fake: slow, failing on cue); the
key store, state, metrics and request log are the real ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from turnout.backends.base import Timeouts
from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price
from turnout.gateway.context import RequestContext
from turnout.gateway.keys import KeySpec, KeyStore, hash_key
from turnout.gateway.metrics import Metrics
from turnout.gateway.requestlog import RequestLog
from turnout.gateway.stages import Stages
from turnout.state.memory import InMemoryCounters
from turnout.testing import ScriptedBackend, Step
from turnout.types import ChatRequest

MSG = [{"role": "user", "content": "hello"}]
KEY = "sk-team"


def gateway(
    backend: ScriptedBackend,
    tmp_path: Path,
    *,
    stages: list[Any] | None = None,
    attempts: int = 1,
    breaker: CircuitBreaker | None = None,
) -> Gateway:
    state = InMemoryCounters()
    keys = KeyStore([KeySpec("team", hash_key(KEY), budget_usd=1.0)], state)
    target = ModelTarget(
        "m",
        backend,
        "m",
        price=Price(1000.0, 2000.0),
        context_window=4096,
        attempts=attempts,
        timeouts=Timeouts(1.0, 10.0, 10.0),
        backoff=Backoff(0.5, 0.5),
        breaker=breaker or CircuitBreaker(5, 60.0),
    )
    return Gateway(
        {"m": target},
        keys=keys,
        state=state,
        metrics=Metrics(),
        request_log=RequestLog(tmp_path / "log.sqlite"),
        stages=Stages(stages or []),
    )


async def until(check: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.005)


async def logged(gw: Gateway) -> Any:
    await gw.aclose()
    gw.request_log.close()  # writes every row first
    (row,) = gw.request_log.query(limit=None)
    return row


async def test_a_non_streamed_request_cancelled_while_its_budget_is_held_settles_the_hold(tmp_path: Path) -> None:
    backend = ScriptedBackend("up", Step(latency=5.0))
    gw = gateway(backend, tmp_path)
    task = asyncio.create_task(gw.chat(ChatRequest("m", MSG), api_key=KEY))
    await until(lambda: gw.state.held("team") > 0 and backend.count == 1)  # held, and the model is answering
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cancelled == 1
    assert gw.state.held("team") == 0.0 and gw.state.get_now("spend:team") == 0.0
    ep = gw.targets["m"].endpoints[0]
    assert ep.in_flight == 0 and ep.breaker.state == "closed"
    row = await logged(gw)
    assert (row.status, row.error_kind, row.key_name, row.cost_usd) == ("cancelled", "client_disconnect", "team", 0.0)


async def test_a_request_cancelled_between_two_tries_settles_its_hold_and_tries_no_more(tmp_path: Path) -> None:
    backend = ScriptedBackend("up", [Step(fault="status", status=503), Step(text="too late")])
    gw = gateway(backend, tmp_path, attempts=2)  # the backoff before the retry is 0.25-0.5 s
    task = asyncio.create_task(gw.chat(ChatRequest("m", MSG), api_key=KEY))
    await until(lambda: backend.count == 1 and gw.targets["m"].endpoints[0].in_flight == 0)
    await asyncio.sleep(0.05)  # the first try failed: asleep in the backoff now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.6)  # past the moment the retry would have been sent
    assert backend.count == 1 and gw.state.held("team") == 0.0
    row = await logged(gw)
    assert row.status == "cancelled" and [c["status"] for c in row.calls] == ["error"]


class SlowGuard:
    """A guard that takes its time (a remote moderation call, say)."""

    phase = "guard"
    name = "slow-guard"

    async def on_request(self, ctx: RequestContext) -> None:
        await asyncio.sleep(5)


async def test_a_request_cancelled_inside_a_stage_is_logged_as_cancelled_with_nothing_held(tmp_path: Path) -> None:
    backend = ScriptedBackend("up", Step(text="never"))
    gw = gateway(backend, tmp_path, stages=[SlowGuard()])
    task = asyncio.create_task(gw.chat(ChatRequest("m", MSG), api_key=KEY))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.count == 0 and gw.state.held("team") == 0.0
    row = await logged(gw)
    assert (row.status, row.key_name, row.cost_usd, row.calls) == ("cancelled", "team", 0.0, [])


@pytest.mark.parametrize("how", ["aclose-before-reading", "aclose-after-two-chunks", "break-out-of-the-loop"])
async def test_a_committed_stream_left_by_its_client_pays_for_what_was_generated_and_frees_everything(
    tmp_path: Path, how: str
) -> None:
    words = " ".join(f"w{i}" for i in range(50))
    backend = ScriptedBackend("up", Step(text=words, slow=0.01))
    breaker = CircuitBreaker(1, 0.01)
    breaker.record_failure()  # open; after its cooldown this stream is the half-open probe
    await asyncio.sleep(0.02)
    gw = gateway(backend, tmp_path, breaker=breaker)
    session = await gw.chat_stream(ChatRequest("m", MSG, stream=True), api_key=KEY)
    assert breaker.state == "half-open" and not breaker.allow()  # the probe is out
    held = gw.state.held("team")
    assert held > 0
    got = 0
    if how == "aclose-before-reading":
        await session.aclose()
    else:
        it = session.__aiter__()
        for _ in range(2):
            await it.__anext__()
            got += 1
        if how == "aclose-after-two-chunks":
            await session.aclose()
        else:
            await it.aclose()  # what `break` in `async for` leads to when the generator is closed
            await session.aclose()  # idempotent: already settled by the generator
    assert backend.cancelled == 1
    ep = gw.targets["m"].endpoints[0]
    assert ep.in_flight == 0
    assert breaker.allow(), "the probe slot was left taken: the endpoint would be skipped until a restart"
    breaker.release()
    spent = gw.state.get_now("spend:team")
    assert gw.state.held("team") == 0.0 and 0 < spent < held
    row = await logged(gw)
    assert row.status == "cancelled" and row.cost_usd == pytest.approx(spent)
    assert row.completion_tokens == max(1, got)  # the first chunk was generated before the commit
    assert row.calls[0]["completion_tokens"] == row.completion_tokens
