"""The capability-profile router, including cold start of a model absent from training (real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.evaluation.metrics import auc
from turnout.routing import create_router

from routing_synthetic import planted

DATA_REL = Path("routerbench") / "routerbench.parquet"


def test_add_model_from_probes_on_synthetic() -> None:
    data, _ = planted(n=400, seed=0)
    # train without B; B is good exactly where A is bad
    keep = [0, 2]
    train = type(data)(
        X=data.X,
        scores=data.scores[:, keep],
        costs=data.costs[:, keep],
        models=["A", "C"],
        model_cards={"A": {"input_per_mtok": 1.0}, "C": {"input_per_mtok": 0.1}},
    )
    router = create_router("profile").fit(train)
    test, cluster = planted(n=300, seed=0)
    router.add_model("B", test.X[:40], test.scores[:40, 1], card={"input_per_mtok": 1.0})
    pred = router.predict(test.X[40:])
    assert pred.models == ["A", "C", "B"]
    q_b = pred.quality[:, 2]
    # B's predicted quality is high on cluster 1, low on cluster 0
    assert q_b[cluster[40:] == 1].mean() > q_b[cluster[40:] == 0].mean() + 0.2
    # its cost follows the card's price ratio (about the price of A)
    assert pred.cost[:, 2].mean() > pred.cost[:, 1].mean() * 3
    with pytest.raises(RoutingError, match="already"):
        router.add_model("B", test.X[:5], test.scores[:5, 1])


@pytest.mark.slow
def test_cold_start_model_on_routerbench(data_dir: Path) -> None:
    """Hold each real model out of training, add it back from 50 probe prompts, score it on test prompts.

    Its predicted quality must rank its true outcomes clearly better than a
    constant (AUC 0.5) and fit them better (Brier) than giving it the average
    of the other models' predictions.
    """
    pq = pytest.importorskip("pyarrow.parquet")
    from turnout.embed.hashing import HashingEmbedder

    path = data_dir / DATA_REL
    if not path.exists():
        pytest.skip(f"{path} is absent")
    t = pq.read_table(path, columns=["prompt_id", "prompt", "model", "score", "cost_usd", "split"]).to_pydict()
    ids = sorted(set(t["prompt_id"]))
    rng = np.random.default_rng(0)
    split_of = dict(zip(t["prompt_id"], t["split"]))
    train_ids = [i for i in ids if split_of[i] == "train"]
    test_ids = [i for i in ids if split_of[i] == "test"]
    # a subset keeps the (pure-Python) hashing embedder within seconds on a small machine
    ids = list(rng.choice(train_ids, 700, replace=False)) + list(rng.choice(test_ids, 400, replace=False))
    row = {p: i for i, p in enumerate(ids)}
    models = sorted(set(t["model"]))
    S = np.full((len(ids), len(models)), np.nan)
    C = np.full_like(S, np.nan)
    text: dict[str, str] = {}
    for pid, prompt, m, s, c in zip(t["prompt_id"], t["prompt"], t["model"], t["score"], t["cost_usd"]):
        if pid in row:
            S[row[pid], models.index(m)] = s
            C[row[pid], models.index(m)] = c
            text[pid] = prompt
    X = HashingEmbedder(dim=1024).embed([text[p] for p in ids])
    tr, te = np.arange(700), np.arange(700, len(ids))

    from turnout.routing import TrainingData

    aucs, aucs_avg, brier, brier_avg = [], [], [], []
    for h in range(len(models)):
        keep = [j for j in range(len(models)) if j != h]
        data = TrainingData(X=X[tr], scores=S[tr][:, keep], costs=C[tr][:, keep], models=[models[j] for j in keep])
        router = create_router("profile").fit(data)
        avg_others = router.predict(X[te]).quality.mean(axis=1)
        probe = rng.choice(tr, 50, replace=False)
        router.add_model(models[h], X[probe], S[probe, h], costs_probe=C[probe, h])
        q = router.predict(X[te]).quality[:, -1]
        y = S[te, h]
        ok = ~np.isnan(y)
        aucs.append(auc(y[ok] > 0.5, q[ok]))
        aucs_avg.append(auc(y[ok] > 0.5, avg_others[ok]))
        brier.append(np.mean((q[ok] - y[ok]) ** 2))
        brier_avg.append(np.mean((avg_others[ok] - y[ok]) ** 2))
    assert np.mean(aucs) > 0.6, aucs  # clearly better than a constant
    assert np.mean(brier) < np.mean(brier_avg), (brier, brier_avg)  # better than "the average of the others"
    assert np.mean(aucs) > np.mean(aucs_avg) - 0.02, (aucs, aucs_avg)


def test_as_blend_recovers_a_profile_that_is_a_blend_and_bounds_the_error_otherwise() -> None:
    from turnout.routing import TrainingData

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 16))
    S = (rng.random((400, 4)) < np.linspace(0.2, 0.8, 4)).astype(float)
    router = create_router("profile", clusters=8).fit(
        TrainingData(X=X, scores=S, costs=np.ones_like(S), models=["a", "b", "c", "d"])
    )
    F = router.cold_start_features(X[:5])
    assert np.allclose(F.sum(axis=1), 1.0)
    assert np.allclose(router.quality_from_features(F, "c"), router.predict(X[:5]).quality[:, 2])
    P = router.profiles
    # from here on the router is only a holder of profiles: a fifth one is set by hand, not added
    router.profiles = np.vstack([P, 0.1 + 0.5 * P[0] + 0.3 * P[2]])  # an exact blend of a and c, plus an intercept
    router.models = [*router.models, "blend"]
    intercept, w, residual = router.as_blend("blend", ["a", "b", "c", "d"])
    assert residual < 1e-9 and np.isclose(intercept, 0.1) and np.allclose(w, [0.5, 0.0, 0.3, 0.0], atol=1e-9)
    q = router.cold_start_features(X[:50]) @ router.profiles.T
    assert np.allclose(intercept + q[:, :4] @ w, q[:, 4])
    # a profile outside the span: the blend's error on any prompt stays within the residual it reports
    router.profiles = np.vstack([P, rng.random(P.shape[1])])
    intercept, w, residual = router.as_blend("blend", ["a", "b"])
    q = router.cold_start_features(X) @ router.profiles.T
    assert residual > 0.01 and np.abs(intercept + q[:, :2] @ w - q[:, 4]).max() <= residual + 1e-12
