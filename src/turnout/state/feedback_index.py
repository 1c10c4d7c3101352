"""The feedback index: which key made a logged request, on which route, decided how; shared by replicas.

Each gateway replica writes its request log to its own SQLite file, so ``POST /v1/feedback`` sent to a
replica that did not serve the request would find nothing there. When the state is shared (Redis), the
ledger also records every finished request here, keyed by its request id: the key's name (feedback
authenticates and scores only the key's own requests), the route, the model that answered, how it
ended, its cost, the decision's own reasons (the deciding router's, with their data: a bandit's
propensity and arm), ``context`` (what a learning route needs to learn from a score on another replica:
the features of its decision, as the route's ``feedback_context(request_id)`` gives them) and the
replica that logged it. The fields carry the names of the request log's
:class:`~turnout.gateway.logschema.LogEntry`, so a feedback path written for a logged entry reads an
indexed one the same way (``prompt`` is None: prompts stay in the replica's own log). The feedback path
looks here first and falls back to the local request log (:meth:`FeedbackIndex.get`). A score stored
with :meth:`FeedbackIndex.set_score` is visible to every replica, the logging one included.

**Write-behind.** :meth:`FeedbackIndex.record` never awaits: entries are queued and written together
(one pipelined round trip) every ``linger_s`` (20 ms by default) by a background task, so a request
pays no round trip for its index entry. The cost of that: feedback that arrives at another replica
within ``linger_s`` of the answer may not find it yet (the client got the answer a moment *before* the
entry was queued: retry, or send feedback a moment later). A Redis failure loses the queued entries of
that flush (logged and counted in ``dropped``); the local request log keeps every row regardless.

Entries expire after ``ttl_s`` (7 days by default): feedback is meant for recent answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from turnout.errors import StateError

if TYPE_CHECKING:
    from turnout.state.redis import RedisCounters

log = logging.getLogger(__name__)

#: seconds an entry stays findable
TTL_S = 7 * 24 * 3600.0
#: seconds the write-behind gathers entries into one round trip
LINGER_S = 0.02


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """What every replica can learn about a finished request from its id (see the module docstring)."""

    id: str
    key_name: str | None
    route: str
    model: str
    status: str
    answered_by: str = "model"
    cost_usd: float = 0.0
    #: ``{"router", "propensity", "reasons": [{"kind", "data"}]}``: the deciding router's own reasons only
    decision: dict[str, Any] | None = None
    #: what a learning route needs to learn from this request's score (JSON-able; None when nothing)
    context: Any = None
    #: the replica whose request log holds the full row
    replica: str = ""
    ts: float = 0.0
    #: the latest feedback score sent to any replica
    score: float | None = None
    #: never stored here (prompts stay in the replica's own log): present so that code reading a log entry's
    #: ``prompt`` reads None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, data: str | bytes) -> LoggedRequest:
        d = json.loads(data)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@runtime_checkable
class FeedbackIndex(Protocol):
    """Request id -> :class:`LoggedRequest`, shared by replicas.

    Example (the feedback path of any replica)::

        found = await index.get(request_id)          # None: not here (try the local request log)
        if found is not None and found.key_name == key.name:
            await index.set_score(request_id, 0.9)
    """

    in_process: bool

    def record(self, entry: LoggedRequest) -> None:
        """Queue ``entry`` (never awaits; written within ``linger_s``)."""
        ...

    async def get(self, request_id: str) -> LoggedRequest | None:
        """The entry of ``request_id`` (its latest score included), or None."""
        ...

    async def set_score(self, request_id: str, score: float) -> bool:
        """Store ``score`` on the entry; False when there is no such entry."""
        ...

    async def flush(self) -> None:
        """Write what is queued now."""
        ...

    async def aclose(self) -> None:
        """Flush and stop the writer. Idempotent."""
        ...


class InMemoryFeedbackIndex:
    """:class:`FeedbackIndex` in this process (replicas in one process; tests): at most ``max_entries``, oldest
    dropped first."""

    in_process = True

    def __init__(self, *, max_entries: int = 100_000, replica: str = "") -> None:
        self.max_entries = max_entries
        self.replica = replica
        self._entries: OrderedDict[str, LoggedRequest] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, entry: LoggedRequest) -> None:
        if not entry.replica and self.replica:
            entry = replace(entry, replica=self.replica)
        with self._lock:
            self._entries[entry.id] = entry
            self._entries.move_to_end(entry.id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def get(self, request_id: str) -> LoggedRequest | None:
        with self._lock:
            return self._entries.get(request_id)

    async def set_score(self, request_id: str, score: float) -> bool:
        with self._lock:
            e = self._entries.get(request_id)
            if e is None:
                return False
            self._entries[request_id] = replace(e, score=float(score))
            return True

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# KEYS: the entry. ARGV: score. Rewrites the entry's score, keeping its expiry; 0 when absent.
_SCORE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local e = cjson.decode(v)
e['score'] = tonumber(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(e), 'KEEPTTL')
return 1
"""


