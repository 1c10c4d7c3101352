"""Every learned router (knn, mlp, mf, bt, graph, profile, ensemble) on planted synthetic tables."""

from __future__ import annotations

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing import TrainingData, choose, create_router, load_router, save_router

from routing_synthetic import LEARNED, needs, planted

FAST = {"mlp": {"members": 1, "epochs": 60}, "mf": {"epochs": 60}, "graph": {"epochs": 60}}


def make(name: str):  # noqa: ANN201
    needs(name)
    return create_router(name, **FAST.get(name, {}))


@pytest.mark.parametrize("name", LEARNED)
def test_learns_planted_signal(name: str) -> None:
    train, _ = planted(n=400, seed=0)
    test, cluster = planted(n=300, seed=0)  # same centres (seeded), fresh outcomes
    router = make(name).fit(train)
    pred = router.predict(test.X)
    assert pred.quality.shape == (300, 3) and pred.cost.shape == (300, 3)
    assert np.isfinite(pred.quality).all() and np.isfinite(pred.cost).all()
    idx = choose(pred, 0.0)
    # A on cluster 0, B on cluster 1: realised quality ~0.9 versus ~0.55 for the best single model
    good = np.where(cluster == 0, 0, 1)
    assert (idx == good).mean() > 0.9
    realised = test.scores[np.arange(300), idx].mean()
    best_single = np.nanmean(test.scores, axis=0).max()
    assert realised > best_single + 0.2
    # costs follow the planted prices: C is cheapest everywhere
    assert (pred.cost.argmin(axis=1) == 2).all()


@pytest.mark.parametrize("name", LEARNED)
def test_missing_cells(name: str) -> None:
    train, _ = planted(n=400, seed=1, missing=0.4)
    test, cluster = planted(n=200, seed=1)
    pred = make(name).fit(train).predict(test.X)
    assert np.isfinite(pred.quality).all() and np.isfinite(pred.cost).all()
    assert (choose(pred, 0.0) == np.where(cluster == 0, 0, 1)).mean() > 0.8


@pytest.mark.parametrize("name", LEARNED)
def test_single_model(name: str) -> None:
    data, _ = planted(n=120, seed=2)
    one = TrainingData(X=data.X, scores=data.scores[:, :1], costs=data.costs[:, :1], models=["A"])
    pred = make(name).fit(one).predict(data.X[:5])
    assert pred.models == ["A"] and pred.quality.shape == (5, 1)
    assert ((pred.quality >= 0) & (pred.quality <= 1)).all()


@pytest.mark.parametrize("name", LEARNED)
def test_save_load_round_trip(name: str, tmp_path) -> None:  # noqa: ANN001
    data, _ = planted(n=200, seed=3, missing=0.1)
    router = make(name).fit(data)
    path = save_router(router, tmp_path / f"{name}.npz", meta={"embedder": "synthetic", "table": "planted"})
    loaded, meta = load_router(path)
    assert meta["router"] == name and meta["models"] == ["A", "B", "C"] and meta["embedder"] == "synthetic"
    a, b = router.predict(data.X[:50]), loaded.predict(data.X[:50])
    assert np.array_equal(a.quality, b.quality) and np.array_equal(a.cost, b.cost)


@pytest.mark.parametrize("name", LEARNED)
def test_not_fitted_and_wrong_width(name: str) -> None:
    router = make(name)
    with pytest.raises(RoutingError, match="not fitted"):
        router.predict(np.zeros((1, 16)))
    data, _ = planted(n=120, seed=4)
    router.fit(data)
    with pytest.raises(RoutingError, match="same embedder"):
        router.predict(np.zeros((1, 7)))


@pytest.mark.parametrize("name", ["mlp", "mf", "graph"])
def test_torch_routers_are_deterministic(name: str) -> None:
    data, _ = planted(n=200, seed=5)
    a = make(name).fit(data).predict(data.X[:20]).quality
    b = make(name).fit(data).predict(data.X[:20]).quality
    assert np.allclose(a, b)


def test_knn_auto_picks_k_and_temperature_by_leave_one_out_on_training_only() -> None:
    from turnout.routing.knn import K_GRID, TEMPERATURE_GRID

    train, _ = planted(n=400, seed=0)
    auto = create_router("knn").fit(train)
    assert len(auto.chosen) == len(K_GRID) * len(TEMPERATURE_GRID)
    best = min(auto.chosen, key=auto.chosen.get)
    assert best == f"k={auto.k},temperature={auto.temperature:g}"
    # a fixed choice is kept and nothing is searched
    fixed = create_router("knn", k=7, temperature=0.3).fit(train)
    assert (fixed.k, fixed.temperature, fixed.chosen) == (7, 0.3, {})
    # the search only sees training data: refitting on the same table gives the same choice
    again = create_router("knn").fit(train)
    assert (again.k, again.temperature) == (auto.k, auto.temperature)


