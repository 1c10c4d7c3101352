"""Nearest-neighbour search shared by the kNN, BT and cost models: chunked, and equal to a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing import _common
from turnout.routing._common import l2_normalize, top_k_similar


def _brute(Q: np.ndarray, R: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    sims = Q @ R.T
    if exclude is not None:
        sims[np.arange(len(Q)), exclude] = -np.inf
    return np.sort(np.argsort(-sims, axis=1, kind="stable")[:, :k], axis=1)


@pytest.mark.parametrize("cells", [1, 37, 10**9], ids=["one-row-chunks", "uneven-chunks", "one-chunk"])
def test_chunked_search_finds_the_same_neighbours_and_similarities(cells: int, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(_common, "TOP_K_CHUNK_CELLS", cells)
    rng = np.random.default_rng(0)
    R = l2_normalize(rng.normal(size=(50, 8)))
    Q = l2_normalize(rng.normal(size=(23, 8)))
    idx, top = top_k_similar(Q, R, 5)
    assert idx.shape == top.shape == (23, 5)
    assert (np.sort(idx, axis=1) == _brute(Q, R, 5)).all()
    assert np.allclose(top, np.take_along_axis(Q @ R.T, idx, axis=1), atol=1e-6)
    # leave-one-out: each reference row left out of its own neighbours, in every chunk
    rows = np.arange(0, 50, 2)
    idx, _ = top_k_similar(R[rows], R, 4, exclude=rows)
    assert not (idx == rows[:, None]).any()
    assert (np.sort(idx, axis=1) == _brute(R[rows], R, 4, exclude=rows)).all()


def test_too_few_reference_rows_is_a_routing_error() -> None:
    R = l2_normalize(np.ones((1, 4)))
    with pytest.raises(RoutingError, match="at least 2 training prompts"):
        top_k_similar(R, R, 3, exclude=np.array([0]))