class RedisFeedbackIndex:
    """:class:`FeedbackIndex` in Redis (``<prefix>req:<id>``, JSON, ``EX ttl_s``), written behind in batches."""

    in_process = False

    def __init__(
        self,
        store: RedisCounters,
        *,
        ttl_s: float = TTL_S,
        linger_s: float = LINGER_S,
        max_queue: int = 10_000,
        replica: str = "",
    ) -> None:
        self.store = store
        #: written into every entry recorded without one: the replica whose request log has the full row
        self.replica = replica
        self.ttl_s = ttl_s
        self.linger_s = linger_s
        self.max_queue = max_queue
        #: entries lost (queue full, or a failed write), since start
        self.dropped = 0
        self._queue: list[LoggedRequest] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._score = store.client.register_script(_SCORE)

    def _key(self, request_id: str) -> str:
        return f"{self.store.prefix}req:{request_id}"

    def record(self, entry: LoggedRequest) -> None:
        if self._closed:
            return
        if len(self._queue) >= self.max_queue:  # Redis is slower than the traffic: the local log still has it
            self.dropped += 1
            return
        if not entry.replica and self.replica:
            entry = replace(entry, replica=self.replica)
        self._queue.append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._linger())

    async def _linger(self) -> None:
        await asyncio.sleep(self.linger_s)
        await self.flush()

    async def flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        ex = max(1, int(self.ttl_s))
        try:
            async with self.store.client.pipeline(transaction=False) as pipe:
                for e in batch:
                    pipe.set(self._key(e.id), e.to_json(), ex=ex)
                await pipe.execute()
        except self.store.errors as exc:
            self.dropped += len(batch)
            log.warning(
                "feedback index: %d entries not written (feedback for them works only on the replica that served them): %s",
                len(batch),
                self.store.failure("write the feedback index", exc),
            )

    async def get(self, request_id: str) -> LoggedRequest | None:
        try:
            data = await self.store.client.get(self._key(request_id))
        except self.store.errors as exc:
            raise self.store.failure(f"look up request {request_id!r}", exc) from exc
        return None if data is None else LoggedRequest.from_json(data)

    async def set_score(self, request_id: str, score: float) -> bool:
        try:
            return bool(int(await self._score(keys=[self._key(request_id)], args=[repr(float(score))])))
        except self.store.errors as exc:
            raise self.store.failure(f"store the score of request {request_id!r}", exc) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def __repr__(self) -> str:
        return f"RedisFeedbackIndex({self.store.shown_url!r}, ttl_s={self.ttl_s:g})"


async def find_logged(request_id: str, index: FeedbackIndex | None, local: Callable[[str], Awaitable[Any]]) -> Any:
    """The logged request ``request_id`` wherever it was logged: the feedback path's one lookup.

    The index is asked first (one round trip); an entry logged by *another* replica is returned as is (a
    :class:`LoggedRequest`, read like a log entry). Otherwise, or without an index, or when the index fails
    (logged; feedback then works for this replica's own requests), ``local`` (this replica's request log:
    its full row, prompt included) answers. None when neither knows the id.
    """
    if index is not None:
        try:
            found = await index.get(request_id)
        except StateError as exc:
            log.warning("feedback index unavailable, looking %s up in this replica's log only: %s", request_id, exc)
            found = None
        if found is not None and found.replica != getattr(index, "replica", ""):
            return found
    return await local(request_id)


def feedback_index_for(store: object, *, replica: str = "") -> FeedbackIndex | None:
    """A shared feedback index when ``store`` is shared (Redis); None in one process (its own log answers)."""
    from turnout.state.redis import RedisCounters

    if isinstance(store, RedisCounters):
        return RedisFeedbackIndex(store, replica=replica)
    return None


__all__ = [
    "LINGER_S",
    "TTL_S",
    "FeedbackIndex",
    "InMemoryFeedbackIndex",
    "LoggedRequest",
    "RedisFeedbackIndex",
    "feedback_index_for",
    "find_logged",
]
