"""Shared state: counters and budget holds that one process keeps (in memory, or persisted to SQLite)
or many share in Redis. See :mod:`turnout.state.base` for the seam.

``RedisCounters`` is re-exported without importing the ``redis`` package (that happens when one is built).
"""

from turnout.state.base import Reservation, StateStore
from turnout.state.memory import InMemoryCounters
from turnout.state.redis import RedisCounters
from turnout.state.sqlite import SqliteCounters

#: the seam's historical name
Counters = StateStore

__all__ = ["Counters", "InMemoryCounters", "RedisCounters", "Reservation", "SqliteCounters", "StateStore"]
