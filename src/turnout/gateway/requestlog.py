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

Schema (``SCHEMA_VERSION``)::

    requests(seq INTEGER PRIMARY KEY, id TEXT UNIQUE, ts, key_name, route, model, status,
             error_kind, candidates JSON, prompt, response_text, prompt_tokens,
             completion_tokens, cost_usd, latency_s, ttft_s, decision_ms,
             fallbacks_tried JSON, http_status, lam, budget JSON)
    feedback(request_id TEXT PRIMARY KEY, score REAL, ts REAL)
    schema_version(version INTEGER)

``lam`` is the λ the decision used and ``budget`` the route budget's state at
that moment (null without one). ``http_status`` is the status the client
received (as the server reports it): ``200`` also for a stream that failed
or was left after its first chunk (the failure is in ``status`` and
``error_kind``), null for a request whose client hung up before anything was
sent (``status`` ``cancelled``) and for a gateway used without the server.
Version 1 files (without ``lam`` and ``budget``) are migrated in place when
opened.

``seq`` is the insertion order (``--follow`` tails by it; ``ts``, the request
start, is not monotonic in write order). Feedback is its own table so that it
may arrive before its request is written and a re-recorded request keeps it.

Example::

    log = RequestLog("turnout-requests.sqlite")
    log.record(LogEntry(route="auto", model="qwen2.5-7b", status="ok", prompt="hi", response_text="hello"))
    log.flush()
    log.set_feedback(entry.id, 1.0)
    log.export_canonical("traffic.parquet")
    log.close()
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from turnout.errors import DataError, InvalidRequestError, TurnoutError

log = logging.getLogger(__name__)

DEFAULT_REQUEST_LOG = "turnout-requests.sqlite"
SCHEMA_VERSION = 2

_COLUMNS = (
    "id", "ts", "key_name", "route", "model", "status", "error_kind", "candidates", "prompt", "response_text",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "ttft_s", "decision_ms", "fallbacks_tried",
    "http_status", "lam", "budget",
)
#: the rows read back as LogEntry objects (sequence number, the columns, the latest feedback score); filters follow
_SELECT_ENTRIES = (f"SELECT r.seq, {', '.join('r.' + c for c in _COLUMNS)}, f.score FROM requests r "
                   "LEFT JOIN feedback f ON f.request_id = r.id")
#: version -> the statements that bring a file of that version to the next one
_MIGRATIONS = {
    1: ("ALTER TABLE requests ADD COLUMN lam REAL", "ALTER TABLE requests ADD COLUMN budget TEXT"),
}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, key_name TEXT, route TEXT, model TEXT, status TEXT NOT NULL,
    error_kind TEXT, candidates TEXT, prompt TEXT, response_text TEXT, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost_usd REAL, latency_s REAL, ttft_s REAL, decision_ms REAL,
    fallbacks_tried TEXT, http_status INTEGER, lam REAL, budget TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_route_model ON requests (route, model);
