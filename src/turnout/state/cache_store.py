"""The semantic cache's store in Redis, shared by every replica, and a wrapper that makes any store fail open.

:class:`RedisCacheStore` implements :class:`turnout.cache.store.CacheStore` (the design in
docs/guards.md) on the connection pool of a :class:`~turnout.state.redis.RedisCounters`:

* one hash per entry, ``<prefix>cache:e:<id>`` (the exact key, the question, its vector as float32 bytes,
  the answer as JSON, when it was stored and expires), with ``EXPIRE`` = the entry's TTL: Redis drops
  it on time, and ``maxmemory-policy allkeys-lru`` on the server bounds the whole cache (least recently
  *read* entries go first: a hit reads its entry);
* one hash per (tenant, context bucket), ``<prefix>cache:b:<id>`` (entry id -> expiry and vector), read
  whole by :meth:`RedisCacheStore.nearest` and compared here (one matrix-vector product): buckets are
  one context of one API key, so they stay small;
* one set per tenant of its buckets, so that :meth:`RedisCacheStore.clear` can drop one key's entries.

Names are SHA-1 digests of (tenant, bucket, key): whatever a question holds, the Redis key stays short,
and tenants cannot reach each other's entries (the tenant is part of every digest). Every Redis failure
is a :class:`~turnout.errors.StateError` naming the URL.

The cache must **fail open**: a cache that cannot be reached is a miss, never a failed request.
:class:`FailOpenCacheStore` wraps any store so: a failed lookup is a miss, a failed write is skipped,
each logged (at most once per ``quiet_s``) and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.cache.store import CacheEntry, CacheStore, own_vector
from turnout.errors import StateError
from turnout.state.redis import as_text

if TYPE_CHECKING:
    from turnout.state.redis import RedisCounters

log = logging.getLogger(__name__)

_EXP = struct.Struct("<d")  # a bucket field's value: expiry (wall-clock seconds, inf for none), then the vector


def _digest(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length-prefixed: ("ab", "c") and ("a", "bc") differ
        h.update(b)
    return h.hexdigest()


class RedisCacheStore:
    """:class:`~turnout.cache.store.CacheStore` in Redis (see the module docstring); shared by every replica.

    ``ttl_s`` is the default TTL (None: entries never expire, only the server's LRU drops them).

    Example::

        store = RedisCacheStore(RedisCounters("redis://127.0.0.1:6379/0"), ttl_s=3600)
        cache = SemanticCache(FailOpenCacheStore(store), threshold=0.86, space="minilm")
    """

    in_process = False

    def __init__(self, store: RedisCounters, *, ttl_s: float | None = 3600.0, clock: Callable[[], float] = time.time) -> None:
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 or None (no expiry), got {ttl_s}")
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock
        self._p = store.prefix + "cache:"

    def now(self) -> float:
        return self._clock()

    def _entry_key(self, tenant: str, bucket: str, key: str) -> str:
        return self._p + "e:" + _digest(tenant, bucket, key)

    def _bucket_key(self, tenant: str, bucket: str) -> str:
        return self._p + "b:" + _digest(tenant, bucket)

    def _tenant_key(self, tenant: str) -> str:
        return self._p + "t:" + _digest(tenant)

    def _fail(self, what: str, exc: BaseException) -> StateError:
        return self.store.failure(what + " in the cache", exc)

    @staticmethod
    def _entry(fields: dict[Any, Any]) -> CacheEntry | None:
        if not fields:
            return None
        f = {as_text(k): v for k, v in fields.items()}
        raw = f.get("vec") or b""
        vec = np.frombuffer(raw, dtype=np.float32) if raw else None
        return CacheEntry(
            key=as_text(f["key"]),
            text=as_text(f["text"]),
            vector=vec,
            answer=json.loads(f["answer"]),
            stored_at=float(f["stored_at"]),
            expires_at=float(f["expires_at"]),
        )

    async def get(self, tenant: str, bucket: str, key: str) -> CacheEntry | None:
        try:
            entry = self._entry(await self.store.client.hgetall(self._entry_key(tenant, bucket, key)))
        except self.store.errors as exc:
            raise self._fail("read an entry", exc) from exc
        if entry is None or entry.expires_at <= self.now():
            return None
        return entry

    async def nearest(
        self, tenant: str, bucket: str, vector: np.ndarray, *, k: int, min_similarity: float
    ) -> list[tuple[CacheEntry, float]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        bkey = self._bucket_key(tenant, bucket)
        client = self.store.client
        try:
            fields = await client.hgetall(bkey)
        except self.store.errors as exc:
            raise self._fail("read a bucket", exc) from exc
        now = self.now()
        ids, rows, dead = [], [], []
        for fid, value in fields.items():
            (exp,) = _EXP.unpack_from(value)
            if exp <= now:
                dead.append(fid)
            elif len(value) > _EXP.size:
                ids.append(fid)
                rows.append(np.frombuffer(value, dtype=np.float32, offset=_EXP.size))
        found: list[tuple[CacheEntry, float]] = []
        if rows:
            mat = np.stack(rows)
            if vector.shape != (mat.shape[1],):
                raise ValueError(f"query vector of shape {vector.shape} for a bucket of dimension {mat.shape[1]}")
            sims = mat @ vector.astype(np.float32, copy=False)
            order = [i for i in np.argsort(-sims, kind="stable")[:k] if sims[i] >= min_similarity]
            if order:
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for i in order:
                            pipe.hgetall(self._p + "e:" + as_text(ids[i]))
                        got = await pipe.execute()
                except self.store.errors as exc:
                    raise self._fail("read the nearest entries", exc) from exc
                for i, fields_i in zip(order, got):
                    entry = self._entry(fields_i)
                    if entry is None or entry.expires_at <= now:
                        dead.append(ids[i])  # dropped by Redis (TTL or LRU): forget it in the bucket too
                    else:
                        found.append((entry, float(sims[i])))
        if dead:
            try:
                await client.hdel(bkey, *dead)
            except self.store.errors as exc:
                raise self._fail("drop expired entries", exc) from exc
        return found

    async def touch(self, tenant: str, bucket: str, key: str) -> None:
        try:
            await self.store.client.touch(self._entry_key(tenant, bucket, key))  # refreshes the server's LRU clock
        except self.store.errors as exc:
            raise self._fail("mark an entry as used", exc) from exc

    async def put(
        self,
        tenant: str,
        bucket: str,
        key: str,
        text: str,
        vector: np.ndarray | None,
        answer: dict[str, Any],
        *,
        ttl_s: float | None = None,
    ) -> None:
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        now = self.now()
        expires = now + ttl if ttl is not None else math.inf
        vec = b""
        if vector is not None:
            vec = own_vector(vector).tobytes()
        ekey, bkey, tkey = (self._entry_key(tenant, bucket, key), self._bucket_key(tenant, bucket), self._tenant_key(tenant))
        eid = ekey.removeprefix(self._p + "e:")
        try:
            async with self.store.client.pipeline(transaction=True) as pipe:
                pipe.delete(ekey)
                pipe.hset(
                    ekey,
                    mapping={
                        "key": key,
                        "text": text,
                        "vec": vec,
                        "answer": json.dumps(answer),
                        "stored_at": repr(now),
                        "expires_at": repr(expires),
                    },
                )
                pipe.hset(bkey, eid, _EXP.pack(expires) + vec)
                pipe.sadd(tkey, bkey)
                if ttl is not None:
                    # the bucket and the tenant's set live as long as their newest entry
                    seconds = max(1, math.ceil(ttl))
                    pipe.expire(ekey, seconds)
                    for k in (bkey, tkey):  # NX gives a new key its TTL; GT only ever extends it
                        pipe.expire(k, seconds, nx=True)
                        pipe.expire(k, seconds, gt=True)
                else:
                    pipe.persist(bkey)
                    pipe.persist(tkey)
                await pipe.execute()
        except self.store.errors as exc:
            raise self._fail("store an entry", exc) from exc

    async def clear(self, tenant: str | None = None) -> int:
        client = self.store.client
        try:
            if tenant is None:
                keys = [k async for k in client.scan_iter(match=_glob(self._p) + "*", count=1000)]
                entries = sum(1 for k in keys if as_text(k).startswith(self._p + "e:"))
                for i in range(0, len(keys), 1000):
                    await client.delete(*keys[i : i + 1000])
                return entries
            tkey = self._tenant_key(tenant)
            dropped = 0
            for bkey in await client.smembers(tkey):
                ids = await client.hkeys(bkey)
                if ids:
                    dropped += int(await client.delete(*(self._p + "e:" + as_text(i) for i in ids)))
                await client.delete(bkey)
            await client.delete(tkey)
            return dropped
        except self.store.errors as exc:
            raise self._fail("clear entries", exc) from exc

    async def size(self) -> int:
        """Entries held now (a SCAN over the store's keys: for tests and operators, not for the hot path)."""
        try:
            return sum([1 async for _ in self.store.client.scan_iter(match=_glob(self._p + "e:") + "*", count=1000)])
        except self.store.errors as exc:
            raise self._fail("count entries", exc) from exc

    def __repr__(self) -> str:
        return f"RedisCacheStore({self.store.shown_url!r}, ttl_s={self.ttl_s})"


def _glob(text: str) -> str:
    """``text`` with the characters SCAN's MATCH treats as patterns escaped (a prefix may hold them)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class FailOpenCacheStore:
    """Any :class:`~turnout.cache.store.CacheStore`, made to fail open: a store that cannot be reached is a miss.

    A failed :meth:`get` / :meth:`nearest` returns nothing, a failed :meth:`put` / :meth:`touch` / :meth:`clear`
    does nothing; each failure is counted (``failures``) and logged as a warning at most once per ``quiet_s``
    (a dead Redis under load would otherwise write a line per request). Only
    :class:`~turnout.errors.StateError` is absorbed: a bug still raises.
    """

    def __init__(self, inner: CacheStore, *, quiet_s: float = 10.0) -> None:
        self.inner = inner
        self.in_process = inner.in_process
        self.quiet_s = quiet_s
        #: failed calls absorbed since start
        self.failures = 0
        self._last_warned = -math.inf

    def _absorb(self, exc: StateError) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_warned >= self.quiet_s:
            self._last_warned = now
            log.warning("semantic cache unavailable, serving without it (%d failure(s) so far): %s", self.failures, exc)

    def now(self) -> float:
        return self.inner.now()

    async def get(self, tenant: str, bucket: str, key: str) -> CacheEntry | None:
        try:
            return await self.inner.get(tenant, bucket, key)
        except StateError as exc:
            self._absorb(exc)
            return None

    async def nearest(
        self, tenant: str, bucket: str, vector: np.ndarray, *, k: int, min_similarity: float
    ) -> list[tuple[CacheEntry, float]]:
        try:
            return await self.inner.nearest(tenant, bucket, vector, k=k, min_similarity=min_similarity)
        except StateError as exc:
            self._absorb(exc)
            return []

    async def touch(self, tenant: str, bucket: str, key: str) -> None:
        try:
            await self.inner.touch(tenant, bucket, key)
        except StateError as exc:
            self._absorb(exc)

    async def put(
        self,
        tenant: str,
        bucket: str,
        key: str,
        text: str,
        vector: np.ndarray | None,
        answer: dict[str, Any],
        *,
        ttl_s: float | None = None,
    ) -> None:
        try:
            await self.inner.put(tenant, bucket, key, text, vector, answer, ttl_s=ttl_s)
        except StateError as exc:
            self._absorb(exc)

    async def clear(self, tenant: str | None = None) -> int:
        try:
            return await self.inner.clear(tenant)
        except StateError as exc:
            self._absorb(exc)
            return 0

    async def size(self) -> int:
        try:
            return await self.inner.size()
        except StateError as exc:
            self._absorb(exc)
            return 0

    def __repr__(self) -> str:
        return f"FailOpenCacheStore({self.inner!r}, failures={self.failures})"


def cache_store_for(store: object, *, ttl_s: float | None = 3600.0) -> CacheStore | None:
    """A fail-open Redis cache store on ``store``'s Redis when the state is shared; None otherwise (the cache
    keeps its own in-memory store)."""
    from turnout.state.redis import RedisCounters

    if isinstance(store, RedisCounters):
        return FailOpenCacheStore(RedisCacheStore(store, ttl_s=ttl_s))
    return None


__all__ = ["FailOpenCacheStore", "RedisCacheStore", "cache_store_for"]
