"""Versioned blobs with compare-and-set (turnout.state.shared_stats): in memory and in a real Redis, same cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from state_helpers import redis_clients

from turnout.errors import StateError
from turnout.state import InMemoryCounters, RedisCounters
from turnout.state.shared_stats import InMemorySharedStats, RedisSharedStats, SharedStats, shared_stats_for


@pytest.fixture(params=["memory", "redis"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], SharedStats]]:
    """Shared statistics as replicas see them: one object in memory, separate clients of one prefix in Redis."""
    if request.param == "memory":
        one = InMemorySharedStats()
        yield lambda: one
        return
    async with redis_clients(request) as client:
        yield lambda: RedisSharedStats(client())


async def test_an_absent_key_reads_as_version_0_and_a_swap_creates_it_once(shared: Callable[[], SharedStats]) -> None:
    a, b = shared(), shared()
    assert await a.read("bandit:r:1") == (None, 0)
    assert await a.swap("bandit:r:1", b"first", 0) == 1
    assert await b.swap("bandit:r:1", b"also first", 0) is None  # b read it absent too late: nothing written
    assert await b.read("bandit:r:1") == (b"first", 1)
    assert await b.swap("bandit:r:1", b"\x00second\xff", 1) == 2  # arbitrary bytes survive the round trip
    assert await a.read("bandit:r:1") == (b"\x00second\xff", 2)
    assert await a.read("bandit:r:2") == (None, 0)  # keys are apart


async def test_a_stale_version_never_overwrites(shared: Callable[[], SharedStats]) -> None:
    a = shared()
    await a.swap("k", b"v1", 0)
    await a.swap("k", b"v2", 1)
    for stale in (0, 1, 3):
        assert await a.swap("k", b"lost", stale) is None
    assert await a.read("k") == (b"v2", 2)


async def test_concurrent_read_modify_writes_lose_no_increment(shared: Callable[[], SharedStats]) -> None:
    """Eight writers adding 1 twenty times each through read + swap (retrying on a conflict) end at 160."""

    async def writer(stats: SharedStats) -> int:
        conflicts = 0
        for _ in range(20):
            while True:
                blob, version = await stats.read("count")
                n = int(blob or b"0") + 1
                if await stats.swap("count", str(n).encode(), version) is not None:
                    break
                conflicts += 1
                await asyncio.sleep(0)
        return conflicts

    clients = [shared() for _ in range(8)]
    await asyncio.gather(*(writer(c) for c in clients))
    blob, version = await clients[0].read("count")
    assert blob == b"160" and version == 160


async def test_shared_stats_follow_the_state_store(redis_url: str) -> None:
    assert isinstance(shared_stats_for(InMemoryCounters()), InMemorySharedStats)
    store = RedisCounters(redis_url, prefix="x:")
    try:
        stats = shared_stats_for(store)
        assert isinstance(stats, RedisSharedStats) and not stats.in_process and "x:" in repr(stats)
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_a_state_error_naming_it() -> None:
    pytest.importorskip("redis")
    stats = RedisSharedStats(RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.5))
    with pytest.raises(StateError, match=r"127\.0\.0\.1:1.*read the shared statistics 'bandit:r'"):
        await stats.read("bandit:r")
    with pytest.raises(StateError, match="write the shared statistics 'bandit:r'"):
        await stats.swap("bandit:r", b"x", 0)
