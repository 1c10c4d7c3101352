"""Out-of-rotation marks (turnout.state.marks): in memory and in a real Redis, against the same cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from state_helpers import redis_clients

from turnout.errors import StateError
from turnout.state import InMemoryCounters, RedisCounters
from turnout.state.marks import InMemoryMarks, Marks, RedisMarks, marks_for


@pytest.fixture(params=["memory", "redis"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Marks]]:
    """Marks as two replicas see them: one object in memory, two clients of one prefix in Redis."""
    if request.param == "memory":
        one = InMemoryMarks()
        yield lambda: one
        return
    async with redis_clients(request) as client:
        yield lambda: RedisMarks(client())


async def test_a_mark_is_seen_by_every_replica_with_its_time_left(shared: Callable[[], Marks]) -> None:
    a, b = shared(), shared()
    await a.mark("qwen/ep-1", "replica-a", ttl_s=30, reason="circuit breaker open")
    (m,) = await b.live()
    assert (m.endpoint, m.replica, m.reason) == ("qwen/ep-1", "replica-a", "circuit breaker open")
    assert 29.0 < m.remaining_s <= 30.0


async def test_each_replica_clears_only_its_own_mark(shared: Callable[[], Marks]) -> None:
    a, b = shared(), shared()
    await a.mark("m/e", "a", ttl_s=30, reason="probe failed")
    await b.mark("m/e", "b", ttl_s=30, reason="circuit breaker open")
    await a.clear("m/e", "a")
    assert [(m.endpoint, m.replica) for m in await a.live()] == [("m/e", "b")]  # b's verdict still holds it out
    await b.clear("m/e", "b")
    await b.clear("m/e", "b")  # clearing nothing is fine
    assert await a.live() == []


async def test_marks_expire_unless_renewed(shared: Callable[[], Marks]) -> None:
    a = shared()
    await a.mark("m/gone", "dead-replica", ttl_s=0.3, reason="circuit breaker open")
    await a.mark("m/kept", "live-replica", ttl_s=0.3, reason="circuit breaker open")
    await asyncio.sleep(0.2)
    await a.mark("m/kept", "live-replica", ttl_s=0.3, reason="circuit breaker open")  # renewed
    await asyncio.sleep(0.2)
    assert [m.endpoint for m in await a.live()] == ["m/kept"]


async def test_marks_follow_the_state_store(redis_url: str) -> None:
    assert isinstance(marks_for(InMemoryCounters()), InMemoryMarks)
    store = RedisCounters(redis_url, prefix="x:")
    try:
        assert isinstance(marks_for(store), RedisMarks)
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_a_state_error() -> None:
    pytest.importorskip("redis")
    store = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.5)
    marks = RedisMarks(store)
    with pytest.raises(StateError, match="read the out-of-rotation marks"):
        await marks.live()
    with pytest.raises(StateError, match="mark endpoint 'm/e' out of rotation"):
        await marks.mark("m/e", "a", ttl_s=1, reason="x")
    await store.aclose()
