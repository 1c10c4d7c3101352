"""Embedding caches: on disk (one SQLite file per embedder name) for batch jobs, in memory for serving.

:class:`CachedEmbedder` keeps vectors in SQLite, rows keyed by sha256(text). Why SQLite: ~10k-100k
vectors of 1.5 KB each fit comfortably, lookups by key are indexed, WAL mode lets many processes
read while one writes, and a crash mid-run leaves every committed chunk usable. Vectors are stored as raw
float32 bytes; the embedder's name and dim are recorded and checked on open,
so a file can never serve vectors of another shape (a ConfigError naming the
file says so).

:class:`MemoryCachedEmbedder` is what the gateway uses: a bounded LRU of recent
prompts. Serving wants no disk on its path: the SQLite cache costs a read and a
write transaction per new prompt (and an fsync at every WAL checkpoint, seen in
the p99), grows by 1.5 KB per distinct prompt forever, and keeps a vector of
every prompt ever served in the user's home folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from turnout.embed._progress import PROGRESS_THRESHOLD, length_sorted_batches
from turnout.embed.base import Embedder
from turnout.errors import ConfigError

#: texts handed to the inner embedder per call; each chunk is committed before the next,
#: so an interrupted pre-warm keeps what it computed
CHUNK = 256
_SQL_VARS = 500  # stay well under SQLite's bound-parameter limit


def default_cache_dir() -> Path:
    """``$TURNOUT_CACHE_DIR/embeddings`` if set, else ``~/.cache/turnout/embeddings``."""
    root = os.environ.get("TURNOUT_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "turnout"
    return base / "embeddings"


def text_key(text: str) -> bytes:
    """The cache key of a text: its sha256 digest over UTF-8 (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class CachedEmbedder(Embedder):
    """Wraps an embedder with a persistent cache; only texts never seen are embedded.

    Same ``name`` and ``dim`` as the inner embedder, same vectors. Safe to share
    between threads (one connection behind a lock) and between processes
    (SQLite WAL: readers never block, writers wait up to 30 s).

    Example::

        emb = CachedEmbedder(MiniLMEmbedder(onnx_dir=d), cache_dir="~/.cache/turnout/embeddings")
        emb.embed(prompts)      # computes and stores
        emb.embed(prompts)      # reads back; the inner embedder is not called
        emb.path                # ~/.cache/turnout/embeddings/minilm-l6-v2-ht.sqlite
    """

    def __init__(self, inner: Embedder, cache_dir: str | Path | None = None, *, progress: bool = True) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", inner.name):
            raise ValueError(f"embedder name {inner.name!r} is not usable as a file name; use [A-Za-z0-9._-]")
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.progress = progress
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.path = self.dir / f"{inner.name}.sqlite"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('name', ?), ('dim', ?)", (self.name, str(self.dim)))
            meta = dict(conn.execute("SELECT k, v FROM meta"))
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the embedding cache: {exc}", file=str(self.path), fix="delete the file to rebuild it"
            ) from exc
        if meta.get("name") != self.name or meta.get("dim") != str(self.dim):
            conn.close()
            raise ConfigError(
                f"the embedding cache holds {meta.get('name')} dim {meta.get('dim')}, not {self.name} dim {self.dim}",
                file=str(self.path),
                fix="delete it or use another cache_dir",
            )
        self._conn = conn
        return conn

    def lookup(self, texts: Sequence[str]) -> dict[bytes, np.ndarray]:
        """Cached vectors for ``texts`` by key; texts not cached are absent."""
        keys = list({text_key(t) for t in texts})
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            db = self._db()
            for s in range(0, len(keys), _SQL_VARS):
                part = keys[s : s + _SQL_VARS]
                marks = ",".join("?" * len(part))
                for key, blob in db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", part):
                    found[bytes(key)] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _store(self, keys: list[bytes], vecs: np.ndarray) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vecs)]
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``, computing only the ones not cached; shape (len(texts), dim)."""
        keys = [text_key(t) for t in texts]
        found = self.lookup(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo: dict[bytes, str] = {}
        for i, (k, t) in enumerate(zip(keys, texts)):
            vec = found.get(k)
            if vec is None:
                todo.setdefault(k, t)  # duplicates in one call are embedded once
            else:
                out[i] = vec
        self.hits += len(texts) - sum(1 for k in keys if k not in found)
        self.misses += len(todo)
        if todo:
            todo_keys = list(todo)
            todo_texts = [todo[k] for k in todo_keys]
            computed: dict[bytes, np.ndarray] = {}
            label = f"embedding {len(todo_texts)} uncached texts with {self.name}"
            show = self.progress and len(todo_texts) > PROGRESS_THRESHOLD
            # chunks stay <= PROGRESS_THRESHOLD so the inner embedder never draws a second bar
            for idx in length_sorted_batches(todo_texts, CHUNK, progress=show, label=label):
                vecs = self.inner.embed([todo_texts[i] for i in idx])
                chunk_keys = [todo_keys[i] for i in idx]
                self._store(chunk_keys, vecs)
                computed.update(zip(chunk_keys, vecs))
            for i, k in enumerate(keys):
                if k in todo:
                    out[i] = computed[k]
        return out

    def set_threads(self, threads: int) -> None:
        self.inner.set_threads(threads)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        """Close the SQLite connection (it reopens on the next call)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class MemoryCachedEmbedder(Embedder):
    """An in-memory LRU of the last ``max_entries`` texts' vectors (keyed by sha256), for the serving path.

    Same ``name``, ``dim`` and vectors as ``inner``; thread-safe. 4096 entries
    of a 384-d embedder hold about 6.5 MB.

    Example::

        emb = MemoryCachedEmbedder(create_embedder("minilm", cache=False), max_entries=4096)
        emb.embed_one("hi"); emb.embed_one("hi")   # the second is a lookup
        (emb.hits, emb.misses)                     # (1, 1)
    """

    def __init__(self, inner: Embedder, *, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.max_entries = max_entries
        self._lru: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            vec = self._lru.get(key)
            if vec is not None:
                self._lru.move_to_end(key)
                self.hits += 1
            return vec

    def _put(self, key: bytes, vec: np.ndarray) -> np.ndarray:
        vec = np.array(vec, dtype=np.float32)  # a private, read-only copy: every caller shares it
        vec.flags.writeable = False
        with self._lock:
            self.misses += 1
            self._lru[key] = vec
            self._lru.move_to_end(key)
            while len(self._lru) > self.max_entries:
                self._lru.popitem(last=False)
        return vec

    def lookup(self, text: str) -> np.ndarray | None:
        """The cached (read-only) vector of ``text``, or None; never computes. Cheap enough for the event loop."""
        return self._get(text_key(text))

    def embed_one(self, text: str) -> np.ndarray:
        key = text_key(text)
        vec = self._get(key)
        if vec is None:
            vec = self._put(key, self.inner.embed_one(text))
        return vec

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``, computing only the ones not in memory; shape (len(texts), dim)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo: dict[bytes, list[int]] = {}
        todo_texts: list[str] = []
        for i, text in enumerate(texts):
            key = text_key(text)
            vec = self._get(key)
            if vec is not None:
                out[i] = vec
            else:
                if key not in todo:
                    todo_texts.append(text)
                todo.setdefault(key, []).append(i)
        if todo_texts:
            vecs = self.inner.embed(todo_texts)
            for (key, rows), vec in zip(todo.items(), vecs):
                self._put(key, vec)
                out[rows] = vec
        return out

    def set_threads(self, threads: int) -> None:
        self.inner.set_threads(threads)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)
