"""Bandit learning shared by replicas (gateway/bandit_sync.py): every replica ends with the statistics of one bandit
that saw every lesson: through failures, in-flight feedback, late joiners; in one process and through a real Redis."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from turnout.config import parse_config, resolve
from turnout.errors import ConfigError, StateError
from turnout.gateway import Gateway
from turnout.gateway.bandit_route import BanditRoute
from turnout.gateway.bandit_sync import FIELDS, BanditSync, encode, shared_key
from turnout.gateway.builder import build_gateway
from turnout.routing.bandit import BanditRouter
from turnout.state.shared_stats import InMemorySharedStats, RedisSharedStats
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest

DIM = 16


def bandit() -> BanditRouter:
    """A cold bandit as every replica builds it from one config (seeded random projection)."""
    return BanditRouter(d=4, projection="random", models=["small", "big"], dim=DIM)


def lessons(n: int, seed: int = 0) -> list[tuple[np.ndarray, int, float, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(DIM), int(rng.integers(2)), float(rng.random()), float(rng.random()) / 100) for _ in range(n)]


def teach(b: BanditRouter, ref: BanditRouter, some: list[tuple[np.ndarray, int, float, float]]) -> None:
    """``b`` learns ``some``; so does ``ref``, the one bandit that sees every lesson of every replica."""
    for x, arm, q, c in some:
        b.update(x, arm, q, c)
        ref.update(x, arm, q, c)


def assert_same(b: BanditRouter, ref: BanditRouter) -> None:
    got, want = b.get_state(), ref.get_state()
    assert np.array_equal(got["n"], want["n"]) and np.array_equal(got["nc"], want["nc"])  # counts: exact
    for f in FIELDS:
        assert np.allclose(got[f], want[f], rtol=1e-12, atol=1e-9), f


class Unreliable:
    """A SharedStats that fails on cue: reads that raise, swaps that raise before writing or after, a stalled read."""

    in_process = True

    def __init__(self, inner: InMemorySharedStats) -> None:
        self.inner = inner
        self.fail_reads = 0
        #: swaps that raise without writing; swaps that write and then raise (a timeout after the server applied it)
        self.fail_swaps_before = 0
        self.fail_swaps_after = 0
        #: a swap that raises and is applied only later, when the test says (a write still in flight)
        self.defer_swaps = 0
        self.deferred: list[tuple[str, bytes, int]] = []
        #: awaited by every read while set: feedback can arrive while an exchange is waiting on the store
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        #: run after a read returns (e.g. another replica, or a deferred write, lands in between)
        self.after_read: Callable[[], Awaitable[None]] | None = None

    async def read(self, key: str) -> tuple[bytes | None, int]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StateError("Redis at redis://test failed to read: connection refused")
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        got = await self.inner.read(key)
        if self.after_read is not None:
            hook, self.after_read = self.after_read, None
            await hook()
        return got

    async def swap(self, key: str, blob: bytes, expect_version: int) -> int | None:
        if self.fail_swaps_before:
            self.fail_swaps_before -= 1
            raise StateError("Redis at redis://test failed to write: connection reset")
        if self.defer_swaps:
            self.defer_swaps -= 1
            self.deferred.append((key, blob, expect_version))
            raise StateError("Redis at redis://test failed to write: timed out")
        new = await self.inner.swap(key, blob, expect_version)
        if self.fail_swaps_after:
            self.fail_swaps_after -= 1
            raise StateError("Redis at redis://test failed to write: timed out")
        return new

    async def land_deferred(self) -> int | None:
        return await self.inner.swap(*self.deferred.pop(0))


# -- the algorithm, on bare bandits ------------------------------------------------------------------------------
async def test_replicas_converge_on_the_statistics_of_one_bandit_that_saw_every_lesson() -> None:
    store = InMemorySharedStats()
    a, b, ref = bandit(), bandit(), bandit()
    sa, sb = BanditSync(a, store, route="learn"), BanditSync(b, store, route="learn")
    assert sa.key == sb.key and sa.key.startswith("bandit:learn:")
    all_lessons = lessons(90)
    for r in range(3):  # rounds: each replica learns its own share, then both exchange (in either order)
        teach(a, ref, all_lessons[30 * r : 30 * r + 20])
        teach(b, ref, all_lessons[30 * r + 20 : 30 * r + 30])
        first, second = (sa, sb) if r % 2 == 0 else (sb, sa)
        await first.sync()
        assert await second.sync()  # merged the first's lessons
        await first.sync()  # and the first gets the second's
    assert_same(a, ref)
    assert_same(b, ref)
    assert a.observations.sum() == 90
    # nothing new anywhere: an exchange merges nothing and changes nothing
    before = a.get_state()["A"].copy()
    assert not await sa.sync() and np.array_equal(a.get_state()["A"], before)


async def test_a_late_joiner_replaces_its_start_with_everything_the_cluster_learned() -> None:
    store = InMemorySharedStats()
    a, ref = bandit(), bandit()
    teach(a, ref, lessons(10, seed=1))
    old = BanditRouter.from_state(a.get_state())  # a replica restarting from a state file saved at this point
    sa = BanditSync(a, store, route="learn")
    teach(a, ref, lessons(15, seed=2))
    await sa.sync()
    fresh = bandit()  # a replica that never learned anything
    for joiner in (old, fresh):
        assert not np.array_equal(joiner.observations, ref.observations)
        assert await BanditSync(joiner, store, route="learn").sync()
        assert_same(joiner, ref)


async def test_an_empty_store_is_seeded_with_the_first_replicas_statistics() -> None:
    store = InMemorySharedStats()
    a, ref = bandit(), bandit()
    teach(a, ref, lessons(12, seed=3))
    restored = BanditRouter.from_state(a.get_state())  # learned before sharing: what a state file brings
    assert not await BanditSync(restored, store, route="learn").sync()
    joiner = bandit()
    await BanditSync(joiner, store, route="learn").sync()
    assert_same(joiner, ref)


async def test_failed_exchanges_lose_nothing_and_count_nothing_twice(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Unreliable(InMemorySharedStats())
    a, b, ref = bandit(), bandit(), bandit()
    sa, sb = BanditSync(a, flaky, route="learn"), BanditSync(b, flaky.inner, route="learn")
    caplog.set_level(logging.WARNING, logger="turnout.gateway.bandit_sync")
    # 1. the read fails: nothing sent, everything kept for the next exchange; one warning for the outage
    teach(a, ref, lessons(5, seed=10))
    flaky.fail_reads = 2
    assert not await sa.sync() and not await sa.sync()
    assert sa.failures == 2 and sum("could not share" in r.message for r in caplog.records) == 1
    # 2. the write fails before it is applied: sent again
    teach(a, ref, lessons(5, seed=11))
    flaky.fail_swaps_before = 1
    await sa.sync()
    # 3. the write is applied but its answer is lost (a timeout): a later read shows it landed, not sent again
    teach(a, ref, lessons(5, seed=12))
    flaky.fail_swaps_after = 1
    await sa.sync()
    teach(b, ref, lessons(7, seed=13))
    await sb.sync()  # another replica writes on top meanwhile
    teach(a, ref, lessons(3, seed=14))
    await sa.sync()
    assert sum("sharing the bandit's learning again" in r.message for r in caplog.records) == 1
    await sb.sync()
    assert_same(a, ref)
    assert_same(b, ref)
    assert a.observations.sum() == 25


async def test_a_write_that_lands_late_is_recognised_wherever_it_lands() -> None:
    flaky = Unreliable(InMemorySharedStats())
    a, ref = bandit(), bandit()
    sa = BanditSync(a, flaky, route="learn")
    # it lands before the next read
    teach(a, ref, lessons(4, seed=20))
    flaky.defer_swaps = 1
    await sa.sync()
    assert await flaky.land_deferred() == 1
    teach(a, ref, lessons(4, seed=21))
    await sa.sync()
    # it lands between the next read and the next write: that write meets a conflict, reads again, recognises it
    teach(a, ref, lessons(4, seed=22))
    flaky.defer_swaps = 1
    await sa.sync()
    teach(a, ref, lessons(4, seed=23))

    async def land() -> None:
        assert await flaky.land_deferred() is not None

    flaky.after_read = land
    await sa.sync()
    # it never lands (it was overtaken): sent again by the next write, and the stale write cannot land after it
    teach(a, ref, lessons(4, seed=24))
    flaky.defer_swaps = 1
    await sa.sync()
    teach(a, ref, lessons(4, seed=25))
    await sa.sync()
    assert await flaky.land_deferred() is None
    joiner = bandit()
    await BanditSync(joiner, flaky.inner, route="learn").sync()
    assert_same(joiner, ref)
    assert joiner.observations.sum() == 24


async def test_feedback_learned_while_an_exchange_awaits_the_store_is_not_lost() -> None:
    flaky = Unreliable(InMemorySharedStats())
    a, b, ref = bandit(), bandit(), bandit()
    sa, sb = BanditSync(a, flaky, route="learn"), BanditSync(b, flaky.inner, route="learn")
    teach(b, ref, lessons(6, seed=30))
    await sb.sync()
    teach(a, ref, lessons(6, seed=31))
    flaky.gate = asyncio.Event()
    pending = asyncio.create_task(sa.sync())
    await flaky.waiting.wait()
    teach(a, ref, lessons(6, seed=32))  # feedback on the event loop while the exchange waits on the store
    flaky.gate.set()
    assert await pending  # merged b's lessons
    flaky.gate = None
    await sa.sync()
    await sb.sync()
    assert_same(a, ref)
    assert_same(b, ref)


async def test_a_conflicting_writer_makes_the_exchange_read_again_not_overwrite() -> None:
    flaky = Unreliable(InMemorySharedStats())
    a, b, ref = bandit(), bandit(), bandit()
    sa, sb = BanditSync(a, flaky, route="learn"), BanditSync(b, flaky.inner, route="learn")
    teach(a, ref, lessons(5, seed=40))
    teach(b, ref, lessons(5, seed=41))

    async def b_writes() -> None:
        await sb.sync()

    flaky.after_read = b_writes  # b writes between a's read and a's swap
    await sa.sync()
    await sb.sync()
    assert_same(a, ref)
    assert_same(b, ref)
    assert (await flaky.inner.read(sa.key))[1] == 2  # two writes, neither overwriting the other


async def test_a_blob_of_another_shape_stops_sharing_without_crashing(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemorySharedStats()
    a = bandit()
    sa = BanditSync(a, store, route="learn")
    K, d1 = 3, 5
    other = {"A": np.zeros((K, d1, d1)), "bq": np.zeros((K, d1)), "bc": np.zeros((K, d1)), "n": np.ones(K), "nc": np.zeros(K)}
    await store.swap(sa.key, encode(other, {}), 0)
    a.update(np.ones(DIM), 0, 1.0)
    before = a.get_state()
    caplog.set_level(logging.ERROR, logger="turnout.gateway.bandit_sync")
    assert not await sa.sync()
    assert sa.stopped is not None and "3 arms x 5 features" in sa.stopped and "bandit.share: off" in sa.stopped
    assert not await sa.sync()
    assert sum("stopped sharing" in r.message for r in caplog.records) == 1
    after = a.get_state()
    assert all(np.array_equal(after[f], before[f]) for f in FIELDS)  # the bandit goes on as it was
    a.update(np.ones(DIM), 1, 0.5)
    assert a.observations.sum() == 2
    assert (await store.read(sa.key))[1] == 1  # and never writes over the foreign blob
    await store.swap(sa.key, b"not a bandit", 1)
    again = BanditSync(bandit(), store, route="learn")
    assert not await again.sync() and again.stopped is not None and "not a bandit's" in again.stopped


def test_the_key_names_what_makes_statistics_comparable_and_agrees_across_processes() -> None:
    key = shared_key("learn", bandit().get_state())
    code = (
        "from turnout.routing.bandit import BanditRouter\n"
        "from turnout.gateway.bandit_sync import shared_key\n"
        f"b = BanditRouter(d=4, projection='random', models=['small', 'big'], dim={DIM})\n"
        "print(shared_key('learn', b.get_state()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == key  # a cold bandit's seeded projection is the same in another process
    others = [
        shared_key("other", bandit().get_state()),
        shared_key("learn", BanditRouter(d=4, projection="random", models=["big", "small"], dim=DIM).get_state()),
        shared_key("learn", BanditRouter(d=4, projection="random", models=["small", "big"], dim=DIM, seed=1).get_state()),
        shared_key("learn", BanditRouter(d=5, projection="random", models=["small", "big"], dim=DIM).get_state()),
        shared_key("learn", BanditRouter(d=4, projection="random", models=["small", "big"], dim=DIM, reg=1.0).get_state()),
    ]
    assert key not in others and len(set(others)) == len(others)
    # exploration settings change decisions, not what the statistics mean
    assert (
        shared_key("learn", BanditRouter(d=4, projection="random", models=["small", "big"], dim=DIM, alpha=2.0).get_state())
        == key
    )


# -- in the gateway ---------------------------------------------------------------------------------------------
def config(tmp: Path, *, bandit: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "server": {"request_log": str(tmp / "log.sqlite")},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "small": {"backend": "up", "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
            "big": {"backend": "up", "price": {"input_per_mtok": 10, "output_per_mtok": 30}},
        },
        "routes": {
            "learn": {
                "router": {"type": "bandit", "params": {"d": 8}},
                "embedder": "hashing",
                "candidates": ["small", "big"],
                "lambda": 50,
                "bandit": {"seed": 0, **(bandit or {})},
            }
        },
        **({"state": state} if state is not None else {}),
    }


def build(data: dict[str, Any], **kw: Any) -> Gateway:
    gw = build_gateway(resolve(parse_config(data, source="test.yaml")), **kw)
    for t in gw.targets.values():
        t.backend = ScriptedBackend(t.name, Step(text=f"an answer from {t.name}"))
    return gw


def route(gw: Gateway) -> BanditRoute:
    rt = gw.routes["learn"]
    assert isinstance(rt, BanditRoute)
    return rt


def ask(i: int) -> ChatRequest:
    return ChatRequest("learn", [{"role": "user", "content": f"translate into french: {i} the cat sleeps"}])


async def serve_and_score(gw: Gateway, rid: str, i: int, *, scored_on: Gateway | None = None) -> None:
    _, d, _ = await gw.chat(ask(i), request_id=rid)
    if gw.feedback_index is not None:
        await gw.feedback_index.flush()  # the index entry another replica's feedback path reads
    res = await (scored_on or gw).feedback(rid, 0.1 if d.model == "small" else 0.9)
    assert res.learned, res.detail


def same_statistics(*gws: Gateway) -> bool:
    states = [route(g).bandit.get_state() for g in gws]
    return all(np.allclose(s[f], states[0][f], rtol=1e-12, atol=1e-9) for s in states[1:] for f in FIELDS)


def test_share_follows_the_state_store_unless_told(tmp_path: Path) -> None:
    assert route(build(config(tmp_path))).shared is None  # auto, one process: nothing to share with
    on = route(build(config(tmp_path, bandit={"share": "on", "share_every_s": 0.5})))
    assert isinstance(on.shared, InMemorySharedStats) and on.share_every_s == 0.5
    redis = {"redis_url": "redis://127.0.0.1:1/0", "prefix": "x:"}  # built, never reached: no connection yet
    pytest.importorskip("redis")
    assert isinstance(route(build(config(tmp_path, state=redis))).shared, RedisSharedStats)
    assert route(build(config(tmp_path, state=redis, bandit={"share": "off"}))).shared is None
    # YAML reads a bare on/off as a boolean: it means on/off here
    assert parse_config(config(tmp_path, bandit={"share": True})).routes["learn"].bandit.share == "on"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="share_every_s"):
        parse_config(config(tmp_path, bandit={"share_every_s": 0}))
    with pytest.raises(ConfigError, match="share"):
        parse_config(config(tmp_path, bandit={"share": "sometimes"}))


async def test_gateways_of_one_process_share_their_bandits_learning(tmp_path: Path) -> None:
    one = InMemorySharedStats()

    def replica(name: str) -> Gateway:
        settings = {"share": "on", "share_every_s": 60, "state_path": str(tmp_path / name / "learn.npz")}
        return build(config(tmp_path / name, bandit=settings), shared_stats=one)

    a, b = replica("a"), replica("b")
    await a.start()
    await b.start()
    assert set(a.learning.syncs) == {"learn"} and a.learning.syncs["learn"].key == b.learning.syncs["learn"].key
    for i in range(4):
        await serve_and_score(a, f"a{i}", i)
    assert route(b).bandit.observations.sum() == 0
    assert await a.learning.share() == {"learn": False}  # sent, nothing of the others' to merge
    assert await b.learning.share() == {"learn": True}
    assert route(b).bandit.observations.sum() == 4 and same_statistics(a, b)
    assert route(b).dirty  # a merge is learning: the saver writes the state file
    # what b learns just before it stops goes out with its last exchange, and into its state file
    await serve_and_score(b, "b1", 10)
    await b.aclose()
    from turnout.routing.artifact import load_router

    saved, _ = load_router(tmp_path / "b" / "learn.npz")
    assert saved.observations.sum() == 5
    await a.learning.share()
    assert route(a).bandit.observations.sum() == 5
    await a.aclose()


async def test_replicas_on_redis_share_feedback_and_a_late_replica_starts_from_it(tmp_path: Path, redis_url: str) -> None:
    pytest.importorskip("redis")
    state = {"redis_url": redis_url, "prefix": f"t-{uuid.uuid4().hex[:6]}:"}
    bandit_settings = {"share_every_s": 0.05}
    a = build(config(tmp_path / "a", state=state, bandit=bandit_settings))
    b = build(config(tmp_path / "b", state=state, bandit=bandit_settings))
    late = None
    try:
        await a.start()
        await b.start()

        async def until(cond: Callable[[], bool]) -> None:
            for _ in range(200):
                if cond():
                    return
                await asyncio.sleep(0.025)
            raise AssertionError("the replicas did not converge within 5 s")

        def n(gw: Gateway) -> float:
            return float(route(gw).bandit.observations.sum())

        await serve_and_score(a, "r1", 1)  # served and scored on a
        await until(lambda: n(b) == 1)
        await serve_and_score(a, "r2", 2, scored_on=b)  # served on a, scored on b (the feedback index has it)
        await serve_and_score(b, "r3", 3)
        await until(lambda: n(a) == 3 and n(b) == 3)
        await until(lambda: same_statistics(a, b))
        late = build(config(tmp_path / "c", state=state, bandit=bandit_settings))
        assert n(late) == 0
        await late.start()  # its first exchange, before it serves: everything the others learned
        assert n(late) == 3 and same_statistics(a, late)
        assert a.learning.syncs["learn"].failures == 0 and a.learning.syncs["learn"].synced > 1
    finally:
        for gw in (a, b, late):
            if gw is not None:
                await gw.aclose()
