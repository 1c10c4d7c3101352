"""The shared-state seam: counters and budget holds that one process keeps itself or many share.

Everything a gateway must agree on across replicas goes through one :class:`StateStore`: API keys'
spend and their in-flight *holds* (reservations), route budgets' running figures, and later rate
windows and bandit statistics. Three implementations:

* :class:`~turnout.state.memory.InMemoryCounters`: this process only, lost on restart;
* :class:`~turnout.state.sqlite.SqliteCounters`: in memory, persisted to a SQLite file a moment later
  (write-behind), so spend survives a restart; one process per file;
* :class:`~turnout.state.redis.RedisCounters`: ``redis.asyncio``, shared by every replica; every update
  is atomic on the server (``INCRBYFLOAT`` or a Lua script), never a read-modify-write from Python.

Every method is a coroutine called on the event loop (``in_process`` says whether it does I/O). A store
that cannot be reached raises :class:`~turnout.errors.StateError` naming it.

**Holds.** A request's worst-case cost is *held* against its key before any model is called
(:meth:`StateStore.reserve`: atomically, a hold is placed only while spent + held is still under the
limit) and *settled* when it ends (:meth:`StateStore.settle`: the hold goes, what was really spent is
added). While holds are out, other requests see the money as gone, so concurrent requests cannot
pile onto the last cents of a budget: the spend can pass the limit by at most the one request admitted
last (never by the sum of everything in flight, as a check-then-act would allow). A request whose worst
case alone exceeds what is left is still admitted while something is left, as a budget check before
holds did: refusing it would make the last dollars of every budget unusable for requests without a
small ``max_tokens``. A hold carries an expiry: one whose process died before settling stops counting
after ``ttl_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of :meth:`StateStore.reserve`: whether the hold was placed, and the figures it was judged on."""

    ok: bool
    spent: float
    held: float


@runtime_checkable
class StateStore(Protocol):
    """Float counters keyed by string, plus expiring holds against a limit. All methods are coroutines.

    Example::

        store = InMemoryCounters()
        await store.incr("budget:auto:requests", 1)              # -> 1.0
        r = await store.reserve("alice", "req-1", 0.02, limit=1.0, ttl_s=300)
        if r.ok:
            ...                                                   # call the model
            await store.settle("alice", "req-1", actual=0.013)    # the hold goes, 0.013 is spent
    """

    #: True when calls do no I/O (the gateway may call them without any timeout of its own)
    in_process: bool

    async def incr(self, key: str, amount: float) -> float:
        """Add ``amount`` to ``key`` (created at 0.0) and return the new total, atomically."""
        ...

    async def get(self, key: str) -> float:
        """The current total of ``key``; 0.0 if it was never incremented."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[float]:
        """The totals of ``keys``, in order, in one round trip."""
        ...

    async def reserve(self, name: str, hold_id: str, amount: float, *, limit: float, ttl_s: float) -> Reservation:
        """Hold ``amount`` against budget ``name`` if ``spent + held < limit`` (room is left); atomically.

        Spend lives under ``spend:<name>``; holds under ``holds:<name>``. A hold expires after ``ttl_s``.
        """
        ...

    async def settle(self, name: str, hold_id: str, actual: float) -> float:
        """Drop hold ``hold_id`` of ``name`` (if still there) and add ``actual`` to its spend; the new spend."""
        ...

    async def ping(self) -> None:
        """Check that the store answers (StateError otherwise)."""
        ...

    async def aclose(self) -> None:
        """Flush and release the store's resources. Idempotent."""
        ...


#: spend and holds of budget ``name`` live under these keys
def spend_key(name: str) -> str:
    return f"spend:{name}"


def holds_key(name: str) -> str:
    return f"holds:{name}"


__all__ = ["Reservation", "StateStore", "holds_key", "spend_key"]
