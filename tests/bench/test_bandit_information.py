"""bench/bandit_information.py: its outcome designs, and a small end-to-end run on a synthetic table."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from turnout.evaluation.table import RoutingTable

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def info():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling bandit_replay
    try:
        spec = importlib.util.spec_from_file_location("bandit_information", BENCH / "bandit_information.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("design,per_prompt", [("random_1", 1), ("random_2", 2), ("random_4", 4)])
def test_random_designs_observe_distinct_models_on_every_prompt(info, design, per_prompt):
    pairs = info.design_pairs(design, 50, 6, np.random.default_rng(0))
    assert len(pairs) == 50 * per_prompt
    by_prompt: dict[int, list[int]] = {}
    for i, j in pairs:
        by_prompt.setdefault(i, []).append(j)
    assert sorted(by_prompt) == list(range(50))
    assert all(len(set(js)) == per_prompt and all(0 <= j < 6 for j in js) for js in by_prompt.values())


def test_full_designs_cover_every_model(info):
    full = info.design_pairs("full", 50, 6, np.random.default_rng(0))
    assert sorted(full) == [(i, j) for i in range(50) for j in range(6)]
    few = info.design_pairs("full_on_n_over_k", 50, 6, np.random.default_rng(0))
    assert sorted(few) == [(i, j) for i in range(8) for j in range(6)]  # 50 // 6 prompts, all 6 models


def _table(n: int, seed: int) -> tuple[RoutingTable, np.ndarray]:
    """Four models, each good on its own region of a clustered context; the dearest one good everywhere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16)) * 3
    region = rng.integers(0, 4, n)
    X = centres[region] + rng.normal(size=(n, 16))
    p = np.full((n, 4), 0.2)
    p[np.arange(n), region] = 0.9
    p[:, 3] = 0.85
    scores = (rng.random((n, 4)) < p).astype(float)
    costs = np.array([1e-4, 1e-4, 1e-4, 1e-3]) * np.ones((n, 1))
    ids = [f"p{i}" for i in range(n)]
    return RoutingTable(ids, ids, ["a", "b", "c", "dear"], scores, costs), X


def test_measure_counts_outcomes_and_reads_gaps_on_both_splits(info):
    train, Xtr = _table(500, 1)
    test, Xte = _table(200, 2)
    out = info.measure(train, test, Xtr, Xte, n=300, seeds=2)
    d = out["designs"]
    assert set(d) == set(info.DESIGNS)
    assert d["full"]["outcomes"] == 300 * 4 and d["random_2"]["outcomes"] == 600
    assert d["full_on_n_over_k"]["outcomes"] == 75 * 4 and d["bandit"]["outcomes"] == 300
    for entry in d.values():
        assert len(entry["per_seed"]) == 2
        assert all(np.isfinite(entry[f"{s}_gap_points"]) for s in ("val", "test"))
    # every model's outcome on every prompt is what the offline routers see: the bandit's model then routes
    # this easy structure about as well as they do (each cheap model is good on a quarter of the prompts only)
    assert d["full"]["test_gap_points"] < 3.0 and d["full"]["val_gap_points"] < 3.0