def test_knn_auto_choice_predicts_fresh_data_better_than_extreme_fixed_choices() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8)) * 3
    best = rng.integers(0, 3, size=10)  # each cluster has its own best model

    def draw(n: int) -> TrainingData:
        c = rng.integers(0, 10, size=n)
        X = centres[c] + rng.normal(size=(n, 8))
        p = np.full((n, 3), 0.3)
        p[np.arange(n), best[c]] = 0.8
        S = (rng.random((n, 3)) < p).astype(float)
        return TrainingData(X=X, scores=S, costs=np.ones((n, 3)), models=["a", "b", "c"])

    train, fresh = draw(600), draw(2000)

    def brier(router) -> float:  # noqa: ANN001
        return float(np.mean((router.fit(train).predict(fresh.X).quality - fresh.scores) ** 2))

    auto = brier(create_router("knn"))
    # 10 neighbours are too few for noisy 0/1 outcomes; 200 mix clusters of ~60 prompts
    assert auto < brier(create_router("knn", k=10, temperature=1.0))
    assert auto < brier(create_router("knn", k=200, temperature=1.0))


@pytest.mark.parametrize("n", [1, 2, 3, 12])
def test_knn_auto_on_tiny_tables_stays_finite(n: int) -> None:
    rng = np.random.default_rng(n)
    data = TrainingData(X=rng.normal(size=(n, 4)), scores=rng.random((n, 2)), costs=np.ones((n, 2)), models=["a", "b"])
    with np.errstate(all="raise"):  # no NaN or division warnings on the way
        pred = create_router("knn").fit(data).predict(data.X)
    assert np.isfinite(pred.quality).all() and pred.quality.shape == (n, 2)


def _graded(data: TrainingData) -> TrainingData:
    """``data`` with scores on a 0–1 scale of quarters (not 0/1), so BT's general battle path runs."""
    rng = np.random.default_rng(1)
    S = np.clip(np.round((data.scores * 0.75 + rng.random(data.scores.shape) * 0.25) * 4) / 4, 0, 1)
    return TrainingData(X=data.X, scores=S, costs=data.costs, models=data.models)


@pytest.mark.parametrize("graded", [False, True], ids=["binary", "graded"])
def test_bt_over_its_cell_budget_sums_nearest_prompts_and_stays_close_to_exact(graded: bool) -> None:
    from turnout.routing.bt import BTRouter

    whole, cluster = planted(n=720, missing=0.0 if graded else 0.1)
    data = _graded(whole) if graded else whole
    data = TrainingData(X=data.X[:600], scores=data.scores[:600], costs=data.costs[:600], models=data.models)
    probe, cluster = whole.X[600:], cluster[600:]
    exact = BTRouter().fit(data)
    small = BTRouter(max_cells=9 * 300).fit(data)  # 3 models: 300 prompts summed one by one, the rest as the mean
    assert exact.wins is not None and small.wins is None and small._neighbours() == 300
    qe, qs = exact.predict(probe).quality, small.predict(probe).quality
    assert not np.allclose(qe, qs)  # the approximation did run
    assert np.abs(qe - qs).mean() < 0.03
    assert (qe.argmax(axis=1) == qs.argmax(axis=1)).mean() >= 0.95
    # and it still reads the prompt: model A on cluster 0, B on cluster 1
    assert (qs.argmax(axis=1) == np.where(cluster == 0, 0, 1)).mean() > 0.9
    again = BTRouter.from_state(small.get_state())
    assert again.wins is None and np.allclose(again.predict(probe).quality, qs)


def test_neighbour_cost_samples_big_tables_and_keeps_every_prompt_in_the_mean() -> None:
    from turnout.routing.cost import NeighbourCost

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 8)).astype(np.float32)
    costs = np.exp(X[:, :1] + np.array([[0.0, 1.0]]))  # cost grows with the first feature
    full, sampled = NeighbourCost().fit(X, costs), NeighbourCost(max_prompts=100).fit(X, costs)
    assert sampled.Xn is not None and sampled.Xn.shape[0] == 100 and full.Xn is not None and full.Xn.shape[0] == 500
    assert np.allclose(sampled.mean_log, full.mean_log)
    Q = rng.normal(size=(200, 8)).astype(np.float32)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    truth = np.exp(Q[:, :1] + np.array([[0.0, 1.0]]))
    for model in (full, sampled):
        corr = np.corrcoef(np.log(model.predict(Qn)[:, 0]), np.log(truth[:, 0]))[0, 1]
        assert corr > 0.5
    again = NeighbourCost.from_state(sampled.get_state())
    assert np.allclose(again.predict(Qn), sampled.predict(Qn))


