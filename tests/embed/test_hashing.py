"""The numpy-only hashing embedder: shape, unit norm, determinism across processes, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from turnout.embed import HashingEmbedder, create_embedder

TEXTS = ["What is the capital of France?", "Write a Python function that sorts a list", "", "!!!", "héllo wörld 你好"]


def test_shape_dtype_and_unit_norm():
    emb = HashingEmbedder(dim=1024)
    vecs = emb.embed(TEXTS)
    assert vecs.shape == (len(TEXTS), 1024)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert emb.embed_one(TEXTS[0]).shape == (1024,)


def test_deterministic_across_processes():
    # Python's hash() is salted per process; a different PYTHONHASHSEED must not change vectors
    code = (
        "from turnout.embed import HashingEmbedder;"
        "print(HashingEmbedder(dim=256).embed(['route me to a cheap model']).tobytes().hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    here = HashingEmbedder(dim=256).embed(["route me to a cheap model"]).tobytes().hex()
    assert outs == {here}


def test_similar_texts_closer_than_unrelated():
    emb = HashingEmbedder()
    a, b, c = emb.embed(
        ["How do I sort a list in Python?", "How can I sort a Python list?", "The recipe needs two eggs and flour."]
    )
    assert a @ b > a @ c + 0.2


def test_name_encodes_settings_and_bad_settings_fail():
    assert HashingEmbedder(dim=1024).name != HashingEmbedder(dim=2048).name
    assert HashingEmbedder(char_weight=0.3).name != HashingEmbedder(char_weight=0.5).name
    with pytest.raises(ValueError, match="power of two"):
        HashingEmbedder(dim=1000)


def test_create_embedder_hashing_is_not_cached(tmp_path):
    emb = create_embedder("hashing", cache_dir=tmp_path)
    assert isinstance(emb, HashingEmbedder)
    assert not any(tmp_path.iterdir())


def test_unknown_name_lists_known_embedders():
    with pytest.raises(KeyError, match="hashing.*minilm"):
        create_embedder("nope")


def test_no_torch_or_onnxruntime_imported():
    code = (
        "import sys; from turnout.embed import create_embedder;"
        "import turnout.testing.hash_embedder;"
        "e = create_embedder('hashing'); e.embed(['hi']);"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'sentence_transformers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
