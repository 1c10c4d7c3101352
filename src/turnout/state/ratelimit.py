"""Rate windows: how many requests and tokens a name (an API key) used in the last minute, decided atomically.

A key with ``rpm: 60`` may start at most 60 requests in *any* 60-second window, whichever replica they
reach; one with ``tpm: 100000`` at most (about) 100,000 tokens. Both are **sliding-window logs**: every
admitted request is recorded with its time, and a request is admitted only while the records of the last
``window_s`` seconds leave room. A log is exact where the cheaper schemes are not: a fixed minute lets
``2 × rpm`` through across a boundary, and GCRA with a burst of ``rpm`` lets a full burst plus the refill
of the next minute through within one window. Its cost is one record per request of the window (a few
bytes each), which is small for the limits people set per key.

**Requests** are counted when they are admitted, whatever happens to them after (an upstream failure,
a budget refusal later in the pipeline): the limit is on what the key *asks* of the gateway.

**Tokens** are only known once a request ends, so admission *holds* an estimate (the prompt's estimated
tokens plus ``max_tokens`` when the request bounds its answer) and :meth:`RateWindows.settle` replaces it
with the tokens the request really used, keeping the record's admission time. A request is admitted
while the tokens of the window are *under* ``tpm``: concurrent requests cannot all pass a check made
before any of them is counted, and the window can pass ``tpm`` by at most what the last admitted
requests used beyond their estimates (the same rule as the USD budget holds, :mod:`turnout.state.base`).

Two implementations, one behaviour (tests run both against the same cases):

* :class:`InMemoryRateWindows`: this process only (one gateway), a deque per key and limit;
* :class:`RedisRateWindows`: every replica sharing a Redis, one Lua script per admission (atomic on
  the server, on the server's clock: replicas' clocks may disagree, Redis's ``TIME`` does not), keys
  ``rl:{<name>}:req`` / ``:tok`` / ``:tokv`` / ``:toksum`` expiring a little after the window.

A refusal says when to retry: the time until enough of the window's records expire for one more request
(``retry_after_s``; the server sends it rounded up as ``retry-after``).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from turnout.state.redis import as_text

if TYPE_CHECKING:
    from turnout.state.redis import RedisCounters

#: the length of the window both limits are counted over (per *minute*)
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of :meth:`RateWindows.admit`.

    ``limit`` names the limit that refused (``rpm`` or ``tpm``; None when admitted); ``used`` is what the
    window held of it when judged (requests or tokens); ``retry_after_s`` how long until the same request
    would fit (0 when admitted).
    """

    ok: bool
    limit: str | None = None
    used: float = 0.0
    retry_after_s: float = 0.0


