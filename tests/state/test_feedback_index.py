"""The shared feedback index (turnout.state.feedback_index) against a real Redis: two replicas, one index."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from turnout.errors import StateError
from turnout.state import InMemoryCounters, RedisCounters
from turnout.state.feedback_index import (
    InMemoryFeedbackIndex,
    LoggedRequest,
    RedisFeedbackIndex,
    feedback_index_for,
    find_logged,
)


def entry(rid: str, **kw: object) -> LoggedRequest:
    base: dict[str, object] = {
        "id": rid,
        "key_name": "team",
        "route": "auto",
        "model": "small",
        "status": "ok",
        "cost_usd": 0.002,
        "decision": {"router": "bandit", "propensity": 0.8, "reasons": []},
        "context": [0.5, -1.0],
    }
    base.update(kw)
    return LoggedRequest(**base)  # type: ignore[arg-type]


async def test_an_entry_written_by_one_replica_is_read_by_another(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    sa, sb = RedisCounters(redis_url, prefix=prefix), RedisCounters(redis_url, prefix=prefix)
    a, b = RedisFeedbackIndex(sa, replica="a", linger_s=0.01), RedisFeedbackIndex(sb, replica="b")
    try:
        a.record(entry("r1"))  # never awaits: queued
        assert await b.get("r1") is None  # not written yet (write-behind)
        await asyncio.sleep(0.1)
        found = await b.get("r1")
        assert found is not None and found.replica == "a" and found.key_name == "team" and found.model == "small"
        assert found.context == [0.5, -1.0] and found.decision == {"router": "bandit", "propensity": 0.8, "reasons": []}
        assert found.prompt is None and found.score is None
        assert await b.set_score("r1", 0.75) is True
        assert (await a.get("r1")).score == 0.75  # type: ignore[union-attr]
        assert await b.set_score("nope", 0.5) is False
        ttl = await sa.client.ttl(prefix + "req:r1")
        assert 6 * 24 * 3600 < ttl <= 7 * 24 * 3600  # the score kept the entry's expiry
    finally:
        await a.aclose()
        await b.aclose()
        await sa.aclose()
        await sb.aclose()


async def test_close_writes_what_is_queued(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    s = RedisCounters(redis_url, prefix=prefix)
    idx = RedisFeedbackIndex(s, replica="a", linger_s=60)
    idx.record(entry("late"))
    await idx.aclose()
    assert await RedisFeedbackIndex(s).get("late") is not None
    await s.aclose()


async def test_find_logged_asks_the_index_then_this_replicas_own_log() -> None:
    index = InMemoryFeedbackIndex(replica="b")
    index.record(entry("from-a", replica="a"))
    index.record(entry("from-b"))  # recorded by this replica: its own log has the full row
    local_rows = {"from-b": "full row of b", "only-local": "row"}
    asked: list[str] = []

    async def local(rid: str) -> object:
        asked.append(rid)
        return local_rows.get(rid)

    found = await find_logged("from-a", index, local)
    assert isinstance(found, LoggedRequest) and found.replica == "a" and asked == []
    assert await find_logged("from-b", index, local) == "full row of b"
    assert await find_logged("only-local", index, local) == "row"
    assert await find_logged("unknown", index, local) is None
    assert await find_logged("only-local", None, local) == "row"


async def test_a_dead_index_falls_back_to_the_local_log_and_never_fails_a_request() -> None:
    pytest.importorskip("redis")
    store = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.3)
    idx = RedisFeedbackIndex(store, replica="a", linger_s=0.01)
    with pytest.raises(StateError, match=r"look up request 'x'"):
        await idx.get("x")

    async def local(rid: str) -> object:
        return "local row"

    assert await find_logged("x", idx, local) == "local row"
    idx.record(entry("x"))  # queued; the failed flush is logged and counted, never raised
    await asyncio.sleep(0.5)
    assert idx.dropped == 1
    await idx.aclose()
    await store.aclose()


async def test_only_a_shared_store_gets_an_index(redis_url: str) -> None:
    assert feedback_index_for(InMemoryCounters()) is None
    store = RedisCounters(redis_url, prefix="x:")
    try:
        idx = feedback_index_for(store, replica="r")
        assert isinstance(idx, RedisFeedbackIndex) and idx.replica == "r"
    finally:
        await store.aclose()
