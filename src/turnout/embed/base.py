"""The embedder seam: texts in, an (n × d) float32 matrix of unit vectors out.

``name`` identifies the embedder *and its settings*; the on-disk cache keys
vectors by (name, sha256(text)), so two embedders must never share a name
unless they produce the same vectors.

Example::

    emb = create_embedder("minilm")
    vecs = emb.embed(["What is 2+2?", "Write a haiku"])   # shape (2, 384)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns an array of shape (len(texts), dim), dtype float32."""

    def embed_one(self, text: str) -> np.ndarray:
        """Embed a single text (the gateway's hot path); returns shape (dim,)."""
        row: np.ndarray = self.embed([text])[0]
        return row

    def set_threads(self, threads: int) -> None:
        """Ask for ``threads`` CPU threads per call (a hint; embedders without threads ignore it).

        Batch jobs (``turnout eval``) want every core; the gateway wants one, so
        that embedding never starves the event loop. Only effective before the
        embedder loads its model (the first ``embed``).
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
