"""Shared state: counters that one process keeps in memory or many share in Redis.

``RedisCounters`` lives in :mod:`turnout.state.redis`; it is re-exported here
without importing the ``redis`` package (that happens when one is built).
"""

from turnout.state.counters import Counters, InMemoryCounters
from turnout.state.redis import RedisCounters

__all__ = ["Counters", "InMemoryCounters", "RedisCounters"]
