import numpy as np

from turnout.evaluation.runner import baselines, curve_metrics, evaluate_router
from turnout.evaluation.table import RoutingTable
from turnout.routing.base import Prediction, Router


class TruthRouter(Router):
    """Predicts the true score stored in X's first columns: a perfect router for the test."""

    name = "truth"

    def fit(self, data):
        self.models, self.c = data.models, np.nanmean(data.costs, axis=0)
        return self

    def predict(self, X):
        return Prediction(self.models, X.copy(), np.broadcast_to(self.c, X.shape).copy())


def _table(n, rng):
    S = (rng.random((n, 2)) < [0.5, 0.9]).astype(float)
    C = np.tile([1.0, 10.0], (n, 1))
    return RoutingTable([str(i) for i in range(n)], ["p"] * n, ["weak", "strong"], S, C)


def test_perfect_router_reaches_oracle_and_beats_singles():
    rng = np.random.default_rng(0)
    tr, te = _table(50, rng), _table(80, rng)
    out = evaluate_router(TruthRouter(), tr, te, tr.scores, te.scores)
    base = baselines(te)
    m = curve_metrics(out["curve"], base)
    assert m["max_quality"] == base["oracle"]["quality"]
    assert m["aiq"] > base["single_models_aiq"]
    assert m["cost_fraction_to_match_best"] < 1.0
    assert out["decision_ms_p50"] > 0


def test_aiq_interval_without_resampling_is_the_point_estimate():
    from turnout.evaluation.runner import aiq_resamples, interval95

    rng = np.random.default_rng(1)
    tr, te = _table(50, rng), _table(80, rng)
    out = evaluate_router(TruthRouter(), tr, te, tr.scores, te.scores)
    point = curve_metrics(out["curve"], baselines(te))["aiq"]
    # one "resample" that keeps every prompt once is the test set itself
    lo, hi = interval95(aiq_resamples(out["_choices"], te, np.ones((1, len(te)))))
    assert lo == hi == point


def test_aiq_interval_brackets_the_estimate_and_shrinks_with_more_prompts():
    from turnout.evaluation.runner import aiq_resamples, bootstrap_weights, interval95

    rng = np.random.default_rng(2)
    widths = []
    for n in (60, 600):
        tr, te = _table(50, rng), _table(n, rng)
        out = evaluate_router(TruthRouter(), tr, te, tr.scores, te.scores)
        point = curve_metrics(out["curve"], baselines(te))["aiq"]
        lo, hi = interval95(aiq_resamples(out["_choices"], te, bootstrap_weights(n, 300, seed=0)))
        assert lo <= point <= hi and lo < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(10) of the width with 10x the prompts


def test_run_eval_reports_intervals_and_can_turn_them_off():
    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(3)
    tr, te = _table(60, rng), _table(90, rng)
    Xtr, Xte = rng.normal(size=(60, 4)), rng.normal(size=(90, 4))
    out = run_eval(tr, te, Xtr, Xte, ["best-single", "knn"], progress=False, bootstrap=50)
    for r in out["routers"].values():
        lo, hi = r["aiq_ci"]
        assert lo <= r["aiq"] + 1e-9 and r["aiq"] - 1e-9 <= hi
    assert len(out["single_models_aiq_ci"]) == 2
    off = run_eval(tr, te, Xtr, Xte, ["knn"], progress=False, bootstrap=0)
    assert "aiq_ci" not in off["routers"]["knn"] and "single_models_aiq_ci" not in off


def test_task_mean_references_use_train_means_and_the_true_task():
    from turnout.evaluation.runner import task_mean_references

    # task x: the cheap model is always right; task y: only the expensive one is
    def table(n: int) -> RoutingTable:
        tasks = ["x"] * n + ["y"] * n
        S = np.array([[1.0, 1.0]] * n + [[0.0, 1.0]] * n)
        C = np.tile([1.0, 10.0], (2 * n, 1))
        return RoutingTable([str(i) for i in range(2 * n)], ["p"] * 2 * n, ["cheap", "big"], S, C, tasks=tasks)

    tr, te = table(20), table(10)
    base = baselines(te)
    refs = task_mean_references(tr, te, base)
    # knowing the task, the rule sends x to cheap and y to big: the oracle's quality at its cost
    best = max(refs["task_means"]["curve"], key=lambda p: (p[1], -p[0]))
    assert best == [base["oracle"]["cost"], base["oracle"]["quality"]] == [5.5, 1.0]
    assert refs["task_means"]["aiq"] > base["single_models_aiq"]
    untasked = RoutingTable(te.prompt_ids, te.prompts, te.models, te.scores, te.costs)
    assert task_mean_references(tr, untasked, base) == {}


