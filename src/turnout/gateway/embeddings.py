"""The gateway's one embedding service: every consumer of a prompt's vector shares one embedder per name.

Routes (their router's features), domain guards and the semantic cache all want the prompt's
embedding. :meth:`RequestContext.embedding` asks this service, at most once per request and embedder,
and the service keeps one serving embedder per name for the whole gateway: an in-memory vector cache
(repeated prompts cost a dict lookup) in front of a :class:`~turnout.embed.batching.BatchingEmbedder`,
which gathers the prompts of concurrent requests into one model call on the offload pool (one ONNX call
per batch instead of one per request; a lone request waits for no window).

Embedders are built from the registry by name (``minilm``, ``minilm-int8``, ``minilm-static``,
``hashing``, or a plugin's) when the gateway is built, with one thread each and no disk cache: the
request path must not write a SQLite row per new prompt. An embedder object a test or a caller built
itself can be registered under any name with :meth:`EmbeddingService.add`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.embed.base import Embedder
from turnout.embed.batching import BatchingEmbedder
from turnout.gateway.offload import Offloader

#: batching settings of the serving embedders (see turnout.embed.batching). Route ``auto`` at concurrency 64
#: (bench/gateway_overhead.py, MiniLM fp32): batches of 1 served 237 req/s in 213 MB, of 8 342 req/s in 228 MB,
#: of 32 the same 342 req/s in 309 MB (two batches in flight, each padded to its longest text)
MAX_BATCH = 8
MAX_WAIT_MS = 2.0


def serving_embedder(name: str) -> Embedder:
    """A registered embedder as the gateway serves it: one thread, a bounded in-memory cache, no disk.

    Not the on-disk cache that ``turnout train`` and ``turnout eval`` share: on the request path it cost a
    SQLite read and write transaction per new prompt, grew by every prompt ever served, and kept the
    vectors in the user's home folder.
    """
    from turnout.embed import create_embedder
    from turnout.embed.cache import MemoryCachedEmbedder
    from turnout.embed.registry import default_registry

    inner = create_embedder(name, cache=False, progress=False, threads=1)
    return MemoryCachedEmbedder(inner) if default_registry().get(name).worth_caching else inner


class EmbeddingService:
    """Named embedders shared by every stage and route of one gateway, batched across concurrent requests."""

    def __init__(self, offloader: Offloader, *, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS) -> None:
        self._offloader = offloader
        self._max_batch = max_batch
        self._max_wait_ms = max_wait_ms
        self._embedders: dict[str, Embedder] = {}
        self._batchers: dict[str, BatchingEmbedder] = {}

    def add(self, name: str, embedder: Embedder) -> None:
        """Serve ``embedder`` under ``name`` (the first one registered under a name is kept)."""
        self._embedders.setdefault(name, embedder)

    def ensure(self, name: str) -> Embedder:
        """The embedder serving ``name``, built from the registry the first time (raises KeyError if unknown)."""
        emb = self._embedders.get(name)
        if emb is None:
            emb = self._embedders[name] = serving_embedder(name)
        return emb

    @property
    def names(self) -> list[str]:
        return list(self._embedders)

    async def embed(self, name: str, text: str) -> np.ndarray:
        """``text``'s vector by embedder ``name`` (batched with concurrent requests' texts)."""
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = BatchingEmbedder(
                self.ensure(name), self._offloader.run, max_batch=self._max_batch, max_wait_ms=self._max_wait_ms
            )
        return await batcher.embed(text)

    def warm_up(self) -> None:
        """Load every embedder's model now (blocking: call it on the offload pool), so no request pays for it."""
        for emb in self._embedders.values():
            emb.embed_one("turnout warm-up")

    def stats(self) -> dict[str, Any]:
        """Per embedder: texts, batches, mean batch size, cache hits (for /metrics and benches)."""
        return {
            n: {"texts": b.stats.texts, "batches": b.stats.batches, "mean_batch": b.stats.mean_batch, "hits": b.stats.hits}
            for n, b in self._batchers.items()
        }

    async def aclose(self) -> None:
        for b in self._batchers.values():
            await b.aclose()


__all__ = ["MAX_BATCH", "MAX_WAIT_MS", "EmbeddingService", "serving_embedder"]
