"""Endpoint health (gateway/health.py): probes against real loopback servers, backoff, and marks two replicas share."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from turnout.backends.registry import create_backend
from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.balance import BalanceKey
from turnout.gateway.endpoints import Endpoint
from turnout.gateway.health import HealthMonitor, WatchedBreaker, endpoint_id
from turnout.state import RedisCounters
from turnout.state.marks import InMemoryMarks, Marks, RedisMarks
from turnout.testing.scripted import ScriptedServer, Step
from turnout.types import ChatRequest

KEY = BalanceKey((), 0)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def replica(urls: list[str], clock: Clock, *, failures: int = 2, cooldown_s: float = 30.0) -> ModelTarget:
    """One gateway replica's view of a model served by the engines at ``urls`` (one endpoint each)."""
    eps = [
        Endpoint(f"ep{i}", create_backend("openai", f"b{i}", base_url=u), breaker=WatchedBreaker(failures, cooldown_s, clock))
        for i, u in enumerate(urls)
    ]
    return ModelTarget("qwen", endpoints=eps)


@pytest.fixture
async def engines() -> AsyncIterator[list[ScriptedServer]]:
    servers = [ScriptedServer(Step(text="ok")).start() for _ in range(2)]
    yield servers
    for s in servers:
        s.stop()


def names(t: ModelTarget) -> list[str]:
    return [e.name for e in t.endpoints if e.healthy]


async def test_a_breaker_that_opens_on_one_replica_is_skipped_by_the_other_after_one_round(engines: list[ScriptedServer]) -> None:
    clock, marks = Clock(), InMemoryMarks()
    a, b = replica([s.base_url for s in engines], clock), replica([s.base_url for s in engines], clock)
    ha = HealthMonitor({"qwen": a}, marks, replica="a", interval_s=1.0, clock=clock)
    hb = HealthMonitor({"qwen": b}, marks, replica="b", interval_s=1.0, clock=clock)
    ha.attach()
    hb.attach()
    a.endpoints[0].breaker.record_failure()
    a.endpoints[0].breaker.record_failure()  # the second failure opens it: marked at once, not at A's next round
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [(m.endpoint, m.replica, m.reason) for m in await marks.live()] == [("qwen/ep0", "a", "circuit breaker open")]
    assert names(b) == ["ep0", "ep1"]  # B has not read the marks yet
    await hb.tick()  # B's next round
    assert names(b) == ["ep1"] and all(b.pick(KEY) is b.endpoints[1] for _ in range(10))
    assert hb.describe()["qwen/ep0"]["marked_by"] == ["a"] and not hb.describe()["qwen/ep0"]["in_rotation"]
    # A probes it (the engine answers), but its breaker is still open: the mark stays until the cooldown ends
    await ha.tick()
    await hb.tick()
    assert names(b) == ["ep1"]
    clock.t += 31  # the cooldown is over: A's breaker is half-open and the last probe succeeded
    await ha.tick()
    assert await marks.live() == []
    await hb.tick()
    assert names(b) == ["ep0", "ep1"]


async def test_a_dead_engine_is_probed_back_with_backoff(engines: list[ScriptedServer]) -> None:
    clock = Clock()
    t = replica([s.base_url for s in engines], clock, failures=1, cooldown_s=2.0)
    mon = HealthMonitor({"qwen": t}, InMemoryMarks(), replica="a", interval_s=1.0, max_backoff_s=4.0, clock=clock)
    port = engines[0].port
    engines[0].stop()
    t.endpoints[0].breaker.record_failure()  # a request failed: the breaker opens
    probed_at = []
    for _ in range(12):  # 12 rounds of one second
        before = mon.describe()["qwen/ep0"]["probe_failures"]
        await mon.tick()
        if mon.describe()["qwen/ep0"]["probe_failures"] != before:
            probed_at.append(clock.t)
        clock.t += 1.0
    # probes at 0, then after 1, 2, 4, 4... seconds (the backoff doubles up to max_backoff_s)
    assert [round(x - probed_at[0]) for x in probed_at] == [0, 1, 3, 7, 11]
    assert "Connect" in str(mon.describe()["qwen/ep0"]["last_probe"]) or "refused" in str(
        mon.describe()["qwen/ep0"]["last_probe"]
    )
    # the breaker's cooldown (2 s) is long over, yet the endpoint stays out: its probes fail
    assert t.endpoints[0].breaker.state == "half-open" and names(t) == ["ep1"]
    revived = ScriptedServer(Step(text="back"), port=port).start()
    try:
        clock.t += 4.0
        await mon.tick()
        assert names(t) == ["ep0", "ep1"]  # in again: the half-open breaker lets a real request decide
        assert mon.describe()["qwen/ep0"]["probe_failures"] == 0
    finally:
        revived.stop()
    await mon.aclose()


