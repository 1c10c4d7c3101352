"""The cache store seam: where cached answers live, with their question vectors.

A :class:`CacheStore` keeps entries under (tenant, bucket, key): the tenant is
the API key's name, the bucket a context fingerprint (and the embedding space),
the key the exact question key. Tenants are separate namespaces *inside the
store*, not only inside the fingerprint's hash: no lookup can reach another
tenant's entries, whatever the digests.

The data methods are **coroutines**, like those of :class:`turnout.state.StateStore`,
and ``in_process`` says whether a call leaves the process. The in-memory store
does no I/O and never awaits: its calls finish in microseconds on the event
loop (a semantic lookup is one matrix-vector product, about 1 µs per 100
entries of a bucket). A Redis store (``in_process = False``) awaits
``redis.asyncio`` and fits the same calls: entries as hashes under ``prefix:tenant:bucket:key`` with
``EXPIRE`` for the TTL and ``maxmemory-policy allkeys-lru`` for the bound, the
bucket's vectors in one hash read by :meth:`~CacheStore.nearest` and compared
client-side (buckets are per context, so small), or a vector index
(``FT.SEARCH ... KNN``) where buckets grow large.

:class:`InMemoryCacheStore` is the default: TTL, a global entry bound and an
optional per-tenant bound with least-recently-used eviction, one lock, and the
vectors of each bucket in one float32 matrix so that a semantic lookup is one
matrix-vector product.

Example::

    store = InMemoryCacheStore(max_entries=10_000, ttl_s=3600)
    await store.put("alice", fp.digest, fp.exact_key, fp.text, vec, body)
    await store.get("alice", fp.digest, fp.exact_key)                 # CacheEntry or None
    await store.nearest("alice", fp.digest, vec, k=4, min_similarity=0.9)   # [(CacheEntry, 0.97)]
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached answer: the question it answered, its vector, the ``chat.completion`` body, and when."""

    key: str
    text: str
    vector: np.ndarray | None
    answer: dict[str, Any]
    stored_at: float
    expires_at: float


@runtime_checkable
class CacheStore(Protocol):
    """Entries by (tenant, bucket, key), with TTL and a size bound; see the module docstring.

    ``in_process`` (a class attribute) is True when no call leaves the process. A store that cannot be
    reached raises :class:`~turnout.errors.StateError` naming it; the gateway then serves without the cache.
    """

    in_process: bool

    def now(self) -> float:
        """The store's clock, in seconds (entries' ``stored_at`` and ``expires_at`` are on it)."""
        ...

    async def get(self, tenant: str, bucket: str, key: str) -> CacheEntry | None:
        """The live entry under ``key``, marked as recently used; None when absent or expired."""
        ...

    async def nearest(
        self, tenant: str, bucket: str, vector: np.ndarray, *, k: int, min_similarity: float
    ) -> list[tuple[CacheEntry, float]]:
        """Up to ``k`` live entries of the bucket whose vector's dot product with ``vector`` is at least
        ``min_similarity``, most similar first (not marked as used: the caller :meth:`touch` es the one it serves)."""
        ...

    async def touch(self, tenant: str, bucket: str, key: str) -> None:
        """Mark the entry as recently used (no-op when absent)."""
        ...

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
        """Store (or replace) the entry under ``key``; ``ttl_s`` overrides the store's TTL for it."""
        ...

    async def clear(self, tenant: str | None = None) -> int:
        """Drop every entry (of ``tenant`` only, when given); returns how many were dropped."""
        ...

    async def size(self) -> int:
        """How many entries the store holds (expired ones not yet dropped included)."""
        ...


