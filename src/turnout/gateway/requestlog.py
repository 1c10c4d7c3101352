"""The request log: every answered request in a SQLite file, written off the event loop.

Why SQLite: one file, no server, readable by ``turnout logs`` while the
gateway writes (WAL mode lets readers and the one writer run at once), and it
turns logged traffic plus user feedback into a canonical routing table
(:meth:`RequestLog.export_canonical`) to train the next router on.

Writes never block the caller. :meth:`RequestLog.record` appends the entry to
a bounded in-memory queue and returns; one background thread writes what has
gathered there in batches (one ``executemany`` in one transaction per batch).
The writer wakes on the first entry, then *lingers* ``linger_s`` (0.1 s) so
that the entries of that window share one transaction: one SQLite commit per
request cost about 100 µs of CPU plus a thread wake-up, on the same two cores
that serve the requests; batched, a row costs about 15 µs. The queue is a
``deque`` (an append takes no lock) and the writer is woken only when it is
asleep. :meth:`flush` and :meth:`close` cut the linger short. When the queue is
full (``max_queue`` entries waiting, i.e. the disk cannot keep up) the *new*
entry is dropped, counted in :attr:`RequestLog.dropped` and logged as a
warning (the first drop, then at most every ``10 s`` with the running total):
serving requests matters more than logging them, and a drop is never silent.
An entry is on disk at most ``linger_s`` plus one write after it was recorded.
An entry SQLite cannot take as it is (a field of an odd type) does not cost
its batch: the batch is written again one entry at a time, the odd entry with
every field made storable (:func:`_storable_row`). Only an entry even that
cannot store, or a batch the file itself refuses (locked past the busy
timeout, disk full), is lost, counted in :attr:`RequestLog.write_errors`.

The schema, its migrations and the entry type are in :mod:`turnout.gateway.logschema`.

**Durability window.** An entry is on disk at most ``linger_s`` (0.1 s by default;
``server.request_log_linger_s``) plus one write after it was recorded: a ``kill -9``
loses the entries of requests that finished within that window, and has no row at
all for requests still in flight. A clean shutdown writes everything.

Example::

    log = RequestLog("turnout-requests.sqlite")
    log.record(LogEntry(route="auto", model="qwen2.5-7b", status="ok", prompt="hi", response_text="hello"))
    log.flush()
    log.set_feedback(entry.id, 1.0, comment="right answer")
    log.export_canonical("traffic.parquet")
    log.close()
"""

from __future__ import annotations

import collections
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from turnout.errors import DataError, InvalidRequestError, TurnoutError
from turnout.gateway.logexport import ExportSummary, export_canonical
from turnout.gateway.logschema import (
    CALL_COLUMNS,
    COLUMNS,
    DATA_ERRORS,
    DEFAULT_REQUEST_LOG,
    DELETE_CALLS,
    FEEDBACK,
    INSERT_CALL,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_CALLS,
    SELECT_ENTRIES,
    UPSERT,
    LogEntry,
    call_rows,
    prompt_id,
    row,
    storable_row,
)

log = logging.getLogger(__name__)


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.I)


def _migrate(conn: sqlite3.Connection, statement: str) -> None:
    """Run one migration statement; adding a column the table already has is a no-op (a half-migrated file)."""
    m = _ADD_COLUMN.match(statement)
    if m is not None:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({m.group(1)})")}
        if m.group(2) in have:
            return
    conn.execute(statement)


