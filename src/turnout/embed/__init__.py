"""Embedders: texts in, unit vectors out, with an on-disk cache.

Importing this package loads neither torch nor onnxruntime; each embedder
imports its runtime on first use. Built-in names: ``minilm`` (all-MiniLM-L6-v2,
ONNX fp32), ``minilm-int8`` (its per-channel int8 quantisation: same routing
quality on the shared tables, ~2x cheaper), ``minilm-static`` (word-piece
vectors distilled from it, ~0.1 ms, lower routing quality) and ``hashing``.
For serving, :class:`BatchingEmbedder` gathers concurrent requests' texts.

Example::

    from turnout.embed import create_embedder
    emb = create_embedder("minilm")          # cached at ~/.cache/turnout/embeddings
    vecs = emb.embed(["What is 2+2?", "Write a haiku"])   # (2, 384) float32
"""

from __future__ import annotations

from pathlib import Path

from turnout.embed.base import Embedder
from turnout.embed.batching import BatchingEmbedder, BatchingStats
from turnout.embed.cache import CachedEmbedder, MemoryCachedEmbedder, default_cache_dir
from turnout.embed.hashing import HashingEmbedder
from turnout.embed.registry import EmbedderRegistry, EmbedderSpec, builtin_registry, default_registry, register_embedder

__all__ = [
    "BatchingEmbedder",
    "BatchingStats",
    "CachedEmbedder",
    "Embedder",
    "EmbedderRegistry",
    "EmbedderSpec",
    "HashingEmbedder",
    "MemoryCachedEmbedder",
    "builtin_registry",
    "default_registry",
    "register_embedder",
    "create_embedder",
    "default_cache_dir",
]


def create_embedder(
    name: str = "minilm",
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    cache: bool = True,
    registry: EmbedderRegistry | None = None,
    threads: int | None = None,
) -> Embedder:
    """Build the embedder registered as ``name``, wrapped in the on-disk cache.

    ``cache_dir`` defaults to :func:`default_cache_dir` (``$TURNOUT_CACHE_DIR/embeddings``
    or ``~/.cache/turnout/embeddings``); derived model files (minilm's ONNX export)
    go in its ``models/`` subfolder. ``cache=False`` skips the vector cache;
    embedders that are cheaper than a lookup (``hashing``) are never cached.
    ``threads`` (default: the embedder's own, one for MiniLM) sizes its CPU thread pool:
    batch jobs pass ``os.cpu_count()``. Raises ``KeyError`` naming the known embedders
    for an unknown ``name``.
    """
    spec = (registry or default_registry()).get(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not (cache and spec.worth_caching):
        emb = spec.factory(root / "models", progress)
    else:
        # the cache draws the progress bar over its chunks, so the inner embedder stays quiet
        emb = CachedEmbedder(spec.factory(root / "models", False), root, progress=progress)
    if threads is not None:
        emb.set_threads(threads)
    return emb
