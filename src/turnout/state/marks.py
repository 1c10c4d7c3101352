"""Out-of-rotation marks: "replica R took endpoint E out of rotation, for the next T seconds", shared.

When one gateway replica finds an endpoint dead (its circuit breaker opened, or a health probe failed),
the others should stop sending it requests too, without each paying its own five failed requests to
learn it. The replica *marks* the endpoint here, with an expiry; every replica reads the live marks
once per probe interval (one round trip, never per request) and skips the endpoints marked by others.

A mark belongs to the replica that set it (one field per endpoint *and* replica): a replica clears only
its own, so one replica's recovery never lifts another's mark, and the endpoint is out for a reader
while any other replica's mark on it is live. Marks expire on their own: the replica that set one keeps
renewing it while the endpoint stays out, so a replica that died stops holding the endpoint out after
the mark's ``ttl_s``.

Two implementations: :class:`InMemoryMarks` (replicas in one process: tests) and :class:`RedisMarks`
(one hash ``marks`` under the store's prefix, expiry on the server's clock, so replicas' clocks may
disagree).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from turnout.state.redis import as_text

if TYPE_CHECKING:
    from turnout.state.redis import RedisCounters

#: separates endpoint and replica in a mark's field (neither a model nor an endpoint name holds it)
_SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class Mark:
    """A live mark: which replica set it, why, and how many seconds it has left."""

    endpoint: str
    replica: str
    reason: str
    remaining_s: float


@runtime_checkable
class Marks(Protocol):
    """Expiring out-of-rotation marks per (endpoint, replica). All data methods are coroutines.

    Example::

        marks = InMemoryMarks()
        await marks.mark("qwen/a", "replica-1", ttl_s=30, reason="circuit breaker open")
        [m.endpoint for m in await marks.live()]      # ['qwen/a'] (for every replica)
        await marks.clear("qwen/a", "replica-1")
    """

    in_process: bool

    async def mark(self, endpoint: str, replica: str, *, ttl_s: float, reason: str) -> None:
        """Set (or renew) ``replica``'s mark on ``endpoint`` for ``ttl_s`` seconds from now."""
        ...

    async def clear(self, endpoint: str, replica: str) -> None:
        """Drop ``replica``'s mark on ``endpoint`` (nothing happens when there is none)."""
        ...

    async def live(self) -> list[Mark]:
        """Every mark that has not expired (expired ones are dropped on the way)."""
        ...


class InMemoryMarks:
    """:class:`Marks` in this process (replicas sharing one object in tests). ``clock`` is injectable."""

    in_process = True

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._marks: dict[tuple[str, str], tuple[float, str]] = {}  # (endpoint, replica) -> (expires at, reason)

    async def mark(self, endpoint: str, replica: str, *, ttl_s: float, reason: str) -> None:
        with self._lock:
            self._marks[(endpoint, replica)] = (self._clock() + ttl_s, reason)

    async def clear(self, endpoint: str, replica: str) -> None:
        with self._lock:
            self._marks.pop((endpoint, replica), None)

    async def live(self) -> list[Mark]:
        with self._lock:
            now = self._clock()
            for k in [k for k, (exp, _) in self._marks.items() if exp <= now]:
                del self._marks[k]
            return [Mark(e, r, why, exp - now) for (e, r), (exp, why) in self._marks.items()]

    def __repr__(self) -> str:
        return f"InMemoryMarks({len(self._marks)} marks)"


# KEYS: the marks hash. ARGV: field, ttl_s, reason. The value is "<expires at, server clock> <reason>".
_MARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', now + tonumber(ARGV[2])) .. ' ' .. ARGV[3])
return 1
"""

# KEYS: the marks hash. Returns {field, remaining seconds (string), reason, ...} of the live marks.
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sp = string.find(v, ' ', 1, true)
  local exp = tonumber(string.sub(v, 1, (sp or 0) - 1)) or 0
  if exp <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, tostring(exp - now))
    table.insert(out, sp and string.sub(v, sp + 1) or '')
  end
end
return out
"""


class RedisMarks:
    """:class:`Marks` in one Redis hash (``<prefix>marks``), on the server's clock; built on a RedisCounters."""

    in_process = False

    def __init__(self, store: RedisCounters) -> None:
        self.store = store
        self._key = store.prefix + "marks"
        self._mark = store.client.register_script(_MARK)
        self._live = store.client.register_script(_LIVE)

    async def mark(self, endpoint: str, replica: str, *, ttl_s: float, reason: str) -> None:
        try:
            await self._mark(keys=[self._key], args=[endpoint + _SEP + replica, repr(float(ttl_s)), reason])
        except self.store.errors as exc:
            raise self.store.failure(f"mark endpoint {endpoint!r} out of rotation", exc) from exc

    async def clear(self, endpoint: str, replica: str) -> None:
        try:
            await self.store.client.hdel(self._key, endpoint + _SEP + replica)
        except self.store.errors as exc:
            raise self.store.failure(f"clear the mark on endpoint {endpoint!r}", exc) from exc

    async def live(self) -> list[Mark]:
        try:
            flat = await self._live(keys=[self._key])
        except self.store.errors as exc:
            raise self.store.failure("read the out-of-rotation marks", exc) from exc
        out = []
        for i in range(0, len(flat), 3):
            field, remaining, reason = (as_text(x) for x in flat[i : i + 3])
            endpoint, _, replica = field.partition(_SEP)
            out.append(Mark(endpoint, replica, reason, float(remaining)))
        return out

    def __repr__(self) -> str:
        return f"RedisMarks({self.store.shown_url!r})"


def marks_for(store: object) -> Marks:
    """The marks that go with a state store: shared in Redis when the store is, else in this process."""
    from turnout.state.redis import RedisCounters

    if isinstance(store, RedisCounters):
        return RedisMarks(store)
    return InMemoryMarks()


__all__ = ["InMemoryMarks", "Mark", "Marks", "RedisMarks", "marks_for"]