def test_task_mean_references_need_two_test_tasks():
    from turnout.evaluation.runner import task_mean_references

    rng = np.random.default_rng(4)
    tr, te = _table(40, rng), _table(30, rng)
    one = lambda t: RoutingTable(t.prompt_ids, t.prompts, t.models, t.scores, t.costs, tasks=["x"] * len(t))  # noqa: E731
    # one task: the "task means" line is the single-model hull again, so it is left out
    assert task_mean_references(one(tr), one(te), baselines(one(te))) == {}


def test_distinct_points_drops_repeats_and_keeps_order():
    from turnout.evaluation.runner import distinct_points

    assert distinct_points([[2.0, 0.9], [2.0, 0.9], [1.0, 0.5], [2.0, 0.9], [1.0, 0.6]]) == [[2.0, 0.9], [1.0, 0.5], [1.0, 0.6]]


def test_run_eval_curves_have_no_repeated_points():
    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(5)
    tr, te = _table(60, rng), _table(90, rng)
    out = run_eval(
        tr, te, rng.normal(size=(60, 4)), rng.normal(size=(90, 4)), ["best-single", "knn"], progress=False, bootstrap=0
    )
    for r in out["routers"].values():
        pts = [tuple(p) for p in r["curve"]]
        assert pts and len(pts) == len(set(pts))
    # best-single predicts the same for every prompt: each λ sends all prompts to one model, so two points
    assert len(out["routers"]["best-single"]["curve"]) == 2


def _reordered(t: RoutingTable, order: list[str], extra: str | None = None) -> RoutingTable:
    """``t`` with its model columns permuted to ``order`` (plus an all-new model ``extra``)."""
    j = [t.models.index(m) for m in order]
    S, C = t.scores[:, j], t.costs[:, j]
    models = list(order)
    if extra:
        S, C = np.c_[S, np.ones(len(t))], np.c_[C, np.full(len(t), 0.5)]
        models.append(extra)
    return RoutingTable(t.prompt_ids, t.prompts, models, S, C, tasks=t.tasks)


def test_test_table_in_another_model_order_gives_the_same_result():
    """A --test file listing its models in another order must not pair predictions with the wrong columns."""
    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(6)
    S = (rng.random((300, 3)) < [0.3, 0.6, 0.9]).astype(float)
    C = np.tile([1.0, 3.0, 10.0], (300, 1))
    t = RoutingTable([str(i) for i in range(300)], ["p"] * 300, ["a", "b", "c"], S, C)
    tr, te = t.subset(np.arange(200)), t.subset(np.arange(200, 300))
    X = rng.normal(size=(300, 4))
    same = run_eval(tr, te, X[:200], X[200:], ["best-single", "knn"], progress=False, bootstrap=0)
    moved = run_eval(
        tr, _reordered(te, ["c", "a", "b"], extra="new"), X[:200], X[200:], ["best-single", "knn"], progress=False, bootstrap=0
    )
    for name in ("best-single", "knn"):
        assert moved["routers"][name]["aiq"] == same["routers"][name]["aiq"]
        assert moved["routers"][name]["curve"] == same["routers"][name]["curve"]
    assert moved["best_single"] == same["best_single"] and moved["models_left_out"] == ["new"]
    assert "models_left_out" not in same


def test_with_models_reorders_adds_missing_and_drops_extra():
    t = RoutingTable(
        ["0", "1"],
        ["p", "q"],
        ["a", "b"],
        np.array([[1.0, 0.0], [0.0, 1.0]]),
        np.array([[1.0, 2.0], [1.0, 2.0]]),
        model_cards={"a": {"input_per_mtok": 1}, "b": {}},
    )
    w = t.with_models(["b", "z"])
    assert w.models == ["b", "z"] and w.scores[:, 0].tolist() == [0.0, 1.0] and np.isnan(w.scores[:, 1]).all()
    assert np.isnan(w.costs[:, 1]).all() and set(w.model_cards) == {"b"}


def test_test_table_sharing_no_model_fails_clearly():
    import pytest

    from turnout.errors import DataError
    from turnout.evaluation.runner import align_models

    rng = np.random.default_rng(7)
    tr = _table(20, rng)
    te = RoutingTable(["x"], ["p"], ["other"], np.ones((1, 1)), np.ones((1, 1)), source="t.jsonl")
    with pytest.raises(DataError, match="shares no model") as e:
        align_models(tr, te)
    assert "t.jsonl" in str(e.value) and "weak" in str(e.value)


