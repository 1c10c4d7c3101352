"""Shared float counters: the seam between one process and a scaled-out fleet.

A :class:`Counters` is a map from string keys to floats that can only be
incremented. The gateway keeps per-key spend in one (see
``turnout.gateway.keys``) and the running figures of route budgets
(``turnout.gateway.budget``). One process uses :class:`InMemoryCounters`;
several gateway replicas behind a load balancer share a
:class:`turnout.state.redis.RedisCounters` so that a key's budget, and a
route's budget, hold across all of them.

Both calls are synchronous. The in-memory one takes a few hundred nanoseconds;
the Redis one is a network round trip (~0.1-0.5 ms on loopback), so async
callers should run it through the gateway's offload helper. An implementation
says which it is with a class attribute ``in_process`` (True: no I/O, call it
inline); the gateway treats counters without one as remote.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable


@runtime_checkable
class Counters(Protocol):
    """Monotonic float counters keyed by string.

    Example::

        counters = InMemoryCounters()
        counters.incr("spend:alice", 0.002)   # -> 0.002
        counters.get("spend:alice")           # -> 0.002
        counters.get("spend:nobody")          # -> 0.0
    """

    def incr(self, key: str, amount: float) -> float:
        """Add ``amount`` to ``key`` (created at 0.0) and return the new total, atomically."""
        ...

    def get(self, key: str) -> float:
        """The current total of ``key``; 0.0 if it was never incremented."""
        ...


class InMemoryCounters:
    """Counters held in this process, safe to share between threads.

    The default: right for a single gateway process. Totals are lost on
    restart; use :class:`turnout.state.redis.RedisCounters` to share or keep them.
    """

    #: no I/O: callers on the event loop may call it inline
    in_process = True

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        # a read-modify-write under the GIL is still not atomic: two threads
        # could both read the old total, so increments take the lock
        self._lock = threading.Lock()

    def incr(self, key: str, amount: float) -> float:
        with self._lock:
            value = self._values.get(key, 0.0) + float(amount)
            self._values[key] = value
            return value

    def get(self, key: str) -> float:
        return self._values.get(key, 0.0)

    def __repr__(self) -> str:
        return f"InMemoryCounters({len(self._values)} keys)"


__all__ = ["Counters", "InMemoryCounters"]
