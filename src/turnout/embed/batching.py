"""Micro-batching for the serving path: many concurrent ``await embed(text)`` calls, one model call per batch.

A transformer embedder spends most of a lone short prompt's time on fixed
per-call work (session dispatch, thread hand-off, small matrix shapes); a batch
of 32 short prompts costs far less than 32 calls. :class:`BatchingEmbedder`
lives on the gateway's event loop, gathers the texts of concurrent requests and
hands each batch to ONE ``inner.embed(batch)`` call on an executor.

When a batch goes out (the whole policy):

* nothing in flight: at the next turn of the event loop (``call_soon``), so a
  lone request waits for no window, while the callers that arrived in the same
  loop turn (a burst) still share its batch;
* ``max_batch`` texts pending: at once, if a batch slot is free;
* otherwise, when a slot is free: at most ``max_wait_ms`` after the first
  pending text, or as soon as a running batch returns, whichever comes first.

At most ``max_in_flight`` batches run at a time; texts that arrive meanwhile
queue and leave together when a batch returns. Under load the batches therefore
grow by themselves (no batch is ever held back for company while a slot is
idle, except by the ``max_wait_ms`` window once a batch is already running).

Padding: a transformer pads a batch to its longest text. ``MiniLMEmbedder``
sorts each ``embed`` call by length and splits it where padding would cost
more than another call (``minilm.CALL_COST_CHARS``); ``minilm-int8`` runs each
text alone (its dynamic int8 scales would otherwise mix the texts of a batch).

What it buys, measured (``bench/batching.py``, 64 callers, short real prompts,
two busy cores): the per-call overhead of MiniLM is small next to its compute,
so batching saves little CPU per embedding there (fp32 4.4-5.1 ms either way,
int8 ~2.1 ms), but it halves the static embedder's (0.16 -> 0.06 ms) and keeps
both pool threads busy with few hops (int8: 905 embeddings/s, p99 90 ms, against
756/s, p99 166 ms alone). Concurrency 1 costs ~0.02-0.1 ms more than alone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from turnout.embed.base import Embedder
from turnout.embed.cache import MemoryCachedEmbedder
from turnout.errors import TurnoutError

#: ``run(fn, *args)`` returning an awaitable of ``fn(*args)``: the gateway's ``Offloader.run``
Runner: TypeAlias = Callable[..., Awaitable[Any]]


@dataclass
class BatchingStats:
    """Counters of a :class:`BatchingEmbedder` (for metrics and benches)."""

    #: texts answered from the memory cache, without a batch
    hits: int = 0
    #: texts sent to the model, and the batches they went in
    texts: int = 0
    batches: int = 0
    #: batches that raised, and callers that gave up (cancelled) before their row came back
    failed_batches: int = 0
    cancelled: int = 0
    #: batch size -> how many batches had that size
    sizes: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        """Texts per batch on average (0 before the first batch)."""
        return self.texts / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Waiting:
    text: str
    future: asyncio.Future[np.ndarray]


class BatchingEmbedder:
    """Gathers concurrent ``await embed(text)`` calls into batches of one ``inner.embed`` call each.

    ``inner`` is any :class:`~turnout.embed.base.Embedder`; when it is a
    :class:`~turnout.embed.cache.MemoryCachedEmbedder`, texts it already holds
    are answered on the spot, without a batch (and the batch call fills it).
    ``run`` is where a batch runs: a ``concurrent.futures.Executor`` or an
    async ``run(fn, *args)`` callable (the gateway's ``Offloader.run``). Each
    caller gets its own row, read-only, equal to what ``inner.embed([text])[0]``
    gives (up to float rounding: the same model on a padded batch).

    ``max_in_flight`` should match the executor's threads (the gateway's offload
    pool has 2): with one batch at a time, int8 MiniLM served 466 embeddings/s at
    concurrency 64 on two cores, with two 905/s (``bench/batching.py``).

    Must be used from one event loop (the one of its first call). A caller that
    is cancelled leaves its batch running for the others; an exception raised by
    a batch reaches every caller of that batch, and the next batch is tried anew.

    Example::

        off = Offloader(max_workers=2)
        emb = BatchingEmbedder(MemoryCachedEmbedder(create_embedder("minilm", cache=False, threads=1)),
                               off.run, max_batch=32, max_wait_ms=2.0)
        vecs = await asyncio.gather(*(emb.embed(p) for p in prompts))   # a few batches, not len(prompts) calls
        emb.stats.mean_batch
        await emb.aclose()
    """

    def __init__(
        self, inner: Embedder, run: Runner | Executor, *, max_batch: int = 32, max_wait_ms: float = 2.0, max_in_flight: int = 2
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not 0.0 <= max_wait_ms <= 1000.0:
            raise ValueError(f"max_wait_ms must be in [0, 1000], got {max_wait_ms}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_in_flight = max_in_flight
        self.stats = BatchingStats()
        self._run = run
        self._cache = inner if isinstance(inner, MemoryCachedEmbedder) else None
        self._pending: list[_Waiting] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # running batches (a task nobody holds may be collected)
        self._flush_handle: asyncio.Handle | None = None  # a scheduled _flush (call_soon or the window's timer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ the seam
    async def embed(self, text: str) -> np.ndarray:
        """The unit vector of ``text``, shape (dim,), read-only; waits at most for the batch it joins."""
        if self._closed:
            raise TurnoutError(f"the batching embedder for {self.name} is closed")
        if self._cache is not None:
            hit = self._cache.lookup(text)
            if hit is not None:
                self.stats.hits += 1
                return hit
        loop = self._bind_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Waiting(text, fut))
        self._schedule()
        try:
            return await fut
        except asyncio.CancelledError:
            # the caller's cancellation cancelled ``fut`` too: a pending one is skipped by _flush,
            # one already in a batch has its row dropped; the batch runs on for the others
            self.stats.cancelled += 1
            raise

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Several texts of one request (e.g. a guard's and a route's), each joining the batches; (n, dim)."""
        rows = await asyncio.gather(*(self.embed(t) for t in texts))
        return np.stack(rows) if rows else np.empty((0, self.dim), dtype=np.float32)

    async def aclose(self) -> None:
        """Refuse new texts, send what is pending, and wait for every running batch to finish."""
        self._closed = True
        while self._pending or self._tasks:
            if self._pending and self._in_flight < self.max_in_flight:
                self._flush()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                await asyncio.sleep(0)

    # ------------------------------------------------------------ batch policy
    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise TurnoutError(
                f"the batching embedder for {self.name} belongs to another event loop; "
                "build one per loop (the gateway holds one per embedder name)"
            )
        return loop

    def _schedule(self) -> None:
        """Decide when the pending texts leave (see the module docstring); called after each arrival."""
        if self._in_flight >= self.max_in_flight or not self._pending:
            return  # a batch's return flushes the queue
        loop = self._loop
        assert loop is not None  # bound by the first embed()
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._flush_handle is None:
            if self._in_flight == 0:
                # idle: go at the next loop turn; callers arriving in this turn (a burst) come along
                self._flush_handle = loop.call_soon(self._flush)
            else:
                self._flush_handle = loop.call_later(self.max_wait_s, self._flush)

    def _flush(self) -> None:
        """Send up to ``max_batch`` pending texts as one batch (callers already cancelled are dropped)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending = [w for w in self._pending if not w.future.done()]
        if not self._pending or self._in_flight >= self.max_in_flight:
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._in_flight += 1
        task = asyncio.ensure_future(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._schedule()  # more than max_batch were pending and a slot is still free

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        texts = [w.text for w in batch]
        try:
            vecs = np.array(await self._call(texts), dtype=np.float32)  # our own copy: we freeze it below
            if vecs.shape != (len(texts), self.dim):
                raise TurnoutError(
                    f"embedder {self.name} returned shape {vecs.shape} for {len(texts)} texts; "
                    f"expected ({len(texts)}, {self.dim})"
                )
        except asyncio.CancelledError:
            # the loop is shutting down (or aclose was cancelled): nobody will resolve these
            for w in batch:
                w.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - not swallowed: every caller of the batch gets it
            # the next batch is tried anew
            self.stats.failed_batches += 1
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
        else:
            vecs.flags.writeable = False  # rows are views handed to several callers
            self.stats.batches += 1
            self.stats.texts += len(texts)
            self.stats.sizes[len(texts)] = self.stats.sizes.get(len(texts), 0) + 1
            for w, row in zip(batch, vecs):
                if not w.future.done():
                    w.future.set_result(row)
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self.max_in_flight:
                # what queued behind this batch goes now: it has waited at least one batch already
                self._flush()

    def _call(self, texts: list[str]) -> Awaitable[Any]:
        if isinstance(self._run, Executor):
            loop = self._loop or asyncio.get_running_loop()
            return loop.run_in_executor(self._run, functools.partial(self.inner.embed, texts))
        return self._run(self.inner.embed, texts)


__all__ = ["BatchingEmbedder", "BatchingStats", "Runner"]
