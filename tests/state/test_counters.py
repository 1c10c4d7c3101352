from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from turnout.errors import MissingDependency
from turnout.state import Counters, InMemoryCounters, RedisCounters


async def test_in_memory_counters_start_at_zero_and_accumulate() -> None:
    c = InMemoryCounters()
    assert isinstance(c, Counters)
    assert await c.get("spend:a") == 0.0
    assert await c.incr("spend:a", 0.25) == 0.25
    assert await c.incr("spend:a", 0.5) == 0.75
    assert await c.get("spend:a") == 0.75
    assert await c.get("spend:b") == 0.0


def test_in_memory_counters_lose_no_increment_across_threads() -> None:
    c = InMemoryCounters()

    def work() -> None:
        for _ in range(2_000):
            c.incr_now("n", 1.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get_now("n") == 16_000.0


async def test_in_memory_counters_lose_no_increment_across_tasks() -> None:
    c = InMemoryCounters()

    async def work() -> None:
        for _ in range(500):
            await c.incr("n", 1.0)
            await asyncio.sleep(0)

    await asyncio.gather(*(work() for _ in range(8)))
    assert await c.get("n") == 4_000.0


def test_redis_counters_without_the_package_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(MissingDependency, match=r"turnout\[redis\]"):
        RedisCounters("redis://127.0.0.1:6379/0")
