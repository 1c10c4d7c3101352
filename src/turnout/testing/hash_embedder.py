"""A tiny deterministic embedder for tests: no model, no torch, same vector in every process."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from turnout.embed.base import Embedder
from turnout.embed.hashing import HashingEmbedder


class HashEmbedder(Embedder):
    """The hashing embedder at a small dimension, counting its calls.

    Similar texts (shared words) get higher cosine than unrelated ones, so it
    can stand in for a real model in router and cache tests. ``calls`` and
    ``texts_seen`` let a test check that a cache really avoided recomputation.

    Example::

        emb = HashEmbedder(dim=64)
        emb.embed(["hello world"]).shape   # (1, 64)
        emb.calls                          # 1
    """

    def __init__(self, dim: int = 64) -> None:
        self._inner = HashingEmbedder(dim=dim)
        self.dim = dim
        self.name = f"test-{self._inner.name}"
        self.calls = 0
        self.texts_seen = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts_seen += len(texts)
        return self._inner.embed(texts)
