"""The request log's schema: the entry type, the SQLite tables, their migrations and row conversion.

Schema (``SCHEMA_VERSION``)::

    requests(seq INTEGER PRIMARY KEY, id TEXT UNIQUE, ts, key_name, route, model, status,
             error_kind, candidates JSON, prompt, response_text, prompt_tokens,
             completion_tokens, cost_usd, latency_s, ttft_s, decision_ms,
             fallbacks_tried JSON, http_status, lam, budget JSON,
             propensity, decision JSON, answered_by)
    calls(request_id, idx, model, backend, endpoint, role, step, status, error_kind, error,
          accepted, prompt_tokens, completion_tokens, cost_usd, latency_s, ttft_s, confidence)
    feedback(request_id TEXT PRIMARY KEY, score REAL, ts REAL, comment)
    schema_version(version INTEGER)

``lam`` is the λ the decision used and ``budget`` the route budget's state at
that moment (null without one). ``propensity`` is the probability the policy
gave the model it chose (1.0 for a deterministic decision), ``decision`` the
whole decision (plan, matched rule, signals, structured reasons) and
``answered_by`` what produced the answer (``model``, ``cache``, a guard).
``calls`` holds one child row per model call of the request, in order: every
try of every model of its plan (a retry, a fallback, a cascade's rejected step,
a fan-out member), with its endpoint, role, status, tokens, cost and latency;
the request's ``cost_usd`` is their sum. ``http_status`` is the status the
client received (as the server reports it): ``200`` also for a stream that
failed or was left after its first chunk (the failure is in ``status`` and
``error_kind``), null for a request whose client hung up before anything was
sent (``status`` ``cancelled``) and for a gateway used without the server.
Files of versions 1 and 2 are migrated in place when opened.

``seq`` is the insertion order (``--follow`` tails by it; ``ts``, the request
start, is not monotonic in write order). Feedback is its own table so that it
may arrive before its request is written and a re-recorded request keeps it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REQUEST_LOG = "turnout-requests.sqlite"
SCHEMA_VERSION = 3

COLUMNS = (
    "id",
    "ts",
    "key_name",
    "route",
    "model",
    "status",
    "error_kind",
    "candidates",
    "prompt",
    "response_text",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "ttft_s",
    "decision_ms",
    "fallbacks_tried",
    "http_status",
    "lam",
    "budget",
    "propensity",
    "decision",
    "answered_by",
)
#: the columns of one model call of a request (its child rows)
CALL_COLUMNS = (
    "model",
    "backend",
    "endpoint",
    "role",
    "step",
    "status",
    "error_kind",
    "error",
    "accepted",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "ttft_s",
    "confidence",
)
#: the rows read back as LogEntry objects (sequence number, the columns, the latest feedback score); filters follow
SELECT_ENTRIES = (
    f"SELECT r.seq, {', '.join('r.' + c for c in COLUMNS)}, f.score, f.comment FROM requests r "
    "LEFT JOIN feedback f ON f.request_id = r.id"
)
CALLS_TABLE = (
    "CREATE TABLE IF NOT EXISTS calls (request_id TEXT NOT NULL, idx INTEGER NOT NULL, model TEXT, backend TEXT, "
    "endpoint TEXT, role TEXT, step INTEGER, status TEXT, error_kind TEXT, error TEXT, accepted INTEGER, "
    "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, latency_s REAL, ttft_s REAL, confidence REAL, "
    "PRIMARY KEY (request_id, idx))"
)
#: version -> the statements that bring a file of that version to the next one
MIGRATIONS = {
    1: ("ALTER TABLE requests ADD COLUMN lam REAL", "ALTER TABLE requests ADD COLUMN budget TEXT"),
    2: (
        "ALTER TABLE requests ADD COLUMN propensity REAL",
        "ALTER TABLE requests ADD COLUMN decision TEXT",
        "ALTER TABLE requests ADD COLUMN answered_by TEXT",
        "ALTER TABLE feedback ADD COLUMN comment TEXT",
        CALLS_TABLE,
    ),
}
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, key_name TEXT, route TEXT, model TEXT, status TEXT NOT NULL,
    error_kind TEXT, candidates TEXT, prompt TEXT, response_text TEXT, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost_usd REAL, latency_s REAL, ttft_s REAL, decision_ms REAL,
    fallbacks_tried TEXT, http_status INTEGER, lam REAL, budget TEXT, propensity REAL, decision TEXT,
    answered_by TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_route_model ON requests (route, model);
CREATE INDEX IF NOT EXISTS requests_key ON requests (key_name);
CREATE TABLE IF NOT EXISTS feedback (request_id TEXT PRIMARY KEY, score REAL NOT NULL, ts REAL NOT NULL,
                                     comment TEXT);
"""
    + CALLS_TABLE
    + ";"
)
# re-recording an id (e.g. a request logged again with its final status) updates it in place
UPSERT = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}"
)
#: a re-recorded request replaces its calls
DELETE_CALLS = "DELETE FROM calls WHERE request_id = ?"
INSERT_CALL = (
    f"INSERT INTO calls (request_id, idx, {', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * (len(CALL_COLUMNS) + 2))})"
)
SELECT_CALLS = f"SELECT request_id, {', '.join(CALL_COLUMNS)} FROM calls WHERE request_id IN ({{}}) ORDER BY request_id, idx"
FEEDBACK = (
    "INSERT INTO feedback (request_id, score, ts, comment) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(request_id) DO UPDATE SET score = excluded.score, ts = excluded.ts, comment = excluded.comment"
)


