"""Counters and holds in Redis, shared by every gateway replica (``redis.asyncio``, on the event loop).

Every update is atomic on the server: ``INCRBYFLOAT`` for counters, one Lua script for a hold
(expire the dead holds, sum the live ones, compare with the limit, add the new one) and one for a
settlement (drop the hold, add the spend). Nothing is read in Python and written back, so any number
of replicas can update one key's budget concurrently without losing an update or overspending.
No thread pool is involved: the client is asyncio's own.

Holds of budget ``name`` live in a hash ``holds:<name>`` (hold id -> amount) beside a sorted set
``holds-exp:<name>`` (hold id by expiry time, from the server's clock), so a replica that died with
requests in flight stops holding their money after ``ttl_s``.

Every Redis failure (refused, timed out, reset, an error reply) is raised as
:class:`turnout.errors.StateError` naming the URL (its password masked); the server answers it 503.
The ``redis`` package is the optional ``redis`` extra, imported when a store is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turnout.errors import MissingDependency, StateError
from turnout.state.base import Reservation, holds_key, spend_key

# KEYS: spend, holds hash, holds expiry zset. ARGV: hold id, amount, limit, ttl_s.
# Returns {ok (0/1), spent (string), held (string)}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #dead > 0 then
  redis.call('HDEL', KEYS[2], unpack(dead))
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do held = held + tonumber(v) end
local amount = tonumber(ARGV[2])
if spent + held >= tonumber(ARGV[3]) then
  return {0, tostring(spent), tostring(held)}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
return {1, tostring(spent), tostring(held + amount)}
"""

# KEYS: spend, holds hash, holds expiry zset. ARGV: hold id, actual. Returns the new spend (string).
_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
"""


def _redis_asyncio() -> Any:
    try:
        import redis.asyncio as aredis
    except ImportError as exc:
        raise MissingDependency("redis", "redis", "shared state in Redis (RedisCounters)") from exc
    return aredis


def as_text(value: Any) -> str:
    """A value of a Redis reply as text: bytes decoded as UTF-8, anything else as ``str``."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def masked(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (messages reach clients and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


class RedisCounters:
    """:class:`~turnout.state.base.StateStore` in Redis under ``prefix + key``.

    Building one does not connect; the first call (or :meth:`ping`, which the gateway calls at start-up
    to fail early) does. ``socket_timeout`` bounds every round trip.

    Example::

        store = RedisCounters("redis://127.0.0.1:6379/0")
        await store.ping()
        await store.incr("spend:alice", 0.002)
        await store.aclose()
    """

    #: every call leaves the process
    in_process = False

    def __init__(self, url: str, *, prefix: str = "turnout:", socket_timeout: float = 2.0) -> None:
        aredis = _redis_asyncio()
        import redis as redis_sync

        self.url = url
        #: the URL as messages show it: the password, if any, masked
        self.shown_url = masked(url)
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis_sync.exceptions.RedisError, OSError)
        try:
            self._client = aredis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
        except ValueError as exc:  # a malformed URL
            raise StateError(
                f"invalid Redis URL {self.shown_url!r}: {exc} (fix: use redis://HOST:PORT/DB or rediss://...)"
            ) from exc
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)

    # -- what the other shared-state parts (rate windows, marks, the feedback index, the cache) build on ----------
    @property
    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client (one connection pool, shared by every part built on this store)."""
        return self._client

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions a Redis call may raise (translate them with :meth:`failure`)."""
        return self._errors

    def failure(self, what: str, exc: BaseException) -> StateError:
        """The :class:`~turnout.errors.StateError` for a failed call: names the URL (password masked) and ``what``."""
        return StateError(f"Redis at {self.shown_url} failed to {what}: {exc} (is redis-server running and reachable?)")

    def _hold_keys(self, name: str) -> list[str]:
        p = self.prefix
        return [p + spend_key(name), p + holds_key(name), p + "holds-exp:" + name]

    async def ping(self) -> None:
        """Check the connection now; raise StateError naming the URL if Redis is unreachable."""
        try:
            await self._client.ping()
        except self._errors as exc:
            raise self.failure("answer PING", exc) from exc

    async def incr(self, key: str, amount: float) -> float:
        try:
            return float(await self._client.incrbyfloat(self.prefix + key, float(amount)))
        except self._errors as exc:
            raise self.failure(f"increment {key!r}", exc) from exc

    async def get(self, key: str) -> float:
        try:
            value = await self._client.get(self.prefix + key)
        except self._errors as exc:
            raise self.failure(f"read {key!r}", exc) from exc
        return 0.0 if value is None else float(value)

    async def get_many(self, keys: Sequence[str]) -> list[float]:
        if not keys:
            return []
        try:
            values = await self._client.mget([self.prefix + k for k in keys])
        except self._errors as exc:
            raise self.failure(f"read {len(keys)} keys", exc) from exc
        return [0.0 if v is None else float(v) for v in values]

    async def reserve(self, name: str, hold_id: str, amount: float, *, limit: float, ttl_s: float) -> Reservation:
        try:
            ok, spent, held = await self._reserve(
                keys=self._hold_keys(name), args=[hold_id, repr(float(amount)), repr(float(limit)), repr(ttl_s)]
            )
        except self._errors as exc:
            raise self.failure(f"hold {amount:.6g} USD against {name!r}", exc) from exc
        return Reservation(bool(int(ok)), float(spent), float(held))

    async def settle(self, name: str, hold_id: str, actual: float) -> float:
        try:
            return float(await self._settle(keys=self._hold_keys(name), args=[hold_id, repr(float(actual))]))
        except self._errors as exc:
            raise self.failure(f"settle {actual:.6g} USD of {name!r}", exc) from exc

    async def held(self, name: str) -> float:
        """USD held now against ``name`` by requests in flight on every replica (expired holds included
        until the next reservation drops them)."""
        try:
            values = await self._client.hvals(self.prefix + holds_key(name))
        except self._errors as exc:
            raise self.failure(f"read the holds of {name!r}", exc) from exc
        return sum(float(v) for v in values)

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisCounters({self.shown_url!r}, prefix={self.prefix!r})"


__all__ = ["RedisCounters", "as_text", "masked"]
