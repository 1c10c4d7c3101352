"""Counters in Redis, shared by every gateway replica.

``INCRBYFLOAT`` is atomic on the Redis server, so concurrent increments from
any number of processes never lose an update. The ``redis`` package is an
optional extra, imported only when a :class:`RedisCounters` is built.

Every Redis failure (refused, timed out, reset, an error reply) is raised as
:class:`turnout.errors.StateError` naming the URL, which the server answers
with 503: the store is unavailable, the request itself is fine.
"""

from __future__ import annotations

from typing import Any

from turnout.errors import MissingDependency, StateError


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingDependency("redis", "redis", "shared counters in Redis (RedisCounters)") from exc
    return redis


def _masked(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (messages reach clients and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


class RedisCounters:
    """:class:`turnout.state.Counters` stored in Redis under ``prefix + key``.

    Building one does not connect; the first call (or :meth:`ping`, which a
    server should call at start-up to fail early) does. Redis errors are
    translated into :class:`turnout.errors.StateError` naming the URL.
    Messages and ``repr`` show the URL with any password masked. Every call is
    a network round trip (``in_process`` is False): the gateway makes them off
    the event loop.

    Example::

        counters = RedisCounters("redis://127.0.0.1:6379/0")
        counters.ping()
        counters.incr("spend:alice", 0.002)
    """

    #: every call leaves the process (see :mod:`turnout.state.counters`)
    in_process = False

    def __init__(self, url: str, *, prefix: str = "turnout:", socket_timeout: float = 2.0) -> None:
        redis = _redis()
        self.url = url
        #: the URL as messages show it: the password, if any, masked
        self.shown_url = _masked(url)
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        except ValueError as exc:  # a malformed URL
            raise StateError(
                f"invalid Redis URL {self.shown_url!r}: {exc} (fix: use redis://HOST:PORT/DB or rediss://...)"
            ) from exc

    def _fail(self, what: str, exc: BaseException) -> StateError:
        return StateError(f"Redis at {self.shown_url} failed to {what}: {exc} (is redis-server running and reachable?)")

    def ping(self) -> None:
        """Check the connection now; raise StateError naming the URL if Redis is unreachable."""
        try:
            self._client.ping()
        except self._errors as exc:
            raise self._fail("answer PING", exc) from exc

    def incr(self, key: str, amount: float) -> float:
        try:
            return float(self._client.incrbyfloat(self.prefix + key, float(amount)))
        except self._errors as exc:
            raise self._fail(f"increment {key!r}", exc) from exc

    def get(self, key: str) -> float:
        try:
            value = self._client.get(self.prefix + key)
        except self._errors as exc:
            raise self._fail(f"read {key!r}", exc) from exc
        return 0.0 if value is None else float(value)

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisCounters({self.shown_url!r}, prefix={self.prefix!r})"


__all__ = ["RedisCounters"]
