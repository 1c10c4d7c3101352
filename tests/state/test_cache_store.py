"""The semantic cache in Redis (turnout.state.cache_store): two replicas share hits; a dead Redis is a miss."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from turnout.cache import ContextFingerprint, SemanticCache
from turnout.errors import StateError
from turnout.state import InMemoryCounters, RedisCounters
from turnout.state.cache_store import (
    FailOpenCacheStore,
    RedisCacheStore,
    cache_store_for,
)
from turnout.testing import HashEmbedder
from turnout.types import ChatRequest

EMB = HashEmbedder(dim=256)
Q = "How do I reset my account password on the website?"
PARAPHRASE = "How do I reset the account password on my website?"


def fp(text: str, tenant: str = "alice") -> ContextFingerprint:
    return ContextFingerprint.of(ChatRequest("auto", [{"role": "user", "content": text}]), tenant=tenant)


def body(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "small",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[RedisCacheStore, RedisCacheStore]]:
    """Two replicas' stores on one Redis prefix."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a, b = RedisCounters(redis_url, prefix=prefix), RedisCounters(redis_url, prefix=prefix)
    yield RedisCacheStore(a, ttl_s=60), RedisCacheStore(b, ttl_s=60)
    await a.aclose()
    await b.aclose()


async def test_an_answer_cached_by_one_replica_is_a_hit_on_another(stores: tuple[RedisCacheStore, RedisCacheStore]) -> None:
    a, b = stores
    cache_a = SemanticCache(a, threshold=0.7, space="hash")
    cache_b = SemanticCache(b, threshold=0.7, space="hash")
    assert (await cache_a.store(fp(Q), EMB.embed_one(Q), body("Use the link."))).stored
    exact = (await cache_b.lookup(fp(Q))).hit
    assert exact is not None and exact.kind == "exact" and exact.answer["choices"][0]["message"]["content"] == "Use the link."
    assert float(EMB.embed_one(Q) @ EMB.embed_one(PARAPHRASE)) > 0.7
    semantic = (await cache_b.lookup(fp(PARAPHRASE), EMB.embed_one(PARAPHRASE))).hit
    assert semantic is not None and semantic.kind == "semantic" and semantic.question == Q
    # tenants never meet: the same question under another key is a miss
    assert (await cache_b.lookup(fp(Q, tenant="bob"), EMB.embed_one(Q))).hit is None
    # the look-alike guard still runs on what Redis returns: a changed dose is refused, with its reason
    dose, other = "Can I take 5 mg of ibuprofen daily?", "Can I take 50 mg of ibuprofen daily?"
    loose = SemanticCache(b, threshold=0.3, space="hash")
    await loose.store(fp(dose), EMB.embed_one(dose), body("Yes."))
    refused = await loose.lookup(fp(other), EMB.embed_one(other))
    assert refused.hit is None and [x.check for x in refused.blocked] == ["numbers"]


async def test_get_nearest_put_round_trip_the_entry(stores: tuple[RedisCacheStore, RedisCacheStore]) -> None:
    a, b = stores
    v = np.array([0.6, 0.8, 0.0], dtype=np.float32)
    await a.put("t", "bucket", "k1", "question one", v, {"x": [1, "é"]})
    await a.put("t", "bucket", "k2", "question two", np.array([0.0, 0.0, 1.0], dtype=np.float32), {"x": 2})
    await a.put("t", "bucket", "k3", "no vector", None, {"x": 3})
    e = await b.get("t", "bucket", "k1")
    assert e is not None and e.text == "question one" and e.answer == {"x": [1, "é"]}
    assert e.vector is not None and np.allclose(e.vector, v) and e.expires_at - e.stored_at == pytest.approx(60)
    near = await b.nearest("t", "bucket", np.array([0.6, 0.8, 0.0], dtype=np.float32), k=4, min_similarity=0.5)
    assert [(x.key, round(s, 3)) for x, s in near] == [("k1", 1.0)]
    both = await b.nearest("t", "bucket", np.array([0.0, 0.6, 0.8], dtype=np.float32), k=1, min_similarity=0.0)
    assert [x.key for x, _ in both] == ["k2"]  # k=1: the most similar only
    assert await b.size() == 3
    await b.touch("t", "bucket", "k1")
    assert await b.get("t", "other-bucket", "k1") is None
    with pytest.raises(ValueError, match="dimension 3"):
        await b.nearest("t", "bucket", np.ones(4, dtype=np.float32), k=1, min_similarity=0.0)


async def test_entries_expire_and_leave_their_bucket(stores: tuple[RedisCacheStore, RedisCacheStore]) -> None:
    a, b = stores
    v = np.array([1.0, 0.0], dtype=np.float32)
    await a.put("t", "b", "short", "q", v, {"x": 1}, ttl_s=1)
    await a.put("t", "b", "long", "q2", v, {"x": 2})
    assert len(await b.nearest("t", "b", v, k=4, min_similarity=0.5)) == 2
    await asyncio.sleep(1.2)
    assert await b.get("t", "b", "short") is None
    assert [e.key for e, _ in await b.nearest("t", "b", v, k=4, min_similarity=0.5)] == ["long"]
    assert len(await b.store.client.hkeys(b._bucket_key("t", "b"))) == 1  # the dead one left the bucket too


async def test_clear_drops_one_tenant_or_everything(stores: tuple[RedisCacheStore, RedisCacheStore]) -> None:
    a, b = stores
    for tenant in ("alice", "bob"):
        for i in range(3):
            await a.put(tenant, f"ctx{i % 2}", f"k{i}", "q", np.ones(2, dtype=np.float32), {"i": i})
    assert await b.clear("alice") == 3
    assert await b.get("alice", "ctx0", "k0") is None and await b.get("bob", "ctx0", "k0") is not None
    assert await b.size() == 3
    assert await b.clear() == 3
    assert await b.size() == 0


async def test_a_dead_redis_is_a_miss_through_the_fail_open_wrapper(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    counters = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.3)
    raw = RedisCacheStore(counters)
    with pytest.raises(StateError, match=r"redis://127\.0\.0\.1:1/0 failed to read an entry in the cache"):
        await raw.get("t", "b", "k")
    store = FailOpenCacheStore(raw)
    cache = SemanticCache(store, threshold=0.7, space="hash")
    result = await cache.lookup(fp(Q), EMB.embed_one(Q))
    assert result.hit is None  # a miss, not an error
    assert (await cache.store(fp(Q), EMB.embed_one(Q), body("x"))).stored  # skipped quietly
    assert store.failures == 3 and await store.size() == 0 and await store.clear() == 0
    assert sum("semantic cache unavailable" in r.message for r in caplog.records) == 1  # one warning, not one per call
    await counters.aclose()


async def test_a_shared_state_store_gets_a_shared_cache(redis_url: str) -> None:
    assert cache_store_for(InMemoryCounters()) is None
    counters = RedisCounters(redis_url, prefix="x:")
    try:
        store = cache_store_for(counters, ttl_s=10)
        assert isinstance(store, FailOpenCacheStore) and isinstance(store.inner, RedisCacheStore)
        assert store.inner.ttl_s == 10 and not store.in_process
    finally:
        await counters.aclose()