async def test_active_probes_find_a_dead_engine_before_any_request(engines: list[ScriptedServer]) -> None:
    clock = Clock()
    t = replica([s.base_url for s in engines], clock)
    passive = HealthMonitor({"qwen": t}, None, interval_s=1.0, clock=clock)
    active = HealthMonitor({"qwen": t}, None, interval_s=1.0, active=True, clock=clock)
    engines[1].stop()
    await passive.tick()
    assert names(t) == ["ep0", "ep1"]  # nothing is out here, so the passive monitor probes nothing
    await active.tick()
    assert names(t) == ["ep0"]
    assert t.state == "closed" and t.describe()["endpoints"][1]["in_rotation"] is False
    await active.aclose()


async def _status_server(status: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(("status", "alive"), [(200, True), (401, True), (404, True), (500, False), (503, False)])
async def test_a_server_that_answers_is_up_unless_it_answers_5xx(status: int, alive: bool) -> None:
    server = await _status_server(status)
    port = server.sockets[0].getsockname()[1]
    try:
        t = replica([f"http://127.0.0.1:{port}/v1"], Clock())
        mon = HealthMonitor({"qwen": t}, None, active=True, path="/health")
        assert mon.probe_url(t.endpoints[0]) == f"http://127.0.0.1:{port}/health"
        await mon.tick()
        assert t.endpoints[0].healthy is alive
        assert f"HTTP {status}" in mon.describe()["qwen/ep0"]["last_probe"]
        await mon.aclose()
    finally:
        server.close()


def test_probe_urls_are_relative_to_the_base_url_or_absolute_on_the_host() -> None:
    t = replica(["http://10.0.0.1:8000/v1"], Clock())
    assert HealthMonitor({"qwen": t}).probe_url(t.endpoints[0]) == "http://10.0.0.1:8000/v1/models"
    assert HealthMonitor({"qwen": t}, path="/health").probe_url(t.endpoints[0]) == "http://10.0.0.1:8000/health"
    assert endpoint_id("qwen", t.endpoints[0]) == "qwen/ep0"


async def test_replicas_share_marks_through_redis(redis_url: str, engines: list[ScriptedServer]) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    sa, sb = RedisCounters(redis_url, prefix=prefix), RedisCounters(redis_url, prefix=prefix)
    clock = Clock()
    a, b = replica([s.base_url for s in engines], clock), replica([s.base_url for s in engines], clock)
    ma: Marks = RedisMarks(sa)
    ha = HealthMonitor({"qwen": a}, ma, replica="a", interval_s=0.5, clock=clock)
    hb = HealthMonitor({"qwen": b}, RedisMarks(sb), replica="b", interval_s=0.5, clock=clock)
    try:
        await ha.start()  # attaches the breakers; its task runs rounds every 0.5 s
        a.endpoints[1].breaker.record_failure()
        a.endpoints[1].breaker.record_failure()
        for _ in range(50):  # the mark is written by a task: wait for it (at most a few ms)
            if await ma.live():
                break
            await asyncio.sleep(0.01)
        await hb.tick()
        assert names(b) == ["ep0"]
        await ha.aclose()  # a replica that stops clears its own marks
        await hb.tick()
        assert names(b) == ["ep0", "ep1"]
    finally:
        await hb.aclose()
        await sa.aclose()
        await sb.aclose()


async def test_a_dead_state_store_leaves_each_replica_on_its_own(engines: list[ScriptedServer]) -> None:
    pytest.importorskip("redis")
    store = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.2)
    t = replica([s.base_url for s in engines], Clock())
    mon = HealthMonitor({"qwen": t}, RedisMarks(store), replica="a", active=True)
    await mon.tick()  # marks can be neither read nor written: logged, counted, probing goes on
    assert mon.state_failures >= 1 and names(t) == ["ep0", "ep1"]
    await mon.aclose()
    await store.aclose()


async def test_the_gateway_starts_and_stops_its_monitor(engines: list[ScriptedServer]) -> None:
    clock = Clock()
    t = replica([s.base_url for s in engines], clock)
    mon = HealthMonitor({"qwen": t}, InMemoryMarks(), replica="a", interval_s=0.05, active=True)
    gw = Gateway({"qwen": t}, health=mon)
    await gw.start()
    engines[0].stop()
    for _ in range(100):
        if not t.endpoints[0].healthy:
            break
        await asyncio.sleep(0.02)
    assert names(t) == ["ep1"]
    decision = await gw.route(ChatRequest("qwen", [{"role": "user", "content": "hi"}]))
    assert any("ep0 is out of rotation (held out by the health monitor)" in r.detail for r in decision.reasons)
    await gw.aclose()
    assert await mon.marks.live() == []  # type: ignore[union-attr]  # its marks went with it