class _Bucket:
    """One tenant's entries for one context: vectors in a growing matrix, entries in the same row order."""

    __slots__ = ("entries", "expires", "has_vec", "mat", "rows")

    def __init__(self) -> None:
        self.entries: list[CacheEntry] = []
        self.rows: dict[str, int] = {}  # key -> row
        self.mat: np.ndarray | None = None  # (capacity, dim) float32, rows beyond len(entries) unused
        self.expires = np.empty(0, dtype=np.float64)
        self.has_vec = np.empty(0, dtype=bool)

    def add(self, entry: CacheEntry) -> None:
        row = self.rows.get(entry.key)
        if row is None:
            row = len(self.entries)
            self.entries.append(entry)
            self.rows[entry.key] = row
            self._reserve(row + 1)
        else:
            self.entries[row] = entry
        vec = entry.vector
        if vec is not None:
            if self.mat is None:  # invariant from here on: the matrix has as many rows as ``expires``
                self.mat = np.zeros((len(self.expires), vec.shape[0]), dtype=np.float32)
            elif self.mat.shape[1] != vec.shape[0]:
                raise ValueError(
                    f"vector of dimension {vec.shape[0]} in a bucket of dimension {self.mat.shape[1]} "
                    "(one bucket must hold one embedder's vectors)"
                )
            self.mat[row] = vec
        self.has_vec[row] = vec is not None
        self.expires[row] = entry.expires_at

    def _reserve(self, n: int) -> None:
        if n <= len(self.expires):
            return
        cap = max(4, 2 * len(self.expires))
        self.expires = np.concatenate([self.expires, np.full(cap - len(self.expires), -math.inf)])
        self.has_vec = np.concatenate([self.has_vec, np.zeros(cap - len(self.has_vec), dtype=bool)])
        if self.mat is not None:
            self.mat = np.concatenate([self.mat, np.zeros((cap - self.mat.shape[0], self.mat.shape[1]), np.float32)])

    def remove(self, key: str) -> None:
        """Drop ``key`` by moving the last row into its place (rows stay dense)."""
        row = self.rows.pop(key)
        last = len(self.entries) - 1
        if row != last:
            moved = self.entries[last]
            self.entries[row] = moved
            self.rows[moved.key] = row
            self.expires[row] = self.expires[last]
            self.has_vec[row] = self.has_vec[last]
            if self.mat is not None:
                self.mat[row] = self.mat[last]
        self.entries.pop()
        self.expires[last] = -math.inf
        self.has_vec[last] = False


_Id = tuple[str, str, str]  # (tenant, bucket, key)


def own_vector(vector: np.ndarray) -> np.ndarray:
    """A private, read-only float32 copy of a one-dimensional vector (the caller's array may change later)."""
    out = np.array(vector, dtype=np.float32)
    if out.ndim != 1:
        raise ValueError(f"vector must be one-dimensional, got shape {out.shape}")
    out.flags.writeable = False
    return out