@runtime_checkable
class RateWindows(Protocol):
    """Sliding one-minute windows of requests and tokens per name. All data methods are coroutines.

    Example::

        windows = InMemoryRateWindows()
        d = await windows.admit("alice", "req-1", rpm=60, tpm=10_000, tokens=350)
        if not d.ok:
            raise RateLimitedError(..., retry_after=d.retry_after_s)
        ...                                                  # serve the request
        await windows.settle("alice", "req-1", tokens=512)   # what it really used
    """

    #: True when calls do no I/O
    in_process: bool
    #: seconds of the window
    window_s: float

    async def admit(self, name: str, request_id: str, *, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        """Record ``request_id`` (and hold ``tokens``) for ``name`` if the window has room for it; atomically."""
        ...

    async def settle(self, name: str, request_id: str, tokens: int) -> None:
        """Replace the tokens held for ``request_id`` by ``tokens`` (added now when its record has expired)."""
        ...


def _retry_after_requests(times: Sequence[float], rpm: int, start: float) -> float:
    """Seconds until the window (``times`` sorted, all after ``start``) holds fewer than ``rpm`` requests."""
    # the (n - rpm + 1)-th oldest must leave: then n - (n - rpm + 1) = rpm - 1 remain
    return max(0.0, times[len(times) - rpm] - start)


class InMemoryRateWindows:
    """:class:`RateWindows` in this process: one gateway (or several sharing the object in tests).

    ``clock`` (monotonic seconds) is injectable for tests. A lock makes every call atomic, as the Lua
    script is in Redis; the coroutines never await.
    """

    in_process = True

    def __init__(self, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, collections.deque[float]] = {}
        # name -> request id -> [admitted at, tokens]; dicts keep insertion (= time) order
        self._tokens: dict[str, dict[str, list[float]]] = {}
        self._token_sum: dict[str, float] = {}

    def _expire(self, name: str, start: float) -> None:
        reqs = self._requests.get(name)
        while reqs and reqs[0] <= start:
            reqs.popleft()
        toks = self._tokens.get(name)
        if toks:
            dead = []
            for rid, (at, n) in toks.items():
                if at > start:
                    break
                dead.append(rid)
                self._token_sum[name] -= n
            for rid in dead:
                del toks[rid]

    async def admit(self, name: str, request_id: str, *, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        with self._lock:
            now = self._clock()
            start = now - self.window_s
            self._expire(name, start)
            reqs = self._requests.setdefault(name, collections.deque())
            if rpm is not None and len(reqs) >= rpm:
                return RateDecision(False, "rpm", len(reqs), _retry_after_requests(reqs, rpm, start))
            toks = self._tokens.setdefault(name, {})
            used = self._token_sum.get(name, 0.0)
            if tpm is not None and used >= tpm:
                wait, left = 0.0, used
                for at, n in toks.values():  # oldest first: the window frees their tokens in this order
                    left -= n
                    wait = at - start
                    if left < tpm:
                        break
                return RateDecision(False, "tpm", used, max(0.0, wait))
            if rpm is not None:
                reqs.append(now)
            if tpm is not None:
                toks[request_id] = [now, float(tokens)]
                self._token_sum[name] = used + tokens
            return RateDecision(True, None, float(len(reqs)) if rpm is not None else used)

    async def settle(self, name: str, request_id: str, tokens: int) -> None:
        with self._lock:
            self._expire(name, self._clock() - self.window_s)  # a record that left the window is not adjusted
            toks = self._tokens.setdefault(name, {})
            held = toks.get(request_id)
            if held is None:  # its record left the window (a request longer than the window): count it now
                if tokens > 0:
                    toks[request_id] = [self._clock(), float(tokens)]
                    self._token_sum[name] = self._token_sum.get(name, 0.0) + tokens
                return
            self._token_sum[name] = self._token_sum.get(name, 0.0) + tokens - held[1]
            held[1] = float(tokens)

    def used(self, name: str) -> tuple[int, float]:
        """Requests and tokens of ``name``'s window now (for tests and ``describe``)."""
        with self._lock:
            self._expire(name, self._clock() - self.window_s)
            return len(self._requests.get(name, ())), self._token_sum.get(name, 0.0)

    def __repr__(self) -> str:
        return f"InMemoryRateWindows({len(self._requests)} keys, window_s={self.window_s:g})"


# KEYS: requests zset, tokens zset (id by time), tokens hash (id -> tokens), token sum.
# ARGV: request id, rpm (0: none), tpm (0: none), tokens, window seconds.
# Returns {ok, limit, used (string), retry_after (string)}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = tonumber(ARGV[5])
local start = now - window
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local ttl = math.ceil(window) + 5
local n = 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start)
  n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return {0, 'rpm', tostring(n), tostring(math.max(0, tonumber(e[2]) - start))}
  end
end
local used = 0
if tpm > 0 then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', start)
  local gone = 0
  -- in slices: unpack() of a long list would overflow Lua's stack
  for i = 1, #dead, 500 do
    local slice = {unpack(dead, i, math.min(i + 499, #dead))}
    for _, v in ipairs(redis.call('HMGET', KEYS[3], unpack(slice))) do gone = gone + (tonumber(v) or 0) end
    redis.call('HDEL', KEYS[3], unpack(slice))
  end
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', start)
    used = redis.call('INCRBY', KEYS[4], -gone)
  else
    used = tonumber(redis.call('GET', KEYS[4]) or '0')
  end
  if used >= tpm then
    local left = used
    local wait = 0
    local ids = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #ids, 2 do
      left = left - (tonumber(redis.call('HGET', KEYS[3], ids[i])) or 0)
      wait = tonumber(ids[i + 1]) - start
      if left < tpm then break end
    end
    return {0, 'tpm', tostring(used), tostring(math.max(0, wait))}
  end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('EXPIRE', KEYS[1], ttl)
  n = n + 1
end
if tpm > 0 then
  local tokens = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], tokens)
  used = redis.call('INCRBY', KEYS[4], tokens)
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
if rpm > 0 then return {1, '', tostring(n), '0'} end
return {1, '', tostring(used), '0'}
"""

# KEYS: as _ADMIT. ARGV: request id, tokens, window seconds. Replaces the tokens held (or adds them now).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local tokens = tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[3], ARGV[1])
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
if held and at and tonumber(at) <= now - tonumber(ARGV[3]) then
  -- its record has left the window (the next admission would drop it): drop it now, count the tokens now
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('INCRBY', KEYS[4], -tonumber(held))
  held = nil
end
if held then
  redis.call('HSET', KEYS[3], ARGV[1], tokens)
  redis.call('INCRBY', KEYS[4], tokens - tonumber(held))
elseif tokens > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], tokens)
  redis.call('INCRBY', KEYS[4], tokens)
end
local ttl = math.ceil(tonumber(ARGV[3])) + 5
for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
"""


class RedisRateWindows:
    """:class:`RateWindows` in Redis, shared by every replica: one Lua script per admission and per settlement.

    Built on a :class:`~turnout.state.redis.RedisCounters` (its connection pool, prefix and error
    translation): every failure is a :class:`~turnout.errors.StateError` naming the URL.
    """

    in_process = False

    def __init__(self, store: RedisCounters, *, window_s: float = WINDOW_S) -> None:
        self.store = store
        self.window_s = window_s
        self._admit = store.client.register_script(_ADMIT)
        self._settle = store.client.register_script(_SETTLE)

    def _keys(self, name: str) -> list[str]:
        # one hash tag per name: the four keys of a script live in one slot of a Redis Cluster
        base = f"{self.store.prefix}rl:{{{name}}}:"
        return [base + "req", base + "tok", base + "tokv", base + "toksum"]

    async def admit(self, name: str, request_id: str, *, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        try:
            ok, limit, used, wait = await self._admit(
                keys=self._keys(name), args=[request_id, rpm or 0, tpm or 0, max(0, int(tokens)), repr(self.window_s)]
            )
        except self.store.errors as exc:
            raise self.store.failure(f"check the rate limits of {name!r}", exc) from exc
        lim = as_text(limit)
        return RateDecision(bool(int(ok)), lim or None, float(used), float(wait))

    async def settle(self, name: str, request_id: str, tokens: int) -> None:
        try:
            await self._settle(keys=self._keys(name), args=[request_id, max(0, int(tokens)), repr(self.window_s)])
        except self.store.errors as exc:
            raise self.store.failure(f"record the tokens of {name!r}", exc) from exc

    def __repr__(self) -> str:
        return f"RedisRateWindows({self.store.shown_url!r}, window_s={self.window_s:g})"


def rate_windows_for(store: object, *, window_s: float = WINDOW_S) -> RateWindows:
    """The rate windows that go with a state store: shared in Redis when the store is, else in this process."""
    from turnout.state.redis import RedisCounters

    if isinstance(store, RedisCounters):
        return RedisRateWindows(store, window_s=window_s)
    return InMemoryRateWindows(window_s=window_s)


__all__ = ["WINDOW_S", "InMemoryRateWindows", "RateDecision", "RateWindows", "RedisRateWindows", "rate_windows_for"]
