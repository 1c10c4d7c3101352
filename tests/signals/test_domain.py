"""DomainClassifier: fit/predict on synthetic and real CLINC150 slices, the threshold rules, the artifact."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, require
from turnout.embed import HashingEmbedder
from turnout.errors import ConfigError, DataError
from turnout.signals._linear import fit_softmax, kmeans
from turnout.signals.domain import OUT_OF_SCOPE, DomainClassifier, DomainSettings, choose_threshold
from turnout.signals.examples import read_examples


def blobs(n_per: int = 60, d: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Three tight clusters on the unit sphere, labelled a/b/c; and their centres."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(d, d)))[0][:3]
    X, y = [], []
    for i, c in enumerate(centres):
        pts = c + 0.15 * rng.normal(size=(n_per, d))
        X.append(pts / np.linalg.norm(pts, axis=1, keepdims=True))
        y += ["abc"[i]] * n_per
    return np.concatenate(X).astype(np.float32), y, centres


def test_softmax_and_kmeans_learn_separable_data():
    X, y, _ = blobs()
    yi = np.array(["abc".index(v) for v in y])
    model = fit_softmax(X, yi, 3, epochs=30)
    assert np.mean(model.probs(X).argmax(1) == yi) > 0.98
    assert np.allclose(model.probs(X).sum(1), 1.0, atol=1e-5)
    centres, labels = kmeans(X, 3, seed=1)
    # each found cluster is (almost) one true cluster
    for j in range(3):
        members = yi[labels == j]
        assert len(members) and np.bincount(members).max() / len(members) > 0.95
    assert np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="labels"):
        fit_softmax(X, yi + 5, 3)


def test_predicts_domains_and_refuses_far_prompts():
    X, y, centres = blobs()
    clf = DomainClassifier.fit(X, y, embedder="test", settings=DomainSettings(subtopic_examples=20))
    preds = clf.predict_batch(X)
    assert np.mean([p.label == t for p, t in zip(preds, y)]) > 0.95
    p = clf.predict(centres[1])
    assert p.label == "b" and not p.out_of_scope and p.probability > 0.9 and set(p.scores) == {"a", "b", "c"}
    far = np.ones(16, dtype=np.float32) - 0.5 * (centres[0] + centres[1] + centres[2])
    q = clf.predict(far / np.linalg.norm(far))
    assert q.out_of_scope and q.label == OUT_OF_SCOPE and q.nearest in "abc" and q.similarity < clf.threshold
    # the default rule refuses about 2% of in-scope rows on its (out-of-fold) validation
    assert clf.choice is not None and clf.choice.validation.startswith("3-fold")
    assert 0.005 <= clf.choice.in_scope_rejected <= 0.04


def test_threshold_rules():
    sims_in = np.linspace(0.5, 1.0, 101)
    sims_out = np.array([0.1, 0.2, 0.3, 0.55])
    rate = choose_threshold(sims_in, sims_out, DomainSettings(reject_in_scope=0.1), "v")
    assert rate.threshold == pytest.approx(np.quantile(sims_in, 0.1))
    # 0.55 is the threshold itself: not under it, so not refused
    assert rate.in_scope_rejected == pytest.approx(0.1, abs=0.011) and rate.oos_recall == 0.75
    bal = choose_threshold(sims_in, sims_out, DomainSettings(rule="balanced", min_oos=2), "v")
    # catching the 4th out-of-scope row (+0.25 recall) is worth refusing 11 in-scope rows (-0.109): the mean of
    # the two rates is best just above 0.55, at the midpoint to the next similarity
    assert bal.threshold == pytest.approx(0.5525) and bal.oos_recall == 1.0
    assert bal.in_scope_rejected == pytest.approx(11 / 101)
    few = choose_threshold(sims_in, sims_out, DomainSettings(rule="balanced", min_oos=10), "v")
    assert few.threshold == pytest.approx(np.quantile(sims_in, 0.02)) and "fewer than 10" in few.rule
    with pytest.raises(DataError):
        choose_threshold(np.zeros(0), sims_out, DomainSettings(), "v")
    with pytest.raises(ConfigError, match="rule"):
        DomainSettings(rule="magic")


def test_validation_rows_choose_the_threshold():
    X, y, _ = blobs()
    Xv, yv, _ = blobs(n_per=20, seed=5)
    clf = DomainClassifier.fit(X, y, embedder="test", val_vectors=Xv, val_labels=yv)
    assert clf.choice is not None and clf.choice.validation == "the validation rows given"
    assert clf.choice.n_in_scope == 60 and clf.threshold == pytest.approx(np.quantile(clf.similarity(Xv), 0.02), abs=1e-6)


def test_out_of_scope_rows_are_never_fitted():
    X, y, _ = blobs()
    noise = np.random.default_rng(9).normal(size=(30, 16)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    clf = DomainClassifier.fit(np.concatenate([X, noise]), y + [OUT_OF_SCOPE] * 30, embedder="test")
    assert clf.domains == ["a", "b", "c"] and OUT_OF_SCOPE not in clf.domains
    assert clf.choice is not None and clf.choice.n_out_of_scope == 30 and clf.choice.oos_recall is not None
    with pytest.raises(DataError, match="no in-scope"):
        DomainClassifier.fit(noise, [OUT_OF_SCOPE] * 30, embedder="test")


def test_artifact_round_trip_and_embedder_checks(tmp_path):
    X, y, _ = blobs()
    clf = DomainClassifier.fit(X, y, embedder="test", provenance={"embedder_id": "test-emb"})
    path = clf.save(tmp_path / "d.npz")
    back = DomainClassifier.load(path)
    assert back.domains == clf.domains and back.threshold == clf.threshold and back.settings == clf.settings
    a, b = clf.predict_batch(X[:5]), back.predict_batch(X[:5])
    assert [p.label for p in a] == [p.label for p in b]
    assert np.allclose([p.probability for p in a], [p.probability for p in b])
    with pytest.raises(ConfigError, match="dim 16"):
        back.predict(np.ones(8, dtype=np.float32))
    with pytest.raises(ConfigError, match="test-emb"):
        back.check_embedder(HashingEmbedder(dim=16))


def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "text":
        path.write_text("not an archive")
    elif how in ("no-meta", "bad-json", "wrong-kind", "missing-array", "bad-shape"):
        with np.load(path, allow_pickle=False) as npz:
            entries = {k: np.asarray(npz[k]) for k in npz.files}
        meta = json.loads(bytes(entries["__meta__"]).decode())
        if how == "no-meta":
            del entries["__meta__"]
        elif how == "bad-json":
            entries["__meta__"] = np.frombuffer(b"{not json", dtype=np.uint8)
        elif how == "wrong-kind":
            meta["kind"] = "jailbreak"
            entries["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        elif how == "missing-array":
            del entries["prototypes"]
        else:
            entries["prototypes"] = entries["prototypes"][:, :3]
        with open(path, "wb") as fh:
            np.savez(fh, **entries)


@pytest.mark.parametrize("how", ["truncated", "text", "no-meta", "bad-json", "wrong-kind", "missing-array", "bad-shape"])
def test_damaged_artifacts_are_data_errors_naming_the_file(tmp_path, how):
    X, y, _ = blobs()
    path = DomainClassifier.fit(X, y, embedder="test").save(tmp_path / "d.npz")
    _corrupt(path, how)
    with pytest.raises(DataError) as err:
        DomainClassifier.load(path)
    assert str(path) in str(err.value) and "fix:" in str(err.value)
    assert not isinstance(err.value.__cause__, zipfile.BadZipFile) or "not a turnout guard" in str(err.value)


def test_missing_artifact_and_bad_suffix(tmp_path):
    with pytest.raises(DataError, match="not found"):
        DomainClassifier.load(tmp_path / "none.npz")
    X, y, _ = blobs()
    with pytest.raises(DataError, match=".npz"):
        DomainClassifier.fit(X, y, embedder="test").save(tmp_path / "d.bin")


def test_real_clinc150_slice():
    """Four CLINC150 domains, 80 train rows each, hashing embedder: the real text, a cheap embedder."""
    path = require(DATA / "clinc150" / "clinc150.jsonl")
    rows = read_examples(path)
    keep = ("banking", "travel", "kitchen_and_dining", "auto_and_commute")
    train = [r for d in keep for r in [r for r in rows if r.split == "train" and r.label == d][:80]]
    train += [r for r in rows if r.split == "train" and r.label == OUT_OF_SCOPE][:40]
    test = [r for d in keep for r in [r for r in rows if r.split == "val" and r.label == d][:40]]
    emb = HashingEmbedder(dim=1024)
    clf = DomainClassifier.fit_examples(train, [], emb, embedder_name="hashing")
    preds = clf.predict_batch(emb.embed([r.text for r in test]))
    acc = np.mean([p.nearest == r.label for p, r in zip(preds, test)])
    assert acc > 0.75, acc
    # a question of a domain it was not given is further from every prototype than in-domain ones, on average
    other = [r.text for r in rows if r.split == "val" and r.label == "credit_cards"][:40]
    assert clf.similarity(emb.embed(other)).mean() < clf.similarity(emb.embed([r.text for r in test])).mean()