@dataclass(slots=True)
class LogEntry:
    """One request as logged. ``id`` and ``ts`` (unix seconds) default to a fresh uuid and now.

    ``status`` is ``ok`` or ``error`` (or another short word); ``candidates`` the
    policy's candidates as dicts; ``fallbacks_tried`` the models tried before the
    one that answered. ``score`` and ``comment`` are filled in by :meth:`RequestLog.query`
    from feedback and ignored by :meth:`RequestLog.record`. Do not mutate an entry
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
    #: the probability the policy gave the chosen action (1.0 deterministic); off-policy evaluation needs it
    propensity: float | None = None
    #: the decision as JSON: plan, rule, signals, structured reasons
    decision: dict[str, Any] | None = None
    #: what produced the answer: "model", "cache", or the stage that answered (a guard's canned reply)
    answered_by: str | None = None
    #: every model call of the request (child rows): model, endpoint, role, status, tokens, cost, latency
    calls: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None
    comment: str | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (JSON-ready: candidates are already dicts)."""
        return dataclasses.asdict(self)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def row(e: LogEntry) -> tuple[Any, ...]:
    return (
        e.id,
        e.ts,
        e.key_name,
        e.route,
        e.model,
        e.status,
        e.error_kind,
        json.dumps([_jsonable(c) for c in e.candidates or []]),
        e.prompt,
        e.response_text,
        e.prompt_tokens,
        e.completion_tokens,
        e.cost_usd,
        e.latency_s,
        e.ttft_s,
        e.decision_ms,
        json.dumps(e.fallbacks_tried if e.fallbacks_tried is not None else []),
        e.http_status,
        e.lam,
        None if e.budget is None else json.dumps(e.budget),
        e.propensity,
        None if e.decision is None else json.dumps(e.decision),
        e.answered_by,
    )


def call_rows(e: LogEntry) -> list[tuple[Any, ...]]:
    """The child rows of ``e``'s model calls (values coerced to what their columns store)."""
    rows = []
    for i, c in enumerate(e.calls or []):
        values = [c.get(k) if isinstance(c, dict) else None for k in CALL_COLUMNS]
        values = [v if v is None or isinstance(v, (int, float, str)) else str(v) for v in values]
        rows.append((e.id, i, *values))
    return rows


#: what an entry's own contents can raise on the way into SQLite (a type it cannot bind, a NOT NULL, JSON)
DATA_ERRORS = (TypeError, ValueError, sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError)
#: the columns holding JSON text and those holding text, for :func:`_storable_row` (the others are numbers)
_JSON_COLUMNS = frozenset({"candidates", "fallbacks_tried", "budget", "decision"})
_TEXT_COLUMNS = frozenset({"id", "key_name", "route", "model", "status", "error_kind", "prompt", "response_text", "answered_by"})


def storable_row(e: LogEntry) -> tuple[Any, ...]:
    """``row(e)`` with every field coerced to what its column stores: for an entry ``row`` could not write.

    JSON columns serialise whatever they hold (``str()`` of what JSON cannot
    express), text columns take ``str()`` of a non-string, numeric columns
    keep numbers and drop anything else to null.
    """
    out: list[Any] = []
    for column in COLUMNS:
        value = getattr(e, column)
        if column in _JSON_COLUMNS:
            empty = None if column in ("budget", "decision") else "[]"
            out.append(empty if value is None else json.dumps(value, default=json_default))
        elif column in _TEXT_COLUMNS:
            out.append(value if value is None or isinstance(value, str) else str(value))
        else:
            out.append(value if isinstance(value, (int, float)) else None)
    return tuple(out)


def json_default(value: Any) -> Any:
    out = _jsonable(value)  # a dataclass as a dict; anything else JSON cannot express as its str()
    return str(value) if out is value else out


def prompt_id(prompt: str) -> str:
    """A stable id for a prompt text, so repeats of one prompt group together in exports."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


__all__ = ["CALL_COLUMNS", "COLUMNS", "DEFAULT_REQUEST_LOG", "SCHEMA_VERSION", "LogEntry", "prompt_id"]