CREATE INDEX IF NOT EXISTS requests_key ON requests (key_name);
CREATE TABLE IF NOT EXISTS feedback (request_id TEXT PRIMARY KEY, score REAL NOT NULL, ts REAL NOT NULL);
"""
# re-recording an id (e.g. a request logged again with its final status) updates it in place
_UPSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}"
)
_FEEDBACK = (
    "INSERT INTO feedback (request_id, score, ts) VALUES (?, ?, ?) "
    "ON CONFLICT(request_id) DO UPDATE SET score = excluded.score, ts = excluded.ts"
)


@dataclass(slots=True)
class LogEntry:
    """One request as logged. ``id`` and ``ts`` (unix seconds) default to a fresh uuid and now.

    ``status`` is ``ok`` or ``error`` (or another short word); ``candidates`` the
    policy's candidates as dicts; ``fallbacks_tried`` the models tried before the
    one that answered. ``score`` is filled in by :meth:`RequestLog.query` from
    feedback and ignored by :meth:`RequestLog.record`. Do not mutate an entry
    after recording it: the writer thread serialises it later.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = field(default_factory=time.time)
    key_name: str | None = None
    route: str | None = None
    model: str | None = None
    status: str = "ok"
    error_kind: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    response_text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    decision_ms: float | None = None
    fallbacks_tried: list[str] = field(default_factory=list)
    http_status: int | None = None
    lam: float | None = None
    budget: dict[str, Any] | None = None
    score: float | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (JSON-ready: candidates are already dicts)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What :meth:`RequestLog.export_canonical` wrote and what it left out, and why."""

    path: str
    rows: int
    prompts: int
    skipped_unscored: int
    skipped_errors: int
    merged_repeats: int


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _row(e: LogEntry) -> tuple[Any, ...]:
    return (
        e.id, e.ts, e.key_name, e.route, e.model, e.status, e.error_kind,
        json.dumps([_jsonable(c) for c in e.candidates or []]), e.prompt, e.response_text,
        e.prompt_tokens, e.completion_tokens, e.cost_usd, e.latency_s, e.ttft_s, e.decision_ms,
        json.dumps(e.fallbacks_tried if e.fallbacks_tried is not None else []), e.http_status,
        e.lam, None if e.budget is None else json.dumps(e.budget),
    )


#: what an entry's own contents can raise on the way into SQLite (a type it cannot bind, a NOT NULL, JSON)
_DATA_ERRORS = (TypeError, ValueError, sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError)
#: the columns holding JSON text and those holding text, for :func:`_storable_row` (the others are numbers)
_JSON_COLUMNS = frozenset({"candidates", "fallbacks_tried", "budget"})
_TEXT_COLUMNS = frozenset({"id", "key_name", "route", "model", "status", "error_kind", "prompt", "response_text"})


def _storable_row(e: LogEntry) -> tuple[Any, ...]:
    """``_row(e)`` with every field coerced to what its column stores: for an entry ``_row`` could not write.

    JSON columns serialise whatever they hold (``str()`` of what JSON cannot
    express), text columns take ``str()`` of a non-string, numeric columns
    keep numbers and drop anything else to null.
    """
    out: list[Any] = []
    for column in _COLUMNS:
        value = getattr(e, column)
        if column in _JSON_COLUMNS:
            empty = None if column == "budget" else "[]"
            out.append(empty if value is None else json.dumps(value, default=_json_default))
        elif column in _TEXT_COLUMNS:
            out.append(value if value is None or isinstance(value, str) else str(value))
        else:
            out.append(value if isinstance(value, (int, float)) else None)
    return tuple(out)


def _json_default(value: Any) -> Any:
    out = _jsonable(value)  # a dataclass as a dict; anything else JSON cannot express as its str()
    return str(value) if out is value else out


def prompt_id(prompt: str) -> str:
    """A stable id for a prompt text, so repeats of one prompt group together in exports."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