def test_drop_seen_prompts_counts_and_refuses_an_all_seen_test():
    import pytest

    from turnout.errors import DataError
    from turnout.evaluation.splits import drop_seen_prompts

    S, C = np.ones((3, 1)), np.ones((3, 1))
    tr = RoutingTable(["a", "b", "c"], ["x", "y", "z"], ["m"], S, C)
    te = RoutingTable(["d", "e", "f"], ["y", "new", "x"], ["m"], S, C)
    kept, n = drop_seen_prompts(tr, te)
    assert n == 2 and kept.prompts == ["new"] and kept.prompt_ids == ["e"]
    same, n = drop_seen_prompts(tr, kept)
    assert n == 0 and same is kept
    with pytest.raises(DataError, match="also in the training table"):
        drop_seen_prompts(tr, tr)


def test_run_eval_composes_the_ensemble_from_the_routers_it_just_fitted():
    from turnout.evaluation.runner import RouterFitter, distinct_points, run_eval
    from turnout.routing import create_router

    rng = np.random.default_rng(3)
    n = 200
    kind = np.arange(n) % 2
    X = np.c_[kind, 1 - kind, rng.normal(scale=0.3, size=(n, 6))].astype(np.float32)
    S = np.c_[(kind == 0) & (rng.random(n) < 0.9), rng.random(n) < 0.8].astype(float)
    C = np.tile([1.0, 10.0], (n, 1))
    t = RoutingTable([str(i) for i in range(n)], ["p"] * n, ["cheap", "big"], S, C)
    tr, te = t.subset(np.arange(0, 150)), t.subset(np.arange(150, n))
    params = {"ensemble": {"members": ["knn", "bt"]}}
    out = run_eval(tr, te, X[:150], X[150:], ["knn", "bt", "ensemble"], progress=False, router_params=params, bootstrap=0)
    fresh = evaluate_router(create_router("ensemble", members=["knn", "bt"]), tr, te, X[:150], X[150:])
    assert out["routers"]["ensemble"]["curve"] == distinct_points(fresh["curve"])
    r = out["routers"]
    assert r["ensemble"]["fit_s"] >= r["knn"]["fit_s"] + r["bt"]["fit_s"]  # members' fits count as its own
    fitter = RouterFitter(tr.to_training_data(X[:150]), params, reuse=["knn", "bt"])
    knn, _ = fitter.fit("knn")
    bt, _ = fitter.fit("bt")
    ens, _ = fitter.fit("ensemble")
    assert ens.members[0] is knn and ens.members[1] is bt


def test_paired_interval_of_near_identical_routers_is_far_narrower_than_their_marginal_ones():
    from turnout.evaluation.runner import aiq_resamples, bootstrap_weights, interval95

    rng = np.random.default_rng(4)
    tr, te = _table(50, rng), _table(400, rng)
    a = evaluate_router(TruthRouter(), tr, te, tr.scores, te.scores)["_choices"]
    b = a.copy()
    b[:, :4] = 0  # the same router but for 4 of 400 prompts, sent to the weak model at every λ
    w = bootstrap_weights(len(te), 300, seed=0)
    sa, sb = aiq_resamples(a, te, w), aiq_resamples(b, te, w)
    marginal = min(np.subtract(*interval95(sa)[::-1]), np.subtract(*interval95(sb)[::-1]))
    lo, hi = interval95(sb - sa)
    assert hi - lo < marginal / 3


def test_paired_comparisons_name_the_best_and_never_an_evaluation_only_router():
    from turnout.evaluation.runner import paired_comparisons

    out = {"routers": {"a": {"aiq": 0.80}, "b": {"aiq": 0.70}, "peek": {"aiq": 0.99}}}
    single = np.array([0.60, 0.62, 0.64, np.nan])
    samples = {
        "a": np.array([0.80, 0.81, 0.79, 0.80]),
        "b": np.array([0.70, 0.83, 0.69, 0.70]),
        "peek": np.array([0.99, 0.99, 0.99, 0.99]),
    }
    paired_comparisons(out, samples, single, evaluation_only=["peek"])
    assert out["best_router"] == "a"
    assert "aiq_vs_best_ci" not in out["routers"]["a"] and "aiq_vs_best_ci" not in out["routers"]["peek"]
    lo, hi = out["routers"]["b"]["aiq_vs_best_ci"]
    diff = [-0.10, 0.02, -0.10, -0.10]
    assert np.isclose(lo, np.percentile(diff, 2.5)) and np.isclose(hi, np.percentile(diff, 97.5))
    glo, ghi = out["routers"]["a"]["aiq_gain_ci"]  # the resample with no single-model AIQ is left out
    assert np.isclose(glo, np.percentile([0.20, 0.19, 0.15], 2.5)) and np.isclose(ghi, np.percentile([0.20, 0.19, 0.15], 97.5))


