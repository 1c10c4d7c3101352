"""Counters and holds kept in this process: the default for one gateway, and the base of the SQLite store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from turnout.state.base import Reservation, spend_key


class InMemoryCounters:
    """:class:`~turnout.state.base.StateStore` in this process's memory; totals are lost on restart.

    Safe to share between threads as well as tasks (each update takes a lock: a read-modify-write is
    not atomic under the GIL). ``clock`` (monotonic seconds) is injectable for hold expiry in tests.
    """

    #: no I/O: the gateway calls it without timeouts of its own
    in_process = True

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._values: dict[str, float] = {}
        self._holds: dict[str, dict[str, tuple[float, float]]] = {}  # name -> hold id -> (amount, expires at)
        self._lock = threading.Lock()
        self._clock = clock

    # -- counters ---------------------------------------------------------------
    def _add(self, key: str, amount: float) -> float:
        """Add ``amount`` to ``key`` and return the new value; the caller holds the lock."""
        value = self._values.get(key, 0.0) + amount
        self._values[key] = value
        return value

    def incr_now(self, key: str, amount: float) -> float:
        """:meth:`incr` without the coroutine (for synchronous callers in the same process)."""
        with self._lock:
            return self._add(key, float(amount))

    def get_now(self, key: str) -> float:
        return self._values.get(key, 0.0)

    async def incr(self, key: str, amount: float) -> float:
        return self.incr_now(key, amount)

    async def get(self, key: str) -> float:
        return self._values.get(key, 0.0)

    async def get_many(self, keys: Sequence[str]) -> list[float]:
        return [self._values.get(k, 0.0) for k in keys]

    # -- holds ------------------------------------------------------------------
    def _live_holds(self, name: str) -> dict[str, tuple[float, float]]:
        holds = self._holds.setdefault(name, {})
        now = self._clock()
        for hid in [h for h, (_, exp) in holds.items() if exp <= now]:
            del holds[hid]  # its process died (or forgot) before settling: it stops counting
        return holds

    async def reserve(self, name: str, hold_id: str, amount: float, *, limit: float, ttl_s: float) -> Reservation:
        with self._lock:
            holds = self._live_holds(name)
            spent = self._values.get(spend_key(name), 0.0)
            held = sum(a for a, _ in holds.values())
            if spent + held >= limit:  # no room left (see StateStore.reserve for why not spent + held + amount)
                return Reservation(False, spent, held)
            holds[hold_id] = (float(amount), self._clock() + ttl_s)
            return Reservation(True, spent, held + amount)

    async def settle(self, name: str, hold_id: str, actual: float) -> float:
        with self._lock:
            self._holds.get(name, {}).pop(hold_id, None)
            return self._add(spend_key(name), float(actual))

    def held(self, name: str) -> float:
        """USD held now against ``name`` by requests in flight."""
        with self._lock:
            return sum(a for a, _ in self._live_holds(name).values())

    # -- lifecycle --------------------------------------------------------------
    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"InMemoryCounters({len(self._values)} keys)"


__all__ = ["InMemoryCounters"]
