"""Versioned blobs with compare-and-set: how replicas agree on one value they all rewrite (a bandit's statistics).

A *shared statistic* is one opaque blob under a key, with a version that every write bumps. A replica reads
the blob and its version, computes the next blob from it, and writes it back only if nobody wrote in
between (:meth:`SharedStats.swap`, compare-and-set); if somebody did, it reads again. No replica ever
overwrites what another wrote without having read it first, so nothing written is lost. What the blob
holds is the caller's business (the bandit's sufficient statistics: :mod:`turnout.gateway.bandit_sync`).

Version 0 means "absent": :meth:`SharedStats.read` of a key never written returns ``(None, 0)``, and
``swap(key, blob, 0)`` creates it only if it is still absent. Versions only grow while the key exists.

Two implementations:

* :class:`InMemorySharedStats`: a dict and a lock, for one process (several gateways built on one object:
  tests);
* :class:`RedisSharedStats`: one hash per key under the state store's prefix (fields ``v`` and ``blob``);
  a read is one ``HMGET`` (blob and version in one round trip), a swap one Lua script (atomic on the
  server). Built on the gateway's :class:`~turnout.state.redis.RedisCounters` (its connection pool, prefix
  and error translation): every failure is a :class:`~turnout.errors.StateError` naming the URL.

A swap that *raises* (a timeout) may or may not have been applied: the caller must be able to tell
later from the blob itself (the bandit's blob names its last writers for that).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from turnout.state.redis import RedisCounters


@runtime_checkable
class SharedStats(Protocol):
    """One versioned blob per key, with compare-and-set. Both data methods are coroutines.

    Example (one replica's read-modify-write; retry on a conflict)::

        stats = InMemorySharedStats()
        blob, version = await stats.read("bandit:learn:3f9a")     # (None, 0): nobody wrote it yet
        new = await stats.swap("bandit:learn:3f9a", b"...", version)
        if new is None:
            ...                                                     # another replica wrote first: read again
    """

    #: True when calls do no I/O (this process only)
    in_process: bool

    async def read(self, key: str) -> tuple[bytes | None, int]:
        """The blob under ``key`` and its version; ``(None, 0)`` when absent."""
        ...

    async def swap(self, key: str, blob: bytes, expect_version: int) -> int | None:
        """Write ``blob`` if ``key``'s version is still ``expect_version`` (0: absent): the new version, else None."""
        ...


class InMemorySharedStats:
    """:class:`SharedStats` in this process: gateways built on one object share their statistics (tests)."""

    in_process = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[bytes, int]] = {}

    async def read(self, key: str) -> tuple[bytes | None, int]:
        with self._lock:
            blob, version = self._blobs.get(key, (None, 0))
            return blob, version

    async def swap(self, key: str, blob: bytes, expect_version: int) -> int | None:
        with self._lock:
            version = self._blobs.get(key, (b"", 0))[1]
            if version != expect_version:
                return None
            self._blobs[key] = (bytes(blob), version + 1)
            return version + 1

    def __repr__(self) -> str:
        return f"InMemorySharedStats({len(self._blobs)} keys)"


# KEYS: the hash. ARGV: blob, expected version. The new version, or -1 when the version moved (nothing written).
_SWAP = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[2]) then return -1 end
v = v + 1
redis.call('HSET', KEYS[1], 'v', v, 'blob', ARGV[1])
return v
"""


class RedisSharedStats:
    """:class:`SharedStats` in Redis: a hash ``<prefix><key>`` with fields ``v`` and ``blob``; built on a RedisCounters.

    Keys do not expire: the statistics are what every replica learned. Delete the keys under the state's
    prefix to start afresh.
    """

    in_process = False

    def __init__(self, store: RedisCounters) -> None:
        self.store = store
        self._swap = store.client.register_script(_SWAP)

    async def read(self, key: str) -> tuple[bytes | None, int]:
        try:
            version, blob = await self.store.client.hmget(self.store.prefix + key, ["v", "blob"])
        except self.store.errors as exc:
            raise self.store.failure(f"read the shared statistics {key!r}", exc) from exc
        if blob is None:
            return None, 0
        return bytes(blob), int(version or 0)

    async def swap(self, key: str, blob: bytes, expect_version: int) -> int | None:
        try:
            new = int(await self._swap(keys=[self.store.prefix + key], args=[blob, int(expect_version)]))
        except self.store.errors as exc:
            raise self.store.failure(f"write the shared statistics {key!r}", exc) from exc
        return None if new < 0 else new

    def __repr__(self) -> str:
        return f"RedisSharedStats({self.store.shown_url!r}, prefix={self.store.prefix!r})"


def shared_stats_for(store: object) -> SharedStats:
    """The shared statistics that go with a state store: in Redis when the store is, else in this process."""
    from turnout.state.redis import RedisCounters

    if isinstance(store, RedisCounters):
        return RedisSharedStats(store)
    return InMemorySharedStats()


__all__ = ["InMemorySharedStats", "RedisSharedStats", "SharedStats", "shared_stats_for"]
