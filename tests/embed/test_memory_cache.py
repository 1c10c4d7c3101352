"""MemoryCachedEmbedder: the gateway's bounded in-memory LRU of prompt vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from turnout.embed.base import Embedder
from turnout.embed.cache import MemoryCachedEmbedder
from turnout.embed.hashing import HashingEmbedder


class Counting(Embedder):
    """Delegates to the hashing embedder and counts the texts it was asked to embed."""

    name = "counting"

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.dim = self.inner.dim
        self.calls: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        return self.inner.embed(texts)


def test_same_vectors_and_only_unseen_texts_are_embedded() -> None:
    inner = Counting()
    emb = MemoryCachedEmbedder(inner, max_entries=10)
    a = emb.embed_one("what is 2+2?")
    b = emb.embed_one("what is 2+2?")
    assert np.array_equal(a, b) and np.array_equal(a, inner.inner.embed_one("what is 2+2?"))
    batch = emb.embed(["what is 2+2?", "write a haiku", "write a haiku"])
    assert np.array_equal(batch[0], a) and np.array_equal(batch[1], batch[2])
    assert inner.calls == ["what is 2+2?", "write a haiku"]  # duplicates in one call embedded once
    assert (emb.hits, emb.misses, emb.name, emb.dim) == (2, 2, "counting", inner.dim)


def test_least_recently_used_entries_are_evicted_at_the_bound() -> None:
    inner = Counting()
    emb = MemoryCachedEmbedder(inner, max_entries=2)
    emb.embed_one("a")
    emb.embed_one("b")
    emb.embed_one("a")  # 'a' is now the most recent
    emb.embed_one("c")  # evicts 'b'
    assert len(emb) == 2
    emb.embed_one("a")
    emb.embed_one("b")
    assert inner.calls == ["a", "b", "c", "b"]


def test_cached_vectors_cannot_be_corrupted_by_a_caller() -> None:
    emb = MemoryCachedEmbedder(Counting())
    v = emb.embed_one("x")
    with pytest.raises(ValueError):
        v[0] = 42.0
    with pytest.raises(ValueError):
        MemoryCachedEmbedder(Counting(), max_entries=0)
