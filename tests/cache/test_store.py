"""The in-process cache store: TTL on an injected clock, LRU bounds, tenant isolation, the vector matrix."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from turnout.cache import CacheStore, InMemoryCacheStore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


BODY: dict[str, Any] = {"choices": [{"message": {"content": "x"}}]}


async def test_is_a_cache_store_and_round_trips() -> None:
    store = InMemoryCacheStore()
    assert isinstance(store, CacheStore) and store.in_process
    await store.put("alice", "ctx", "k1", "What is 2+2?", unit(1), BODY)
    entry = await store.get("alice", "ctx", "k1")
    assert entry is not None and entry.text == "What is 2+2?" and entry.answer is BODY
    assert await store.get("alice", "ctx", "k2") is None
    assert await store.get("alice", "other", "k1") is None
    assert await store.size() == 1 == len(store)


async def test_ttl_expires_on_the_injected_clock() -> None:
    clock = Clock()
    store = InMemoryCacheStore(ttl_s=60, clock=clock)
    await store.put("alice", "ctx", "k1", "q", unit(1), BODY)
    await store.put("alice", "ctx", "k2", "q2", unit(2), BODY, ttl_s=600)  # its own, longer TTL
    clock.t += 59.9
    assert await store.get("alice", "ctx", "k1") is not None
    assert len(await store.nearest("alice", "ctx", unit(1), k=2, min_similarity=0.99)) == 1
    clock.t += 0.2
    assert await store.get("alice", "ctx", "k1") is None
    assert await store.nearest("alice", "ctx", unit(1), k=2, min_similarity=0.99) == []
    assert await store.get("alice", "ctx", "k2") is not None
    assert len(store) == 1  # met expired entries are dropped, not only hidden


async def test_purge_expired_and_no_ttl() -> None:
    clock = Clock()
    store = InMemoryCacheStore(ttl_s=10, clock=clock)
    for i in range(5):
        await store.put("t", f"ctx{i % 2}", f"k{i}", "q", unit(i), BODY)
    clock.t += 11
    assert store.purge_expired() == 5 and len(store) == 0
    forever = InMemoryCacheStore(ttl_s=None, clock=clock)
    await forever.put("t", "c", "k", "q", None, BODY)
    clock.t += 10**9
    assert await forever.get("t", "c", "k") is not None


async def test_lru_bound_evicts_the_least_recently_used() -> None:
    store = InMemoryCacheStore(max_entries=3)
    for k in ("a", "b", "c"):
        await store.put("t", "ctx", k, k, unit(ord(k)), BODY)
    assert await store.get("t", "ctx", "a") is not None  # a is now the most recent
    await store.touch("t", "ctx", "b")  # so is b
    await store.put("t", "ctx", "d", "d", unit(4), BODY)
    assert await store.get("t", "ctx", "c") is None  # c was the least recently used
    assert all([await store.get("t", "ctx", k) is not None for k in "abd"])
    assert len(store) == 3 and store.evictions == 1


async def test_per_tenant_bound_keeps_other_tenants_entries() -> None:
    store = InMemoryCacheStore(max_entries=100, max_entries_per_tenant=2)
    await store.put("quiet", "ctx", "q1", "q", unit(0), BODY)
    for i in range(10):  # a busy tenant
        await store.put("busy", "ctx", f"b{i}", "q", unit(i + 1), BODY)
    assert await store.get("quiet", "ctx", "q1") is not None
    assert await store.get("busy", "ctx", "b9") is not None and await store.get("busy", "ctx", "b8") is not None
    assert await store.get("busy", "ctx", "b7") is None
    assert len(store) == 3


async def test_tenants_never_see_each_others_entries() -> None:
    store = InMemoryCacheStore()
    vec = unit(7)
    await store.put("alice", "ctx", "k", "secret question", vec, BODY)
    assert await store.get("bob", "ctx", "k") is None
    assert await store.nearest("bob", "ctx", vec, k=4, min_similarity=-1.0) == []
    await store.put("bob", "ctx", "k", "bob's question", vec, {"choices": []})
    entry = await store.get("alice", "ctx", "k")
    assert entry is not None and entry.text == "secret question"
    assert await store.clear("bob") == 1
    assert await store.get("alice", "ctx", "k") is not None


async def test_nearest_matches_brute_force_through_evictions_and_replacements() -> None:
    store = InMemoryCacheStore(max_entries=40)
    kept: dict[str, np.ndarray] = {}
    for i in range(120):  # rows move on every eviction (swap with the last row)
        key = f"k{i % 60}"  # the second half replaces keys of the first
        vec = unit(i, dim=16)
        await store.put("t", "ctx", key, key, vec, BODY)
        kept[key] = vec
    live = {k: v for k, v in kept.items() if await store.get("t", "ctx", k) is not None}
    assert len(live) == 40
    for probe in range(5):
        query = unit(1000 + probe, dim=16)
        found = await store.nearest("t", "ctx", query, k=5, min_similarity=-1.0)
        expected = sorted(live, key=lambda k: -float(live[k] @ query))[:5]
        assert [e.key for e, _ in found] == expected
        assert [s for _, s in found] == pytest.approx([float(live[k] @ query) for k in expected], abs=1e-6)
    above = await store.nearest("t", "ctx", unit(3, dim=16), k=40, min_similarity=0.5)
    assert all(s >= 0.5 for _, s in above)


async def test_entries_without_vector_hit_only_exactly_and_dims_must_agree() -> None:
    store = InMemoryCacheStore()
    await store.put("t", "ctx", "novec", "", None, BODY)
    assert await store.nearest("t", "ctx", unit(1), k=3, min_similarity=-1.0) == []
    await store.put("t", "ctx", "vec", "q", unit(1), BODY)
    assert [e.key for e, _ in await store.nearest("t", "ctx", unit(1), k=3, min_similarity=-1.0)] == ["vec"]
    with pytest.raises(ValueError, match="dimension"):
        await store.put("t", "ctx", "other", "q", unit(1, dim=4), BODY)
    with pytest.raises(ValueError, match="shape"):
        await store.nearest("t", "ctx", unit(1, dim=4), k=1, min_similarity=0.0)


async def test_stored_vector_is_a_private_copy() -> None:
    store = InMemoryCacheStore()
    vec = unit(1)
    await store.put("t", "ctx", "k", "q", vec, BODY)
    vec[:] = 0  # the caller reuses its buffer
    found = await store.nearest("t", "ctx", unit(1), k=1, min_similarity=0.99)
    assert len(found) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        InMemoryCacheStore(max_entries=0)
    with pytest.raises(ValueError, match="ttl_s"):
        InMemoryCacheStore(ttl_s=0)
    with pytest.raises(ValueError, match="max_entries_per_tenant"):
        InMemoryCacheStore(max_entries_per_tenant=0)


def test_safe_to_share_between_threads() -> None:
    store = InMemoryCacheStore(max_entries=50)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        async def run() -> None:
            for i in range(300):
                await store.put(f"tenant{t % 2}", "ctx", f"{t}-{i}", "q", unit(i, dim=8), BODY)
                await store.nearest(f"tenant{t % 2}", "ctx", unit(i + 1, dim=8), k=3, min_similarity=0.0)
                await store.get(f"tenant{t % 2}", "ctx", f"{t}-{i - 1}")

        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(store) == 50

    async def consistent() -> int:
        # every entry a vector search finds is the one its key finds: rows and key index agree
        n = 0
        for tenant in ("tenant0", "tenant1"):
            for entry, _ in await store.nearest(tenant, "ctx", unit(0, dim=8), k=50, min_similarity=-1.0):
                assert await store.get(tenant, "ctx", entry.key) is entry
                n += 1
        return n

    assert asyncio.run(consistent()) == 50