def test_ensemble_defaults_to_every_learned_router_and_averages_their_quality() -> None:
    needs("ensemble")
    from turnout.routing.ensemble import DEFAULT_MEMBERS

    assert set(DEFAULT_MEMBERS) == set(LEARNED) - {"ensemble"}
    train, _ = planted(n=300, seed=4, missing=0.1)
    probe, _ = planted(n=50, seed=5)
    ens = create_router("ensemble").fit(train)
    assert ens.member_names == list(DEFAULT_MEMBERS)
    preds = [create_router(n).fit(train).predict(probe.X) for n in DEFAULT_MEMBERS]  # deterministic fits
    got = ens.predict(probe.X)
    assert np.allclose(got.quality, np.mean([p.quality for p in preds], axis=0), atol=1e-6)
    assert np.allclose(ens.predict_quality(probe.X), got.quality)
    # cost: one neighbour lookup of the ensemble's own, not six
    from turnout.routing._common import l2_normalize
    from turnout.routing.cost import NeighbourCost

    assert np.allclose(got.cost, NeighbourCost().fit(train.X, train.costs).predict(l2_normalize(probe.X)))
    again = create_router("ensemble").from_state(ens.get_state())
    assert np.allclose(again.predict(probe.X).cost, got.cost) and np.allclose(again.predict(probe.X).quality, got.quality)
    weighted = create_router("ensemble", members=["knn", "bt"], weights=[3.0, 1.0]).fit(train).predict(probe.X)
    knn, bt = preds[list(DEFAULT_MEMBERS).index("knn")], preds[list(DEFAULT_MEMBERS).index("bt")]
    assert np.allclose(weighted.quality, 0.75 * knn.quality + 0.25 * bt.quality, atol=1e-6)


def test_bt_strengths_are_the_likelihood_maximum_that_mm_iterations_converge_to() -> None:
    from turnout.routing.bt import BTRouter

    def mm(W: np.ndarray, prior: float, iters: int = 20_000) -> np.ndarray:  # Hunter's MM, run to convergence
        m = W.shape[1]
        W = W + prior * (1 - np.eye(m))[None]
        N, wins, p = W + W.transpose(0, 2, 1), W.sum(axis=2), np.ones(W.shape[:2])
        for _ in range(iters):
            p = wins / (N / (p[:, :, None] + p[:, None, :])).sum(axis=2)
            p /= np.exp(np.log(p).mean(axis=1, keepdims=True))
        t = np.log(p)
        return t - t.mean(axis=1, keepdims=True)

    rng = np.random.default_rng(0)
    m = 6
    W = np.concatenate([rng.random((8, m, m)) ** 3 * scale for scale in (0.1, 10, 1000)])
    W[:, 0, 1:] += 1e4  # one model that beats every other by far
    W[:, np.arange(m), np.arange(m)] = 0.0
    router = BTRouter()
    theta = router._bt(W)
    assert np.allclose(theta.mean(axis=1), 0.0)
    assert np.abs(theta - mm(W, router.params["prior"])).max() < 1e-6
    assert (theta[:, 0] == theta.max(axis=1)).all()


def test_ensemble_members_share_one_copy_of_the_training_prompts_in_memory_and_in_the_artifact(tmp_path) -> None:  # noqa: ANN001
    needs("ensemble")
    import zipfile

    data, _ = planted(n=200, seed=6)
    ens = create_router("ensemble", members=["knn", "bt", "mlp"]).fit(data)
    knn, bt, mlp = ens.members
    shared = data.Xn
    for arr in (knn.Xn, bt.Xn, bt.cost_model.Xn, mlp.cost_model.Xn, ens.cost_model.Xn):
        assert arr is shared
    path = save_router(ens, tmp_path / "ens.npz", meta={})
    with zipfile.ZipFile(path) as z:
        stored = [n for n in z.namelist() if n.endswith("Xn.npy")]
    assert len(stored) == 1  # five references, one entry
    loaded, _ = load_router(path)
    lk, lb, lm = loaded.members
    assert lk.Xn is lb.Xn is lb.cost_model.Xn is lm.cost_model.Xn is loaded.cost_model.Xn
    assert np.array_equal(lk.Xn, shared)
    a, b = ens.predict(data.X[:30]), loaded.predict(data.X[:30])
    assert np.array_equal(a.quality, b.quality) and np.array_equal(a.cost, b.cost)


def test_an_ensemble_saved_without_its_own_cost_model_still_loads_and_averages_its_members_costs() -> None:
    needs("ensemble")
    data, _ = planted(n=150, seed=7)
    ens = create_router("ensemble", members=["knn", "mf"]).fit(data)
    state = ens.get_state()
    del state["cost"]  # what an ensemble saved by an earlier turnout holds
    old = type(ens).from_state(state)
    assert old.cost_model is None
    knn, mf = ens.members
    probe = data.X[:20]
    got = old.predict(probe)
    assert np.allclose(got.cost, (knn.predict(probe).cost + mf.predict(probe).cost) / 2)
    assert np.allclose(got.quality, ens.predict(probe).quality)


def test_torch_training_runs_on_one_thread_and_gives_the_callers_setting_back() -> None:
    torch = pytest.importorskip("torch", reason="the torch routers need the 'ml' extra")
    from turnout.routing._torch import train_masked

    seen: list[int] = []
    net = torch.nn.Linear(4, 2)

    def forward(xb):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        return net(xb)

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(60, 4)).astype(np.float32), (rng.random((60, 2)) < 0.5).astype(float)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        epochs = train_masked(
            torch, net, forward, X, Y, seed=0, epochs=3, lr=1e-2, weight_decay=0.0, batch_size=16, val_fraction=0.2, patience=5
        )
        assert epochs == 3 and seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
