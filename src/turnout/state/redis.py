"""Counters in Redis, shared by every gateway replica.

``INCRBYFLOAT`` is atomic on the Redis server, so concurrent increments from
any number of processes never lose an update. The ``redis`` package is an
optional extra, imported only when a :class:`RedisCounters` is built.
"""

from __future__ import annotations

from typing import Any

from turnout.errors import MissingDependency, TurnoutError


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingDependency("redis", "redis", "shared counters in Redis (RedisCounters)") from exc
    return redis


class RedisCounters:
    """:class:`turnout.state.Counters` stored in Redis under ``prefix + key``.

    Building one does not connect; the first call (or :meth:`ping`, which a
    server should call at start-up to fail early) does. Redis errors are
    translated into :class:`turnout.errors.TurnoutError` naming the URL.

    Example::

        counters = RedisCounters("redis://127.0.0.1:6379/0")
        counters.ping()
        counters.incr("spend:alice", 0.002)
    """

    def __init__(self, url: str, *, prefix: str = "turnout:", socket_timeout: float = 2.0) -> None:
        redis = _redis()
        self.url = url
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        except ValueError as exc:  # a malformed URL
            raise TurnoutError(
                f"invalid Redis URL {url!r}: {exc} (fix: use redis://HOST:PORT/DB or rediss://...)"
            ) from exc

    def _fail(self, what: str, exc: BaseException) -> TurnoutError:
        # TODO(lead): a StateError subclass in turnout.errors would let the server map this to 503
        return TurnoutError(f"Redis at {self.url} failed to {what}: {exc} (is redis-server running and reachable?)")

    def ping(self) -> None:
        """Check the connection now; raise TurnoutError naming the URL if Redis is unreachable."""
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
        return f"RedisCounters({self.url!r}, prefix={self.prefix!r})"


__all__ = ["RedisCounters"]