class RequestLog:
    """A SQLite request log with a background batch writer. Thread-safe; ``record`` never blocks.

    ``query``, ``set_feedback`` and ``export_canonical`` read the file directly
    and are quick for one request, but they are disk I/O: call them from async
    code through the gateway's offload helper.
    """

    def __init__(self, path: str | Path = DEFAULT_REQUEST_LOG, *, max_queue: int = 10_000, batch_size: int = 256,
                 linger_s: float = 0.1) -> None:
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
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] in _MIGRATIONS:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # read again under the write lock: another process may have migrated it meanwhile
                    version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
                    while version in _MIGRATIONS:
                        for statement in _MIGRATIONS[version]:
                            conn.execute(statement)
                        version += 1
                    conn.execute("UPDATE schema_version SET version = ?", (version,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            elif row[0] != SCHEMA_VERSION:
                raise DataError(
                    f"request log schema version {row[0]}, this turnout reads version {SCHEMA_VERSION}",
                    file=str(self.path), fix="point the request log at a new file, or use the turnout that wrote it",
                )
        except sqlite3.DatabaseError as exc:
            raise DataError(f"not a usable SQLite request log: {exc}", file=str(self.path),
                            fix="point the request log at a new file") from exc
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
                    items = []
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
            self._commit(conn, [_row(e) for e in entries], feedback)
        except _DATA_ERRORS as exc:
            # one odd entry must not cost the whole batch: write them one at a time, each made storable
            log.warning("request log %s: a batch of %d entries failed (%s); writing them one at a time",
                        self.path, len(entries) + len(feedback), exc)
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
                    self._commit(conn, [_storable_row(item)], [])
                    written += 1
                else:
                    self._commit(conn, [], [item])
            except _DATA_ERRORS as exc:
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
    def _commit(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], feedback: list[tuple[Any, ...]]) -> None:
        """Write ``rows`` and ``feedback`` in one transaction, or nothing."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, rows)
            conn.executemany(_FEEDBACK, feedback)
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
    def set_feedback(self, request_id: str, score: float) -> None:
        """Store a quality score in [0, 1] for a logged request (the latest score wins).

        Queued like a record, so it never blocks; it may arrive before its
        request is written. Raises InvalidRequestError for a score out of range.
        """
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0.0 <= float(score) <= 1.0:
            raise InvalidRequestError(f"feedback score must be a number in [0, 1], got {score!r}", param="score")
        if not request_id:
            raise InvalidRequestError("feedback needs the request id (the x-turnout-request-id header of the answer)",
                                      param="request_id")
        self._enqueue((request_id, float(score), time.time()))

    # -- reading --------------------------------------------------------------
    def get(self, request_id: str) -> LogEntry | None:
        """The logged request ``request_id`` (with its score), or None; what was recorded before is flushed first.

        Blocking (a flush and a read): call it from async code through the
        gateway's offload helper.
        """
        self.flush()
        sql = _SELECT_ENTRIES + " WHERE r.id = ?"
        rows = list(self._read(sql, [request_id]))
        return self._entry(rows[0]) if rows else None

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
        where, params = [], []
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
            _SELECT_ENTRIES
            + (" WHERE " + " AND ".join(where) if where else "")
            + (" ORDER BY r.seq ASC" if after_seq is not None else " ORDER BY r.ts DESC, r.seq DESC")
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._entry(row) for row in self._read(sql, params)]

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
    def _entry(row: tuple[Any, ...]) -> LogEntry:
        seq, *values, score = row
        data = dict(zip(_COLUMNS, values))
        data["candidates"] = json.loads(data["candidates"] or "[]")
        data["fallbacks_tried"] = json.loads(data["fallbacks_tried"] or "[]")
        data["budget"] = json.loads(data["budget"]) if data["budget"] else None
        return LogEntry(**data, score=score, seq=seq)

    # -- export ---------------------------------------------------------------
    def export_canonical(self, path: str | Path, *, include_unscored: bool = False) -> ExportSummary:
        """Write logged traffic as a canonical routing table (``.jsonl``, ``.jsonl.gz`` or ``.parquet``).

        One row per (prompt, model): ``prompt_id`` (a hash of the prompt
        text), ``prompt``, ``model``, ``score`` (the feedback score),
        ``cost_usd``, ``input_tokens``, ``output_tokens``, ``latency_s``,
        ``response``. Only successful requests (status ``ok``) are exported.
        A prompt sent to the same model several times becomes one row: scores,
        costs, tokens and latencies are averaged, the latest response is kept.

        ``score`` is required by the canonical format, so requests without
        feedback are skipped and counted. ``include_unscored=True`` writes them
        too, with ``score`` null: that file is a *labelling queue* (score it,
        e.g. with a judge, then load it), not yet a valid routing table.
        Queued records are flushed first.
        """
        self.flush()
        out = Path(path)
        name = out.name.lower()
        if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz") or name.endswith(".parquet")):
            raise DataError("unknown output format", file=str(out), fix="name the file .jsonl, .jsonl.gz or .parquet")
        rows = self._read(
            "SELECT r.status, r.prompt, r.model, f.score, r.cost_usd, r.prompt_tokens, r.completion_tokens, "
            "r.latency_s, r.response_text FROM requests r LEFT JOIN feedback f ON f.request_id = r.id ORDER BY r.seq",
            [],
        )
        groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        skipped_unscored = skipped_errors = 0
        for status, prompt, model, score, *rest in rows:
            if status != "ok" or prompt is None or not model or model == "-":
                skipped_errors += 1
                continue
            if score is None and not include_unscored:
                skipped_unscored += 1
                continue
            groups.setdefault((prompt, model), []).append((score, *rest))
        records = [_merge(prompt, model, items) for (prompt, model), items in groups.items()]
        merged = sum(len(items) - 1 for items in groups.values())
        _write_table(out, records)
        return ExportSummary(
            path=str(out), rows=len(records), prompts=len({r["prompt_id"] for r in records}),
            skipped_unscored=skipped_unscored, skipped_errors=skipped_errors, merged_repeats=merged,
        )

    def __repr__(self) -> str:
        return f"RequestLog({str(self.path)!r})"


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _merge(prompt: str, model: str, items: list[tuple[Any, ...]]) -> dict[str, Any]:
    scores, costs, tin, tout, lat, responses = zip(*items)
    mean_in, mean_out = _mean(list(tin)), _mean(list(tout))
    return {
        "prompt_id": prompt_id(prompt),
        "prompt": prompt,
        "model": model,
        "score": _mean(list(scores)),
        "cost_usd": _mean(list(costs)),
        "input_tokens": None if mean_in is None else round(mean_in),
        "output_tokens": None if mean_out is None else round(mean_out),
        "latency_s": _mean(list(lat)),
        "response": next((r for r in reversed(responses) if r is not None), None),
    }


def _write_table(out: Path, records: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([
            ("prompt_id", pa.string()), ("prompt", pa.string()), ("model", pa.string()), ("score", pa.float64()),
            ("cost_usd", pa.float64()), ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
            ("latency_s", pa.float64()), ("response", pa.string()),
        ])
        pq.write_table(pa.Table.from_pylist(records, schema=schema), out)
        return
    if out.name.lower().endswith(".gz"):
        import gzip

        with gzip.open(out, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return
    with out.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


__all__ = ["DEFAULT_REQUEST_LOG", "SCHEMA_VERSION", "ExportSummary", "LogEntry", "RequestLog", "prompt_id"]
