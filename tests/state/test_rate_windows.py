"""Rate windows (turnout.state.ratelimit): the in-process and the Redis implementation, against the same cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from state_helpers import redis_clients

from turnout.state import RedisCounters
from turnout.state.ratelimit import (
    InMemoryRateWindows,
    RateWindows,
    RedisRateWindows,
    rate_windows_for,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[float], RateWindows]]:
    """A factory of windows of a given length, in memory or in a real Redis (one prefix per test)."""
    if request.param == "memory":
        yield lambda window_s: InMemoryRateWindows(window_s=window_s)
        return
    async with redis_clients(request) as client:
        yield lambda window_s: RedisRateWindows(client(), window_s=window_s)


async def test_rpm_admits_exactly_the_limit_then_says_when_to_retry(make: Callable[[float], RateWindows]) -> None:
    w = make(60.0)
    for i in range(3):
        d = await w.admit("alice", f"r{i}", rpm=3, tpm=None, tokens=0)
        assert d.ok and d.used == i + 1
    d = await w.admit("alice", "r3", rpm=3, tpm=None, tokens=0)
    assert not d.ok and d.limit == "rpm" and d.used == 3
    assert 55.0 < d.retry_after_s <= 60.0  # the oldest of the three leaves the window in about a minute
    # a refused request is not recorded, and other keys have windows of their own
    assert not (await w.admit("alice", "r4", rpm=3, tpm=None, tokens=0)).ok
    assert (await w.admit("bob", "b0", rpm=3, tpm=None, tokens=0)).ok


async def test_the_window_slides_rather_than_resetting_each_minute() -> None:
    clock = Clock()
    w = InMemoryRateWindows(window_s=60.0, clock=clock)
    assert (await w.admit("k", "a", rpm=2, tpm=None, tokens=0)).ok  # t = 0
    clock.t += 30
    assert (await w.admit("k", "b", rpm=2, tpm=None, tokens=0)).ok  # t = 30
    clock.t += 29.5
    d = await w.admit("k", "c", rpm=2, tpm=None, tokens=0)  # t = 59.5: both still in the window
    assert not d.ok and d.retry_after_s == pytest.approx(0.5)
    clock.t += 0.6  # t = 60.1: the first left, the second (t = 30) is still there
    assert (await w.admit("k", "c", rpm=2, tpm=None, tokens=0)).ok
    d = await w.admit("k", "d", rpm=2, tpm=None, tokens=0)
    assert not d.ok and d.retry_after_s == pytest.approx(29.9)  # until t = 90, when "b" leaves


async def test_requests_leave_the_window_after_window_s(make: Callable[[float], RateWindows]) -> None:
    w = make(0.4)
    assert (await w.admit("k", "a", rpm=1, tpm=None, tokens=0)).ok
    d = await w.admit("k", "b", rpm=1, tpm=None, tokens=0)
    assert not d.ok and 0 < d.retry_after_s <= 0.4
    await asyncio.sleep(d.retry_after_s + 0.05)
    assert (await w.admit("k", "b", rpm=1, tpm=None, tokens=0)).ok


async def test_concurrent_admissions_never_pass_the_limit(make: Callable[[float], RateWindows]) -> None:
    # four clients racing for one key's 25 requests: four replicas with Redis, four tasks sharing one process's
    windows = [make(60.0) for _ in range(4)]
    if isinstance(windows[0], InMemoryRateWindows):
        windows = [windows[0]] * 4

    async def burst(w: RateWindows, n: int) -> int:
        got = await asyncio.gather(*(w.admit("shared", f"{id(w)}-{i}", rpm=25, tpm=None, tokens=0) for i in range(n)))
        return sum(d.ok for d in got)

    admitted = await asyncio.gather(*(burst(w, 20) for w in windows))
    assert sum(admitted) == 25


async def test_tokens_are_held_at_admission_and_settled_at_what_was_used(make: Callable[[float], RateWindows]) -> None:
    w = make(60.0)
    assert (await w.admit("k", "a", rpm=None, tpm=1000, tokens=600)).ok
    assert (await w.admit("k", "b", rpm=None, tpm=1000, tokens=300)).ok  # 900 held: still under 1000
    await w.settle("k", "a", 100)  # "a" used far less than it held: 400 in the window now
    assert (await w.admit("k", "c", rpm=None, tpm=1000, tokens=550)).ok  # 950
    await w.settle("k", "c", 700)  # ...and "c" more: 1100
    d = await w.admit("k", "d", rpm=None, tpm=1000, tokens=1)
    assert not d.ok and d.limit == "tpm" and d.used == 1100
    # the window falls under tpm once "a" (100) and "b" (300) leave: 700 < 1000
    assert 55.0 < d.retry_after_s <= 60.0


async def test_a_settlement_after_the_record_expired_counts_the_tokens_now(make: Callable[[float], RateWindows]) -> None:
    w = make(0.3)
    assert (await w.admit("k", "long", rpm=None, tpm=100, tokens=10)).ok
    await asyncio.sleep(0.4)  # the request outlived the window
    await w.settle("k", "long", 150)
    d = await w.admit("k", "next", rpm=None, tpm=100, tokens=1)
    assert not d.ok and d.used == 150


async def test_rpm_and_tpm_together_refuse_on_whichever_is_full(make: Callable[[float], RateWindows]) -> None:
    w = make(60.0)
    assert (await w.admit("k", "a", rpm=5, tpm=100, tokens=120)).ok  # one request may pass tpm (room was left)
    d = await w.admit("k", "b", rpm=5, tpm=100, tokens=1)
    assert not d.ok and d.limit == "tpm"
    # the refusal by tpm did not take an rpm slot: four more requests fit once tokens allow (another key here)
    for i in range(5):
        assert (await w.admit("k2", f"x{i}", rpm=5, tpm=10_000, tokens=1)).ok
    assert (await w.admit("k2", "x5", rpm=5, tpm=10_000, tokens=1)).limit == "rpm"


async def test_rate_windows_follow_the_state_store(redis_url: str) -> None:
    from turnout.state import InMemoryCounters

    assert isinstance(rate_windows_for(InMemoryCounters()), InMemoryRateWindows)
    store = RedisCounters(redis_url, prefix="x:")
    try:
        assert isinstance(rate_windows_for(store), RedisRateWindows)
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_a_state_error_naming_the_url() -> None:
    pytest.importorskip("redis")
    from turnout.errors import StateError

    store = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.5)
    w = RedisRateWindows(store)
    with pytest.raises(StateError, match=r"redis://127\.0\.0\.1:1/0 failed to check the rate limits of 'k'"):
        await w.admit("k", "a", rpm=1, tpm=None, tokens=0)
    with pytest.raises(StateError, match="record the tokens"):
        await w.settle("k", "a", 5)
    await store.aclose()
