"""Counters that survive a restart: kept in memory, written behind to a SQLite file.

Budgets are checked on every request, so a disk write per request would sit on the hot path. This
store answers from memory exactly as :class:`~turnout.state.memory.InMemoryCounters` does and a
background thread adds what changed to the file every ``flush_s`` seconds (and on close), as
*increments* (``value = value + delta``), so two processes sharing a file never overwrite each other's
spend (each only sees its own increments live, though: replicas that must agree use Redis).

**Durability window.** A clean shutdown (:meth:`aclose`) writes everything. A crash (``kill -9``,
power loss) loses the increments of at most the last ``flush_s`` seconds (default 0.5 s). Holds (the
reservations of requests in flight) are never written: after a restart nothing is in flight.

By default the gateway keeps these counters in the request log's own SQLite file (table ``counters``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from turnout.errors import StateError
from turnout.state.memory import InMemoryCounters

log = logging.getLogger(__name__)

#: seconds between two write-behinds (the crash durability window)
FLUSH_S = 0.5

_SCHEMA = "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value REAL NOT NULL)"
_ADD = "INSERT INTO counters (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value"


class SqliteCounters(InMemoryCounters):
    """In-memory counters loaded from and written behind to ``path`` (SQLite, WAL).

    Example::

        store = SqliteCounters("turnout-requests.sqlite")   # loads the totals written before
        await store.incr("spend:alice", 0.002)
        await store.aclose()                                 # writes what is left
    """

    def __init__(self, path: str | Path, *, flush_s: float = FLUSH_S) -> None:
        super().__init__()
        self.path = Path(path)
        self.flush_s = flush_s
        self._pending: dict[str, float] = {}  # key -> increment not yet written
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            self._conn.commit()
            self._values.update({k: float(v) for k, v in self._conn.execute("SELECT key, value FROM counters")})
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot open the state file {self.path}: {exc} (fix: check the path and its "
                "permissions, or set state.persist: false)"
            ) from exc
        self._thread = threading.Thread(target=self._writer, name="turnout-state-writer", daemon=True)
        self._thread.start()

    def _add(self, key: str, amount: float) -> float:
        value = super()._add(key, amount)
        if amount:  # remembered for the next write-behind
            with self._pending_lock:
                self._pending[key] = self._pending.get(key, 0.0) + amount
        return value

    def _writer(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write the pending increments now (the writer thread does this every ``flush_s``)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with self._conn:
                self._conn.executemany(_ADD, list(pending.items()))
        except sqlite3.Error as exc:
            # keep them for the next try: losing spend would let a key overspend after a restart
            log.warning("state file %s: could not write %d counter(s), will retry: %s", self.path, len(pending), exc)
            with self._pending_lock:
                for k, v in pending.items():
                    self._pending[k] = self._pending.get(k, 0.0) + v

    async def aclose(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10.0)
        self.flush()
        self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteCounters({str(self.path)!r}, {len(self._values)} keys)"


__all__ = ["FLUSH_S", "SqliteCounters"]
