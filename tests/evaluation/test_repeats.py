import math

import numpy as np
import pytest

from turnout.errors import DataError
from turnout.evaluation.repeats import corrected_interval, random_splits, run_repeated, summarise, summary, t975
from turnout.evaluation.runner import run_eval
from turnout.evaluation.splits import split_table

from eval_tables import two_kinds


def test_random_splits_are_seeded_disjoint_and_the_first_is_evals_own_random_split():
    t, _ = two_kinds(40)
    a, b = random_splits(len(t), 3, 0.25, seed=7), random_splits(len(t), 3, 0.25, seed=7)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    for tr, te in a:
        assert len(te) == 10 and not set(tr) & set(te) and len(tr) + len(te) == 40
    assert not np.array_equal(a[0][1], a[1][1])
    _, te = split_table(t, 0.25, 7)
    assert te.prompt_ids == [t.prompt_ids[i] for i in a[0][1]]
    with pytest.raises(DataError, match="at least 2"):
        random_splits(40, 1, 0.25, 0)


def test_t_quantiles_and_the_corrected_interval_by_hand():
    assert t975(1) == 12.706 and t975(4) == 2.776 and abs(t975(30) - t975(31)) < 0.01 and t975(1000) < 1.97
    d = np.array([0.01, 0.03, 0.02, 0.04, 0.00])
    s2 = d.var(ddof=1)  # 0.00025
    half = 2.776 * math.sqrt((1 / 5 + 100 / 300) * s2)
    r = corrected_interval(d, n_train=300, n_test=100)
    assert r["mean"] == pytest.approx(0.02) and r["ci"] == pytest.approx([0.02 - half, 0.02 + half])
    # wider than the naive t interval, which ignores that the splits share training prompts
    assert half > 2.776 * math.sqrt(s2 / 5)
    assert corrected_interval(np.array([0.5]), 10, 5)["ci"] is None


def test_summary_skips_missing_values_but_keeps_them_listed():
    s = summary([0.5, None, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["n"] == 2 and s["values"] == [0.5, None, 0.7]
    assert s["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and (s["min"], s["max"]) == (0.5, 0.7)
    assert summary([None])["mean"] is None


def test_each_split_is_exactly_run_eval_on_that_split_and_the_summary_adds_up():
    t, X = two_kinds()
    out = run_repeated(t, X, ["knn", "cheapest"], repeats=3, seed=5, progress=False)
    assert out["repeats"] == 3 and out["seeds"] == [5, 6, 7] and len(out["splits"]) == 3
    tr_rows, te_rows = random_splits(len(t), 3, 0.25, 5)[1]
    direct = run_eval(t.subset(tr_rows), t.subset(te_rows), X[tr_rows], X[te_rows], ["knn"], progress=False, bootstrap=0)
    assert out["splits"][1]["routers"]["knn"]["aiq"] == direct["routers"]["knn"]["aiq"]
    knn = out["routers"]["knn"]
    assert knn["aiq"]["values"] == [s["routers"]["knn"]["aiq"] for s in out["splits"]]
    assert knn["aiq"]["mean"] == pytest.approx(np.mean(knn["aiq"]["values"]))
    assert out["best_router"] == "knn" and knn["wins"] + out["routers"]["cheapest"]["wins"] == 3
    # a router that reads the test outcomes (evaluation only) is never the best, never counted as a win
    flagged = summarise(out["splits"], ["knn", "cheapest"], {"knn": True})
    assert flagged["best_router"] == "cheapest" and flagged["routers"]["knn"]["wins"] == 0
    # kNN sees the kind of prompt: measurably above the hull and above always-the-cheapest
    assert knn["aiq_gain"]["ci"][0] > 0
    assert out["routers"]["cheapest"]["aiq_vs_best"]["ci"][1] < 0
    assert "aiq_vs_best" not in knn
    # tasks in the table: the task-means line is summarised, and each router compared with it
    assert len(out["task_means_aiq"]["values"]) == 3 and "aiq_vs_task_means" in knn


def test_repeated_splits_drop_test_prompts_seen_in_train_unless_kept():
    t, X = two_kinds(80)
    t.prompts = ["same text"] * 40 + [f"p{i}" for i in range(40)]  # half the prompts share one text
    out = run_repeated(t, X, ["knn"], repeats=2, progress=False)
    assert all(n < 20 for n in out["n_test"])
    assert [n + d for n, d in zip(out["n_test"], out["test_prompts_seen_in_train_dropped"])] == [20, 20]
    kept = run_repeated(t, X, ["knn"], repeats=2, keep_seen=True, progress=False)
    assert kept["n_test"] == [20, 20] and kept["test_prompts_seen_in_train_dropped"] == [0, 0]


def test_embeddings_must_match_the_table():
    t, X = two_kinds(40)
    with pytest.raises(DataError, match="embeddings for 40 prompts"):
        run_repeated(t, X[:10], ["knn"], repeats=2, progress=False)