def test_run_eval_compares_routers_paired_and_the_cli_says_so():
    from turnout.cli.eval import comparison_lines
    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(5)
    tr, te = _table(60, rng), _table(300, rng)
    out = run_eval(tr, te, tr.scores, te.scores, ["cheapest", "best-single", "knn"], progress=False, bootstrap=100)
    best = out["best_router"]
    assert out["routers"][best]["aiq"] == max(r["aiq"] for r in out["routers"].values())
    assert all(("aiq_vs_best_ci" in r) == (n != best) for n, r in out["routers"].items())
    # the cheapest model alone sits at the hull's low end: its AIQ is far below the hull's on every resample
    assert out["routers"]["cheapest"]["aiq_gain_ci"][1] < 0
    lines = comparison_lines(out)
    assert lines[0].startswith(f"best AIQ: {best} (") and "cheapest" not in lines[0].split(":", 2)[2]
    assert comparison_lines(run_eval(tr, te, tr.scores, te.scores, ["knn"], progress=False, bootstrap=0)) == []


def test_a_router_with_signal_within_tasks_is_shown_above_the_task_line():
    from turnout.cli.eval import comparison_lines
    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(6)

    def table(n: int) -> RoutingTable:
        # two tasks with the same mix: per prompt the cheap model is right or not at random, the big one always
        cheap = (rng.random(2 * n) < 0.5).astype(float)
        S = np.c_[cheap, np.ones(2 * n)]
        return RoutingTable(
            [str(i) for i in range(2 * n)],
            ["p"] * 2 * n,
            ["cheap", "big"],
            S,
            np.tile([1.0, 10.0], (2 * n, 1)),
            tasks=["x"] * n + ["y"] * n,
        )

    tr, te = table(60), table(150)
    # knn reads the outcomes themselves as features (the within-task signal); best-single reads nothing
    out = run_eval(tr, te, tr.scores, te.scores, ["best-single", "knn"], progress=False, bootstrap=100)
    assert out["routers"]["knn"]["aiq_vs_task_means_ci"][0] > 0
    assert out["routers"]["best-single"]["aiq_vs_task_means_ci"][1] <= 1e-12
    assert "_choices" not in out["references"]["task_means"]
    assert comparison_lines(out)[2].endswith("(paired 95% CI above 0): knn")


def test_models_with_no_training_outcome_are_left_out_and_named_without_numpy_warnings():
    import warnings

    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(1)
    n = 60
    S = (rng.random((n, 3)) < [0.5, 0.9, 0.7]).astype(float)
    S[:40, 2] = np.nan  # the third model only has outcomes on the test prompts
    t = RoutingTable(
        [str(i) for i in range(n)], [f"p{i}" for i in range(n)], ["weak", "strong", "late"], S, np.tile([1.0, 10.0, 5.0], (n, 1))
    )
    tr, te = t.subset(range(40)), t.subset(range(40, n))
    X = rng.normal(size=(n, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = run_eval(tr, te, X[:40], X[40:], ["knn"], progress=False, bootstrap=0)
    assert out["models_left_out"] == ["late"] and "late" not in out["single_models"]
    assert any("no outcome on any training prompt" in note and "late" in note for note in out["notes"])


def test_a_table_whose_models_cost_the_same_is_said_so_and_its_intervals_hold_the_estimate():
    from turnout.evaluation.runner import run_eval

    rng = np.random.default_rng(2)
    n = 200
    S = (rng.random((n, 2)) < [0.6, 0.9]).astype(float)
    t = RoutingTable([str(i) for i in range(n)], [f"p{i}" for i in range(n)], ["a", "b"], S, np.full((n, 2), 0.001))
    X = rng.normal(size=(n, 4)).astype(np.float32)
    out = run_eval(
        t.subset(range(150)), t.subset(range(150, n)), X[:150], X[150:], ["best-single"], progress=False, bootstrap=100
    )
    lo, hi = out["single_models_aiq_ci"]
    assert lo <= out["single_models_aiq"] <= hi  # rounding in resampled mean costs made a spurious cost range
    assert out["routers"]["best-single"]["aiq_gain_ci"][0] <= 0 <= out["routers"]["best-single"]["aiq_gain_ci"][1]
    assert any("costs the same" in note for note in out["notes"])
    assert not any("test prompt(s)" in note for note in out["notes"])  # 50 is not a tiny test set


def test_notes_name_one_model_partial_coverage_and_a_tiny_test_set():
    from turnout.evaluation.runner import baselines, result_notes

    S = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 0.0]])
    t = RoutingTable(["1", "2", "3"], ["a", "b", "c"], ["x", "y"], S, np.array([[1.0, 2.0]] * 3))
    notes = " | ".join(result_notes(t, baselines(t), estimated=True))
    assert "only 3 test prompt(s)" in notes and "1 of 2 models lack outcomes" in notes and "67%" in notes
    assert "estimated" in notes
    one = RoutingTable(["1", "2"], ["a", "b"], ["x"], np.array([[1.0], [0.0]]), np.ones((2, 1)))
    assert "one model only" in result_notes(one, baselines(one))[0]
