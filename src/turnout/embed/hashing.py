"""A dependency-light embedder: signed feature hashing of words, word pairs and character n-grams.

No fitting and no vocabulary, so every process (the gateway, a worker, the
bench) gets the same vector for the same text. Python's ``hash`` is salted per
process, so features are hashed with CRC-32 instead, which is stable and fast.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from turnout.embed.base import Embedder

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder(Embedder):
    """Hashed word unigrams + bigrams and character n-grams, sublinear TF, L2-normalised.

    The two feature families are normalised separately and mixed with
    ``char_weight`` so long prompts (thousands of character n-grams) do not drown
    the word features. Each feature lands in one of ``dim`` buckets with a sign
    taken from another hash bit, so collisions cancel out on average.

    Example::

        emb = HashingEmbedder(dim=4096)
        emb.embed(["What is 2+2?"]).shape   # (1, 4096)
    """

    def __init__(self, dim: int = 4096, *, char_ngrams: tuple[int, int] = (3, 5), char_weight: float = 0.5) -> None:
        if dim < 2 or dim & (dim - 1):
            raise ValueError(f"dim must be a power of two >= 2, got {dim} (try 4096)")
        lo, hi = char_ngrams
        if not 1 <= lo <= hi:
            raise ValueError(f"char_ngrams must be (lo, hi) with 1 <= lo <= hi, got {char_ngrams}")
        if not 0.0 <= char_weight <= 1.0:
            raise ValueError(f"char_weight must be in [0, 1], got {char_weight}")
        self.dim = dim
        self._lo, self._hi = lo, hi
        self._char_weight = char_weight
        # every setting that changes the vectors is in the name: the cache keys on it
        self.name = f"hashing-{dim}-w12-c{lo}{hi}-cw{char_weight:g}"

    def _block(self, features: Counter[str]) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float64)
        mask = self.dim - 1
        for feat, count in features.items():
            h = zlib.crc32(feat.encode("utf-8"))
            # low bits pick the bucket, the top bit the sign: independent enough for dim <= 2**16
            sign = -1.0 if h & 0x80000000 else 1.0
            vec[h & mask] += sign * (1.0 + math.log(count))
        norm = np.linalg.norm(vec)
        return vec / norm if norm > 0 else vec

    def _one(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        word_feats: Counter[str] = Counter(f"w:{w}" for w in words)
        word_feats.update(f"b:{a} {b}" for a, b in itertools.pairwise(words))
        char_feats: Counter[str] = Counter()
        for w in words:
            padded = f" {w} "  # word boundaries, like scikit-learn's char_wb
            for n in range(self._lo, self._hi + 1):
                char_feats.update(f"c:{padded[i : i + n]}" for i in range(max(1, len(padded) - n + 1)))
        vec = (1.0 - self._char_weight) * self._block(word_feats) + self._char_weight * self._block(char_feats)
        norm = np.linalg.norm(vec)
        if norm == 0:
            # empty or punctuation-only text: a fixed unit vector keeps the unit-norm contract
            vec = np.zeros(self.dim)
            vec[0] = 1.0
            return vec
        return vec / norm

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; shape (len(texts), dim), float32, unit rows."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._one(text)
        return out
