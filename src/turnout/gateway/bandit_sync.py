"""Bandit learning shared by gateway replicas: every replica's bandit converges on the same statistics, exactly.

A bandit's state is sums (``A = reg·I + Σ z zᵀ``, ``b = Σ z·y``, counts; :mod:`turnout.routing.bandit`), so
replicas can pool their learning by adding each other's increments. One :class:`BanditSync` per route and
replica keeps the cluster's total in one versioned blob of the shared state
(:mod:`turnout.state.shared_stats`) and, every ``bandit.share_every_s``, exchanges with it:

1. ``owed`` += the bandit's :meth:`~turnout.routing.bandit.BanditRouter.export_delta` (what this replica
   learned since the last exchange, and anything a failed exchange could not send);
2. read the total ``T`` and its version (absent: ``seen``, what this replica last agreed with the store);
3. write ``T + owed`` if the version did not move (compare-and-set), else read again (a few times);
4. merge ``T − seen`` into the local bandit (exactly the other replicas' increments since the last
   agreement), and ``seen`` becomes what was written.

**Invariant:** local statistics = ``seen`` + ``owed`` + the bandit's pending delta, at every ``await``.
Feedback learned on the event loop while an exchange awaits lands in the pending delta (the export happened
before the first ``await``) and goes out with the next one. So nothing is lost and nothing counted twice:

* a store that fails (:class:`~turnout.errors.StateError`) keeps ``owed`` for the next exchange; a warning is
  logged once per outage;
* a write that *raises* (a timeout) may or may not have been applied. The blob names its last writers with
  a sequence number each, so a later read tells whether that write landed (its increments are then
  confirmed, not sent again) or not (they are sent again). Two such writes can never both land: each
  expected a version that the other's landing moves past;
* the first exchange of a replica that joins late (or restarts) with the store already written replaces
  its start-up statistics (state file, artifact or cold) with the cluster's: it picks up everything. An
  empty store is seeded with the first replica's statistics.

The key names the route and a fingerprint of what makes two bandits' statistics comparable (arms, context
size, projection, its scale and ``reg``): replicas built from one config or artifact share it (a cold
bandit's random projection is drawn from ``router.params.seed``, 0 by default, the same stream in every
process). A blob of another shape under the key is logged once and sharing stops for that route; the
bandit goes on learning alone.

Example::

    sync = BanditSync(route, shared_stats_for(state), route="learn")
    merged = await sync.sync()      # True when other replicas' learning was added to this bandit
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from turnout.errors import DataError, StateError
from turnout.state.shared_stats import SharedStats

log = logging.getLogger(__name__)

#: the statistics, in the blob's order
FIELDS = ("A", "bq", "bc", "n", "nc")
#: compare-and-set tries of one exchange before it gives up until the next period (another replica kept winning)
ATTEMPTS = 5
#: writers (replica starts) the blob remembers; a write is recognised as long as its writer is among them
MAX_WRITERS = 128

_MAGIC = b"TBANDIT1"
_HEAD = struct.Struct("<8sIII")  # magic, arms, features (d + 1), writers
_WRITER = struct.Struct("<16sQ")  # writer id, its last sequence number in the blob

Stats = dict[str, np.ndarray]


class Learner(Protocol):
    """What the sync needs of a bandit: a :class:`~turnout.gateway.bandit_route.BanditRoute` or a bare BanditRouter."""

    def get_state(self) -> dict[str, Any]: ...

    def export_delta(self) -> dict[str, np.ndarray]: ...

    def merge_delta(self, delta: dict[str, np.ndarray]) -> None: ...


def fingerprint(route: str, state: dict[str, Any]) -> str:
    """A hash of what makes bandit statistics comparable (``state`` is :meth:`BanditRouter.get_state`'s).

    Arms (in order), context size, projection kind, the projection matrix, its centre and scale, and ``reg``
    (the prior every arm's ``A`` starts from). Exploration settings (``alpha``, ``max_explore``) are left
    out: they change decisions, not what the statistics mean.
    """
    p = state["params"]
    P = np.ascontiguousarray(state["P"], dtype="<f8")
    h = hashlib.sha256()
    for part in (
        route,
        "\x1f".join(state["models"]),
        str(P.shape),
        str(p["projection"]),
        repr(float(p["reg"])),
        repr(float(p["cluster_temperature"])),
        repr(float(state["scale"])),
    ):
        h.update(part.encode("utf-8") + b"\x00")
    h.update(P.tobytes())
    h.update(np.ascontiguousarray(state["mu"], dtype="<f8").tobytes())
    return h.hexdigest()


def shared_key(route: str, state: dict[str, Any]) -> str:
    """The key of route ``route``'s statistics in the shared state: ``bandit:<route>:<fingerprint>``."""
    return f"bandit:{route}:{fingerprint(route, state)[:16]}"


@dataclass(frozen=True)
class Snapshot:
    """A decoded blob: the statistics every replica agreed on, and the last sequence number of each writer."""

    stats: Stats
    writers: dict[bytes, int]


def _shapes(K: int, d1: int) -> dict[str, tuple[int, ...]]:
    return {"A": (K, d1, d1), "bq": (K, d1), "bc": (K, d1), "n": (K,), "nc": (K,)}


def encode(stats: Stats, writers: dict[bytes, int]) -> bytes:
    """The blob of ``stats`` (the five arrays as little-endian float64, in :data:`FIELDS` order) and ``writers``."""
    K, d1 = stats["bq"].shape
    for f, shape in _shapes(K, d1).items():
        if stats[f].shape != shape:
            raise ValueError(f"bandit statistics: {f} has shape {stats[f].shape}, expected {shape}")
    head = _HEAD.pack(_MAGIC, K, d1, len(writers))
    ids = b"".join(_WRITER.pack(w, s) for w, s in writers.items())
    return head + ids + b"".join(np.ascontiguousarray(stats[f], dtype="<f8").tobytes() for f in FIELDS)


def decode(blob: bytes, K: int, d1: int, *, key: str) -> Snapshot:
    """The statistics in ``blob``, checked against this bandit's ``K`` arms and ``d1`` features.

    Raises :class:`~turnout.errors.DataError` naming the key for a blob that is not a bandit's, or another
    shape's.
    """
    fix = f"delete the key {key!r} under the state's prefix so the replicas write it afresh, or set bandit.share: off"
    if len(blob) < _HEAD.size or blob[:8] != _MAGIC:
        raise DataError(f"the shared statistics {key!r} are not a bandit's (another program wrote the key?)", fix=fix)
    _, k, d, w = _HEAD.unpack_from(blob)
    if (k, d) != (K, d1):
        raise DataError(f"the shared statistics {key!r} are for {k} arms x {d} features, this bandit has {K} x {d1}", fix=fix)
    shapes = _shapes(K, d1)
    size = _HEAD.size + w * _WRITER.size + 8 * sum(int(np.prod(s)) for s in shapes.values())
    if len(blob) != size:
        raise DataError(f"the shared statistics {key!r} are {len(blob)} bytes, expected {size} (truncated?)", fix=fix)
    writers: dict[bytes, int] = {}
    at = _HEAD.size
    for _ in range(w):
        wid, seq = _WRITER.unpack_from(blob, at)
        writers[wid] = seq
        at += _WRITER.size
    stats: Stats = {}
    for f, shape in shapes.items():
        n = int(np.prod(shape))
        stats[f] = np.frombuffer(blob, dtype="<f8", count=n, offset=at).astype(np.float64).reshape(shape)
        at += 8 * n
    return Snapshot(stats, writers)


def _add(a: Stats, b: Stats) -> Stats:
    return {f: a[f] + b[f] for f in FIELDS}


def _sub(a: Stats, b: Stats) -> Stats:
    return {f: a[f] - b[f] for f in FIELDS}


def _is_zero(a: Stats) -> bool:
    return not any(np.any(a[f]) for f in FIELDS)


@dataclass(frozen=True)
class _Attempt:
    """A write whose outcome is not known yet: its sequence number and the increments of ours it carried."""

    seq: int
    carried: Stats


class BanditSync:
    """Keeps one route's bandit in step with the other replicas' through a :class:`SharedStats` (see the module).

    ``learner``: the route (its :meth:`merge_delta` marks the state file dirty) or a bare BanditRouter.
    ``route`` names the key. Built when the gateway starts: the statistics at that moment are this
    replica's first ``seen``. :meth:`sync` is a coroutine on the event loop; concurrent calls take turns.
    """

    def __init__(self, learner: Learner, stats: SharedStats, *, route: str) -> None:
        self.learner = learner
        self.stats = stats
        self.route = route
        state = learner.get_state()
        self.key = shared_key(route, state)
        self._K, self._d1 = int(state["bq"].shape[0]), int(state["bq"].shape[1])
        # local = seen + owed + pending: whatever was learned before this point is owed, the rest agreed on
        self._owed: Stats = {f: np.asarray(v, dtype=np.float64) for f, v in learner.export_delta().items()}
        self._seen: Stats = {f: np.asarray(state[f], dtype=np.float64) - self._owed[f] for f in FIELDS}
        #: names this replica's writes in the blob (a new one per start: sequence numbers restart)
        self._writer = os.urandom(16)
        self._seq = 0
        self._attempts: list[_Attempt] = []
        #: the total the current exchange read last (where it started, until it reads one)
        self._read: Stats = self._seen
        self._lock = asyncio.Lock()
        self._failing = False
        self._stopped: str | None = None
        #: exchanges completed, and failed (the store did not answer)
        self.synced = 0
        self.failures = 0

    @property
    def stopped(self) -> str | None:
        """Why sharing stopped for this route (a blob of another shape under its key), or None while it shares."""
        return self._stopped

    async def sync(self) -> bool:
        """One exchange with the store; True when the other replicas' increments were merged into the bandit.

        Never raises for the store's failures (logged, retried at the next call); a blob of another shape
        stops sharing (logged once). Cancelling it loses nothing: the state is consistent at every await.
        """
        async with self._lock:
            if self._stopped is not None:
                return False
            # before any await: what feedback adds from here on stays in the bandit's pending delta
            self._owed = _add(self._owed, self.learner.export_delta())
            start = self._read = self._seen
            confirmed: Stats = {f: np.zeros_like(v) for f, v in self._owed.items()}
            try:
                await self._exchange(confirmed)
            except StateError as exc:
                self.failures += 1
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "route %s: could not share the bandit's learning with the other replicas: %s; it keeps "
                        "learning here and sends what it learned once the store answers",
                        self.route,
                        exc,
                    )
            except DataError as exc:
                self._stopped = str(exc)
                log.error("route %s: stopped sharing the bandit's learning: %s; it goes on learning alone", self.route, exc)
            else:
                if self._failing:
                    self._failing = False
                    log.warning("route %s: sharing the bandit's learning again (%s)", self.route, self.key)
            finally:
                # the others' increments since the last agreement: the last total read, less where we stood and
                # less ours that it holds (a write that raised but had landed); exactly 0 when nobody else wrote
                others = _sub(_sub(self._read, start), confirmed)
                merged = not _is_zero(others)
                if merged:
                    self.learner.merge_delta(others)
            return merged

    async def _exchange(self, confirmed: Stats) -> None:
        for _ in range(ATTEMPTS):
            blob, version = await self.stats.read(self.key)
            writers: dict[bytes, int] = {}
            if blob is not None:
                snap = decode(blob, self._K, self._d1, key=self.key)
                mine = snap.writers.get(self._writer)
                landed = next((a for a in self._attempts if a.seq == mine), None)
                if landed is not None:  # a write that raised had landed: its increments are in, do not send them again
                    for f in FIELDS:
                        confirmed[f] += landed.carried[f]
                    self._owed = _sub(self._owed, landed.carried)
                    self._attempts.clear()  # the version moved past every other outstanding write's
                self._seen = self._read = snap.stats
                writers = snap.writers
                if _is_zero(self._owed):
                    self.synced += 1
                    return  # nothing of ours to add: reading was the whole exchange
            self._seq += 1
            written = _add(self._seen, self._owed)
            writers = {w: s for w, s in writers.items() if w != self._writer}
            writers[self._writer] = self._seq  # latest last: the oldest writers are forgotten first
            while len(writers) > MAX_WRITERS:
                del writers[next(iter(writers))]
            # recorded before the await: if the swap raises, a later read tells whether it landed
            self._attempts.append(_Attempt(self._seq, self._owed))
            if await self.stats.swap(self.key, encode(written, writers), version) is None:
                self._attempts.pop()  # another replica wrote first: this write did not happen; read again
                continue
            self._seen, self._owed = written, {f: np.zeros_like(v) for f, v in self._owed.items()}
            self._attempts.clear()  # the version moved past every earlier write's: none of them can land now
            self.synced += 1
            return
        log.info("route %s: the shared bandit statistics kept changing under %d tries; next period", self.route, ATTEMPTS)


__all__ = ["ATTEMPTS", "FIELDS", "BanditSync", "Learner", "Snapshot", "decode", "encode", "fingerprint", "shared_key"]