class InMemoryCacheStore:
    """A :class:`CacheStore` in this process: TTL, LRU bounds, per-tenant namespaces; safe to share between threads.

    ``max_entries`` bounds the whole store, ``max_entries_per_tenant`` (optional)
    each tenant, so that one busy key cannot evict everyone else's entries; the
    least recently used entry goes first (a hit counts as a use). Expired
    entries are never returned and are dropped when met or by
    :meth:`purge_expired`. ``clock`` (default ``time.time``) is injectable for tests.

    Its coroutines never await, so each runs to completion in one step of the
    event loop; the lock makes the store safe to share with threads as well
    (the evaluation, a purge thread).
    """

    #: no I/O: callers on the event loop may call it inline
    in_process = True

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl_s: float | None = 3600.0,
        max_entries_per_tenant: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_entries_per_tenant is not None and max_entries_per_tenant < 1:
            raise ValueError(f"max_entries_per_tenant must be >= 1 or None, got {max_entries_per_tenant}")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 or None (no expiry), got {ttl_s}")
        self.max_entries = max_entries
        self.max_entries_per_tenant = max_entries_per_tenant
        self.ttl_s = ttl_s
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lru: OrderedDict[_Id, None] = OrderedDict()  # oldest first, over every tenant
        self._tenant_lru: dict[str, OrderedDict[_Id, None]] = {}
        self._lock = threading.Lock()
        #: entries dropped for space (not expiry) since start, for metrics
        self.evictions = 0

    def now(self) -> float:
        return self._clock()

    def _drop(self, ident: _Id) -> None:
        tenant, bucket_id, key = ident
        self._lru.pop(ident, None)
        tenant_lru = self._tenant_lru.get(tenant)
        if tenant_lru is not None:
            tenant_lru.pop(ident, None)
            if not tenant_lru:
                del self._tenant_lru[tenant]
        bucket = self._buckets.get((tenant, bucket_id))
        if bucket is not None and key in bucket.rows:
            bucket.remove(key)
            if not bucket.entries:
                del self._buckets[(tenant, bucket_id)]

    def _use(self, ident: _Id) -> None:
        self._lru.move_to_end(ident)
        self._tenant_lru[ident[0]].move_to_end(ident)

    async def get(self, tenant: str, bucket: str, key: str) -> CacheEntry | None:
        with self._lock:
            b = self._buckets.get((tenant, bucket))
            row = b.rows.get(key) if b is not None else None
            if b is None or row is None:
                return None
            entry = b.entries[row]
            if entry.expires_at <= self._clock():
                self._drop((tenant, bucket, key))
                return None
            self._use((tenant, bucket, key))
            return entry

    async def nearest(
        self, tenant: str, bucket: str, vector: np.ndarray, *, k: int, min_similarity: float
    ) -> list[tuple[CacheEntry, float]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            b = self._buckets.get((tenant, bucket))
            if b is None or b.mat is None:
                return []
            n = len(b.entries)
            if vector.shape != (b.mat.shape[1],):
                raise ValueError(f"query vector of shape {vector.shape} for a bucket of dimension {b.mat.shape[1]}")
            sims = b.mat[:n] @ vector.astype(np.float32, copy=False)
            now = self._clock()
            live = b.has_vec[:n] & (b.expires[:n] > now)
            expired = [b.entries[i].key for i in np.flatnonzero(b.has_vec[:n] & ~live)]
            sims = np.where(live & (sims >= min_similarity), sims, -np.inf)
            if k < n:
                top = np.argpartition(-sims, k - 1)[:k]
            else:
                top = np.arange(n)
            top = top[np.argsort(-sims[top], kind="stable")]
            found = [(b.entries[i], float(sims[i])) for i in top if sims[i] > -np.inf]
            for key in expired:  # after reading: dropping moves rows
                self._drop((tenant, bucket, key))
            return found

    async def touch(self, tenant: str, bucket: str, key: str) -> None:
        with self._lock:
            if (tenant, bucket, key) in self._lru:
                self._use((tenant, bucket, key))

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
        if vector is not None:
            vector = own_vector(vector)
        with self._lock:
            now = self._clock()
            entry = CacheEntry(
                key=key,
                text=text,
                vector=vector,
                answer=answer,
                stored_at=now,
                expires_at=now + ttl if ttl is not None else math.inf,
            )
            b = self._buckets.get((tenant, bucket))
            if b is None:
                b = self._buckets[(tenant, bucket)] = _Bucket()
            b.add(entry)
            ident = (tenant, bucket, key)
            self._lru[ident] = None
            self._tenant_lru.setdefault(tenant, OrderedDict())[ident] = None
            self._use(ident)
            tenant_lru = self._tenant_lru[tenant]
            while self.max_entries_per_tenant is not None and len(tenant_lru) > self.max_entries_per_tenant:
                self._drop(next(iter(tenant_lru)))
                self.evictions += 1
            while len(self._lru) > self.max_entries:
                self._drop(next(iter(self._lru)))
                self.evictions += 1

    def purge_expired(self) -> int:
        """Drop every expired entry now (lookups skip them anyway); returns how many. O(entries)."""
        with self._lock:
            now = self._clock()
            dead = [(t, bid, e.key) for (t, bid), b in self._buckets.items() for e in b.entries if e.expires_at <= now]
            for ident in dead:
                self._drop(ident)
            return len(dead)

    async def clear(self, tenant: str | None = None) -> int:
        with self._lock:
            idents = list(self._lru) if tenant is None else list(self._tenant_lru.get(tenant, ()))
            for ident in idents:
                self._drop(ident)
            return len(idents)

    async def size(self) -> int:
        return len(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)

    def __repr__(self) -> str:
        return f"InMemoryCacheStore({len(self)}/{self.max_entries} entries, ttl_s={self.ttl_s})"


__all__ = ["CacheEntry", "CacheStore", "InMemoryCacheStore", "own_vector"]