class RequestLog:
    """A SQLite request log with a background batch writer. Thread-safe; ``record`` never blocks.

    ``query``, ``set_feedback`` and ``export_canonical`` read the file directly
    and are quick for one request, but they are disk I/O: call them from async
    code through the gateway's offload helper.
    """

    def __init__(
        self, path: str | Path = DEFAULT_REQUEST_LOG, *, max_queue: int = 10_000, batch_size: int = 256, linger_s: float = 0.1
    ) -> None:
        self.path = Path(path)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._dropped = 0
        self._write_errors = 0
        self._written = 0
        self._last_drop_log = 0.0
        self._stats_lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # created here, on the caller's thread, so a bad path fails at start-up with its name
        self._init_schema()
        # entries, feedback tuples and control markers, in order; appended by any thread, drained by the writer
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()  # set: something is pending and the writer should look
        self._urgent = threading.Event()  # set: a flush or close is waiting, skip the linger
        self._thread = threading.Thread(target=self._writer, name=f"turnout-requestlog:{self.path.name}", daemon=True)
        self._thread.start()

    # -- connection and schema ------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise TurnoutError(f"cannot open the request log {self.path}: {exc} (fix: choose a writable path)") from exc
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def _init_schema(self) -> None:
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("request log %s: journal mode is %s, not WAL (readers may block the writer)", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes, fast
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] in MIGRATIONS:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # read again under the write lock: another process may have migrated it meanwhile
                    version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
                    while version in MIGRATIONS:
                        for statement in MIGRATIONS[version]:
                            _migrate(conn, statement)
                        version += 1
                    conn.execute("UPDATE schema_version SET version = ?", (version,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            elif row[0] != SCHEMA_VERSION:
                raise DataError(
                    f"request log schema version {row[0]}, this turnout reads version {SCHEMA_VERSION}",
                    file=str(self.path),
                    fix="point the request log at a new file, or use the turnout that wrote it",
                )
        except sqlite3.DatabaseError as exc:
            raise DataError(
                f"not a usable SQLite request log: {exc}", file=str(self.path), fix="point the request log at a new file"
            ) from exc
        finally:
            conn.close()

    # -- writing --------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Entries dropped because the queue was full (or the log closed)."""
        return self._dropped

    @property
    def write_errors(self) -> int:
        """Entries lost because SQLite refused a batch (each failure is logged with its error)."""
        return self._write_errors

    @property
    def written(self) -> int:
        """Entries written to the file so far."""
        return self._written

    def record(self, entry: LogEntry) -> None:
        """Queue ``entry`` for writing and return at once (never blocks, never raises on a full queue)."""
        self._enqueue(entry)

    def _enqueue(self, item: Any) -> None:
        if self._closed:
            self._drop("the request log is closed")
            return
        # len() and append() are each atomic; racing threads may overshoot max_queue by a few, harmlessly
        if len(self._pending) >= self.max_queue:
            self._drop(f"the write queue is full ({self.max_queue} entries waiting)")
            return
        self._pending.append(item)
        if not self._wake.is_set():  # setting an Event takes a lock and may wake a thread: only when asleep
            self._wake.set()

    def _control(self, marker: Any) -> None:
        # control markers are never dropped, and cut the writer's linger short
        self._pending.append(marker)
        self._urgent.set()
        self._wake.set()

    def _drop(self, why: str) -> None:
        with self._stats_lock:
            self._dropped += 1
            now = time.monotonic()
            if self._dropped == 1 or now - self._last_drop_log >= 10.0:
                self._last_drop_log = now
                log.warning("request log %s: dropped an entry because %s (%d dropped so far)", self.path, why, self._dropped)

    def _writer(self) -> None:
        conn = self._connect()
        try:
            while True:
                self._wake.wait()
                # let the entries of the next linger_s join this transaction, unless someone waits for the disk
                if not self._urgent.is_set():
                    self._urgent.wait(self.linger_s)
                self._urgent.clear()
                # cleared before draining: an append after this point sets it again, so nothing is left behind
                self._wake.clear()
                while self._pending:
                    items: list[Any] = []
                    while self._pending and len(items) < self.batch_size:
                        items.append(self._pending.popleft())
                    entries = [i for i in items if isinstance(i, LogEntry)]
                    feedback = [i for i in items if isinstance(i, tuple)]
                    if entries or feedback:
                        self._write(conn, entries, feedback)
                    for i in items:
                        if isinstance(i, _Flush):
                            i.done.set()
                    if any(i is _STOP for i in items):
                        return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, entries: list[LogEntry], feedback: list[tuple[Any, ...]]) -> None:
        try:
            self._commit(conn, entries, [row(e) for e in entries], feedback)
        except DATA_ERRORS as exc:
            # one odd entry must not cost the whole batch: write them one at a time, each made storable
            log.warning(
                "request log %s: a batch of %d entries failed (%s); writing them one at a time",
                self.path,
                len(entries) + len(feedback),
                exc,
            )
            self._write_each(conn, entries, feedback)
            return
        except sqlite3.Error as exc:
            # the file itself refused (locked past the busy timeout, disk full): one at a time would wait as long
            # for each entry; keep the writer alive, count and report the lost batch, go on with the next
            with self._stats_lock:
                self._write_errors += len(entries) + len(feedback)
            log.error("request log %s: could not write %d entries: %s", self.path, len(entries) + len(feedback), exc)
            return
        with self._stats_lock:
            self._written += len(entries)

    def _write_each(self, conn: sqlite3.Connection, entries: list[LogEntry], feedback: list[tuple[Any, ...]]) -> None:
        items: list[Any] = [*entries, *feedback]
        written = lost = 0
        for i, item in enumerate(items):
            try:
                if isinstance(item, LogEntry):
                    self._commit(conn, [item], [storable_row(item)], [])
                    written += 1
                else:
                    self._commit(conn, [], [], [item])
            except DATA_ERRORS as exc:
                # keep the writer alive: count and report the lost entry, go on with the next
                lost += 1
                what = f"request {item.id!r}" if isinstance(item, LogEntry) else f"feedback for {item[0]!r}"
                log.error("request log %s: could not write %s: %s", self.path, what, exc)
            except sqlite3.Error as exc:  # the file refuses any write now: the rest would wait as long each
                lost += len(items) - i
                log.error("request log %s: could not write %d entries: %s", self.path, len(items) - i, exc)
                break
        with self._stats_lock:
            self._written += written
            self._write_errors += lost

    @staticmethod
    def _commit(
        conn: sqlite3.Connection, entries: list[LogEntry], rows: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]
    ) -> None:
        """Write ``rows`` (of ``entries``, with their calls) and ``feedback`` in one transaction, or nothing."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(UPSERT, rows)
            calls = [c for e in entries for c in call_rows(e)]
            if calls:
                conn.executemany(DELETE_CALLS, [(e.id,) for e in entries if e.calls])
                conn.executemany(INSERT_CALL, calls)
            conn.executemany(FEEDBACK, feedback)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until everything recorded before this call is on disk."""
        if self._closed or not self._thread.is_alive():
            return
        marker = _Flush()
        self._control(marker)
        marker.done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer thread. Idempotent; later ``record`` calls are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._control(_STOP)
            self._thread.join()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feedback -------------------------------------------------------------
    def set_feedback(self, request_id: str, score: float, comment: str | None = None) -> None:
        """Store a quality score in [0, 1] (and an optional comment) for a logged request (the latest wins).

        Queued like a record, so it never blocks; it may arrive before its
        request is written. Raises InvalidRequestError for a score out of range.
        """
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0.0 <= float(score) <= 1.0:
            raise InvalidRequestError(f"feedback score must be a number in [0, 1], got {score!r}", param="score")
        if not request_id:
            raise InvalidRequestError(
                "feedback needs the request id (the x-turnout-request-id header of the answer)", param="request_id"
            )
        self._enqueue((request_id, float(score), time.time(), comment))

    # -- reading --------------------------------------------------------------
    def get(self, request_id: str) -> LogEntry | None:
        """The logged request ``request_id`` (with its score), or None; what was recorded before is flushed first.

        Blocking (a flush and a read): call it from async code through the
        gateway's offload helper.
        """
        self.flush()
        sql = SELECT_ENTRIES + " WHERE r.id = ?"
        rows = list(self._read(sql, [request_id]))
        return self._with_calls([self._entry(rows[0])])[0] if rows else None

    def query(
        self,
        since: float | datetime | None = None,
        route: str | None = None,
        model: str | None = None,
        status: str | None = None,
        key: str | None = None,
        limit: int | None = 100,
        *,
        after_seq: int | None = None,
    ) -> list[LogEntry]:
        """Logged requests matching every filter given, newest first.

        ``since`` is a unix time or datetime (request start); ``key`` a key
        name. With ``after_seq`` the rows written after that sequence number
        come oldest first instead (for tailing).
        """
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("r.ts >= ?")
            params.append(since.timestamp() if isinstance(since, datetime) else float(since))
        for column, value in (("route", route), ("model", model), ("status", status), ("key_name", key)):
            if value is not None:
                where.append(f"r.{column} = ?")
                params.append(value)
        if after_seq is not None:
            where.append("r.seq > ?")
            params.append(after_seq)
        sql = (
            SELECT_ENTRIES
            + (" WHERE " + " AND ".join(where) if where else "")
            + (" ORDER BY r.seq ASC" if after_seq is not None else " ORDER BY r.ts DESC, r.seq DESC")
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._with_calls([self._entry(r) for r in self._read(sql, params)])

    def _with_calls(self, entries: list[LogEntry]) -> list[LogEntry]:
        """``entries`` with their model calls read back (one query for all of them)."""
        by_id = {e.id: e for e in entries}
        ids = list(by_id)
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            for request_id, *values in self._read(SELECT_CALLS.format(", ".join("?" * len(chunk))), chunk):
                by_id[request_id].calls.append(dict(zip(CALL_COLUMNS, values)))
        return entries

    def last_seq(self) -> int:
        """The sequence number of the last row written (0 when empty)."""
        rows = list(self._read("SELECT COALESCE(MAX(seq), 0) FROM requests", []))
        return int(rows[0][0])

    def _read(self, sql: str, params: list[Any]) -> Iterator[tuple[Any, ...]]:
        # a connection per read: sqlite3 connections are bound to one thread, and opening one is ~0.1 ms
        conn = self._connect()
        try:
            yield from conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    @staticmethod
    def _entry(values: tuple[Any, ...]) -> LogEntry:
        seq, *columns, score, comment = values
        data = dict(zip(COLUMNS, columns))
        data["candidates"] = json.loads(data["candidates"] or "[]")
        data["fallbacks_tried"] = json.loads(data["fallbacks_tried"] or "[]")
        data["budget"] = json.loads(data["budget"]) if data["budget"] else None
        data["decision"] = json.loads(data["decision"]) if data["decision"] else None
        return LogEntry(**data, score=score, comment=comment, seq=seq)

    def export_canonical(self, path: str | Path, *, include_unscored: bool = False) -> ExportSummary:
        """Logged traffic as a canonical routing table (see :func:`turnout.gateway.logexport.export_canonical`);
        queued records are flushed first."""
        self.flush()
        return export_canonical(self._read, path, include_unscored=include_unscored)

    def __repr__(self) -> str:
        return f"RequestLog({str(self.path)!r})"


__all__ = ["DEFAULT_REQUEST_LOG", "SCHEMA_VERSION", "ExportSummary", "LogEntry", "RequestLog", "prompt_id"]
