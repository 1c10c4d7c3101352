"""The embedder registry and the length-sorted batching helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.embed import CachedEmbedder, EmbedderRegistry, EmbedderSpec, builtin_registry, create_embedder
from turnout.embed._progress import length_sorted_batches
from turnout.testing.hash_embedder import HashEmbedder


def test_builtins_are_registered():
    assert builtin_registry().names() == ["hashing", "minilm", "minilm-int8", "minilm-static"]


def test_plugin_embedder_goes_through_create_and_cache(tmp_path):
    reg = builtin_registry()
    seen: list[tuple[Path, bool]] = []

    def factory(model_dir: Path, progress: bool) -> HashEmbedder:
        seen.append((model_dir, progress))
        return HashEmbedder(dim=16)

    reg.register("tiny", EmbedderSpec(factory, worth_caching=True, summary="test"))
    emb = create_embedder("tiny", cache_dir=tmp_path, registry=reg)
    assert isinstance(emb, CachedEmbedder) and emb.dim == 16
    # the cache owns the progress bar, so the inner embedder is built quiet
    assert seen == [(tmp_path / "models", False)]
    assert isinstance(create_embedder("tiny", cache_dir=tmp_path, cache=False, registry=reg), HashEmbedder)


def test_duplicate_registration_fails():
    reg = EmbedderRegistry()
    spec = EmbedderSpec(lambda d, p: HashEmbedder(), worth_caching=False, summary="x")
    reg.register("a", spec)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", spec)


@pytest.mark.parametrize("progress", [False, True])
def test_batches_cover_every_index_once_shortest_first(progress):
    texts = ["x" * ((i * 37) % 50) for i in range(300)]
    batches = list(length_sorted_batches(texts, 64, progress=progress, label="test"))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(300))
    assert all(len(b) <= 64 for b in batches)
    lengths = [len(texts[i]) for i in flat]
    assert lengths == sorted(lengths)


def test_create_embedder_passes_the_thread_hint_through_the_cache(tmp_path):
    from turnout.embed import create_embedder
    from turnout.embed.minilm import MiniLMEmbedder

    emb = create_embedder("minilm", cache_dir=tmp_path, threads=2)
    inner = emb.inner
    assert isinstance(inner, MiniLMEmbedder) and inner._threads == 2  # nothing loaded yet: the hint is free
    with pytest.raises(ValueError):
        emb.set_threads(0)
    # embedders without a thread pool accept the hint and ignore it
    create_embedder("hashing", threads=4).embed(["x"])


def test_length_sorted_batches_cap_the_padded_size():
    texts = ["x" * n for n in [5, 300, 10, 1000, 20, 1000, 1000, 40]]
    batches = list(length_sorted_batches(texts, 64, progress=False, label="t", max_padded_chars=2000))
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))  # every text exactly once
    for b in batches:
        assert len(b) * max(len(texts[i]) for i in b) <= 2000 or len(b) == 1
    # the short texts still share one batch; the 1000-char ones go two at a time
    assert [len(b) for b in batches] == [5, 2, 1]


def test_call_cost_split_pads_less_than_filling_greedily():
    """Mixed short and long texts: the cheapest split pays a few calls instead of padding shorts to the longest."""
    texts = ["x" * n for n in [10, 12, 11, 13, 200, 190, 15, 14, 210]]

    def cost(batches: list[list[int]], call: int) -> int:
        return sum(len(b) * max(len(texts[i]) for i in b) + call for b in batches)

    greedy = list(length_sorted_batches(texts, 64, progress=False, label="t"))
    split = list(length_sorted_batches(texts, 64, progress=False, label="t", call_cost_chars=40))
    assert sorted(i for b in split for i in b) == list(range(len(texts)))  # every text exactly once
    assert [sorted(len(texts[i]) for i in b) for b in split] == [[10, 11, 12, 13, 14, 15], [190, 200, 210]]
    assert cost(split, 40) < cost(greedy, 40)
    # a call dearer than any padding: one batch, as greedy; caps still hold
    assert len(list(length_sorted_batches(texts, 64, progress=False, label="t", call_cost_chars=10**6))) == 1
    capped = list(length_sorted_batches(texts, 4, progress=False, label="t", max_padded_chars=500, call_cost_chars=10**6))
    assert all(len(b) <= 4 and (len(b) == 1 or len(b) * max(len(texts[i]) for i in b) <= 500) for b in capped)
