"""RedisCounters against a real redis-server (tests/conftest.py); skipped with a reason when absent."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from turnout.errors import BudgetExceededError, StateError
from turnout.gateway.keys import KeySpec, KeyStore, hash_key
from turnout.state import Counters, RedisCounters


@pytest.fixture
def prefix() -> str:
    # every test writes under its own prefix: the server is shared by the session
    return f"test-{uuid.uuid4().hex[:8]}:"


async def test_redis_counters_incr_and_get(redis_url: str, prefix: str) -> None:
    c = RedisCounters(redis_url, prefix=prefix)
    try:
        await c.ping()
        assert isinstance(c, Counters)
        assert await c.get("x") == 0.0
        assert await c.incr("x", 0.125) == pytest.approx(0.125)
        assert await c.incr("x", 1.5) == pytest.approx(1.625)
        same, other = RedisCounters(redis_url, prefix=prefix), RedisCounters(redis_url, prefix=prefix + "other:")
        assert await same.get("x") == pytest.approx(1.625)
        assert await other.get("x") == 0.0
        assert await same.get_many(["x", "none"]) == [pytest.approx(1.625), 0.0]
        await same.aclose()
        await other.aclose()
    finally:
        await c.aclose()


async def test_redis_increments_from_many_clients_are_atomic(redis_url: str, prefix: str) -> None:
    clients = [RedisCounters(redis_url, prefix=prefix) for _ in range(4)]

    async def work(c: RedisCounters) -> None:
        for _ in range(250):
            await c.incr("n", 0.5)

    await asyncio.gather(*(work(c) for c in clients))
    assert await clients[0].get("n") == pytest.approx(500.0)
    for c in clients:
        await c.aclose()


async def test_two_keystores_sharing_redis_see_each_others_spend(redis_url: str, prefix: str) -> None:
    # the scaled-out case: two gateway replicas, one budget
    spec = KeySpec("team", hash_key("sk-team"), budget_usd=1.0)
    a = KeyStore([spec], RedisCounters(redis_url, prefix=prefix))
    b = KeyStore([spec], RedisCounters(redis_url, prefix=prefix))
    await a.record_spend(a.authenticate("sk-team"), 0.6)
    assert await b.spent(spec) == pytest.approx(0.6)
    await b.check_budget(spec)  # 0.6 < 1.0
    await b.record_spend(spec, 0.5)
    assert await a.spent(spec) == pytest.approx(1.1)
    with pytest.raises(BudgetExceededError, match=r"\$1\.1 of its \$1 budget"):
        await a.check_budget(spec)


async def test_unreachable_redis_raises_a_state_error_naming_the_url() -> None:
    pytest.importorskip("redis")
    c = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(StateError, match=r"redis://127\.0\.0\.1:1/0"):
        await c.ping()
    with pytest.raises(StateError, match="increment"):
        await c.incr("x", 1.0)
    with pytest.raises(StateError, match="read 'x'.*is redis-server running"):
        await c.get("x")


async def test_messages_mask_the_password_of_the_url() -> None:
    pytest.importorskip("redis")
    c = RedisCounters("redis://app:s3cret@127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(StateError) as info:
        await c.get("x")
    assert "s3cret" not in str(info.value) and "redis://app:***@127.0.0.1:1/0" in str(info.value)
    assert "s3cret" not in repr(c) and c.url == "redis://app:s3cret@127.0.0.1:1/0"
    with pytest.raises(StateError, match="invalid Redis URL") as info:
        RedisCounters("http://:hunter2@127.0.0.1/0")
    assert "hunter2" not in str(info.value)
