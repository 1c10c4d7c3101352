"""CachedEmbedder: hits skip the inner embedder, survive a new instance and a new process."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from turnout.embed import CachedEmbedder, default_cache_dir
from turnout.errors import ConfigError
from turnout.testing.hash_embedder import HashEmbedder

TEXTS = [f"prompt number {i} about topic {i % 7}" for i in range(40)]


def test_second_run_never_calls_inner(tmp_path):
    inner = HashEmbedder(dim=32)
    emb = CachedEmbedder(inner, tmp_path, progress=False)
    first = emb.embed(TEXTS)
    assert inner.texts_seen == len(TEXTS)
    calls = inner.calls
    again = emb.embed(list(reversed(TEXTS)))
    assert inner.calls == calls
    np.testing.assert_array_equal(again, first[::-1])
    assert emb.hits == len(TEXTS) and emb.misses == len(TEXTS)


def test_only_missing_texts_are_embedded_and_duplicates_once(tmp_path):
    inner = HashEmbedder(dim=32)
    emb = CachedEmbedder(inner, tmp_path, progress=False)
    emb.embed(TEXTS[:10])
    seen = inner.texts_seen
    out = emb.embed(TEXTS[5:15] + ["new", "new"])
    assert inner.texts_seen - seen == 6  # 5 new prompts + "new" once
    np.testing.assert_array_equal(out, inner.embed(TEXTS[5:15] + ["new", "new"]))


def test_survives_new_instance(tmp_path):
    CachedEmbedder(HashEmbedder(dim=32), tmp_path, progress=False).embed(TEXTS)
    fresh_inner = HashEmbedder(dim=32)
    fresh = CachedEmbedder(fresh_inner, tmp_path, progress=False)
    fresh.embed(TEXTS)
    assert fresh_inner.calls == 0
    assert len(fresh) == len(TEXTS)
    assert fresh.path == tmp_path / f"{fresh_inner.name}.sqlite"


def test_survives_new_process(tmp_path):
    code = (
        "import sys; from turnout.embed import CachedEmbedder;"
        "from turnout.testing.hash_embedder import HashEmbedder;"
        f"inner = HashEmbedder(dim=32); e = CachedEmbedder(inner, sys.argv[1], progress=False);"
        f"e.embed({TEXTS!r}); print(inner.calls)"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    ]
    assert runs == ["1", "0"]


def test_threads_share_one_cache(tmp_path):
    emb = CachedEmbedder(HashEmbedder(dim=32), tmp_path, progress=False)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(20):
                emb.embed_one(TEXTS[(i + offset) % len(TEXTS)])
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 5,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_allclose(emb.embed(TEXTS), HashEmbedder(dim=32).embed(TEXTS))


def test_file_of_another_shape_is_refused_with_the_fix(tmp_path):
    inner = HashEmbedder(dim=32)
    CachedEmbedder(inner, tmp_path, progress=False).embed(["x"])

    class Liar(HashEmbedder):
        def __init__(self) -> None:
            super().__init__(dim=16)
            self.name = inner.name  # same name, other dim: must never be served 32-d vectors

    with pytest.raises(ConfigError, match="delete it"):
        CachedEmbedder(Liar(), tmp_path, progress=False).embed(["x"])


def test_default_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    monkeypatch.delenv("TURNOUT_CACHE_DIR")
    assert default_cache_dir().parts[-3:] == (".cache", "turnout", "embeddings")
