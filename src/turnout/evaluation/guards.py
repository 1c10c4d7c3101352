"""Evaluation of the learned guards: ``turnout guards eval domain|jailbreak TEST [--train TRAIN]``.

Each ``evaluate_<kind>(test_path, train_path=None, **options) -> dict`` fits the
guard where it learns (or loads ``artifact``), scores the test rows at the
guard's default operating point and returns a JSON-able report. Latency is per
request, one prompt at a time, *embedding included* (an uncached embedder with
one thread, as the gateway runs it).

**Which rows are test rows.** A file's ``split: test`` rows; if it has none but
has ``val`` rows (CLINC150 as shared: train and val only), the ``val`` rows, said
so in ``notes``; a file without splits is all test. Training reads TRAIN's
``train`` rows (and rows without a split); TRAIN's ``val`` rows tune the
domain guard's threshold unless they are the test rows, in which case the
threshold is tuned out of fold on the training rows. So a test row is never
fitted or tuned on; texts present in both are counted in ``overlap``.

Example::

    report = evaluate_domain("../shared/data/clinc150/clinc150.jsonl")
    report["domain_accuracy"], report["oos_recall"], report["p50_ms"]
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from turnout.embed import Embedder, create_embedder
from turnout.errors import DataError
from turnout.evaluation.metrics import auc
from turnout.signals.domain import OUT_OF_SCOPE, DomainClassifier, DomainSettings
from turnout.signals.examples import Example, read_examples, read_texts
from turnout.signals.jailbreak import ATTACK, JailbreakDetector, JailbreakSettings

#: length bands (characters) of the per-length table: the data's attacks and benign prompts differ in length
LENGTH_BANDS = ((0, 64), (64, 256), (256, 1024), (1024, 4096), (4096, None))


# ------------------------------------------------------------------ shared
def split_rows(test_path: str, train_path: str | None) -> tuple[list[Example], list[Example], list[Example], list[str]]:
    """``(test, train, val, notes)`` by the rule in the module docstring; ``train`` is empty without a TRAIN file."""
    notes: list[str] = []
    rows = read_examples(test_path)
    test = [r for r in rows if r.split == "test"]
    test_is_val = False
    if not test:
        if any(r.split == "val" for r in rows):
            test = [r for r in rows if r.split == "val"]
            test_is_val = True
            notes.append(
                f"{Path(test_path).name} has no 'test' split: its {len(test)} 'val' rows are the test rows, "
                "never fitted or tuned on"
            )
        elif any(r.split == "train" for r in rows):
            raise DataError(
                "no 'test' or 'val' rows to test on",
                file=test_path,
                fix="pass a test file, or one with split 'test' (or 'val') rows",
            )
        else:
            test = rows
    if train_path is None and any(r.split == "train" for r in rows):
        train_path = test_path
        notes.append(f"no --train: fitting on the 'train' rows of {Path(test_path).name}")
    if train_path is None:
        return test, [], [], notes
    same = Path(train_path).resolve() == Path(test_path).resolve()
    if same and not any(r.split for r in rows):
        raise DataError(
            "TEST and TRAIN are the same file and it has no 'split' column",
            file=test_path,
            fix="give each row a split (train/val/test), or pass separate files",
        )
    trows = rows if same else read_examples(train_path)
    train = [r for r in trows if r.split in (None, "train")]
    val = [] if (same and test_is_val) else [r for r in trows if r.split == "val"]
    return test, train, val, notes


def latency(fn: Callable[[str], Any], texts: Sequence[str]) -> dict[str, float]:
    """Per-call milliseconds of ``fn`` over ``texts`` (after two warm-up calls): p50, p99, mean, n."""
    for t in texts[:2]:
        fn(t)
    ms = []
    for t in texts:
        start = time.perf_counter()
        fn(t)
        ms.append((time.perf_counter() - start) * 1000)
    a = np.array(ms) if ms else np.zeros(1)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": len(ms),
    }


def latency_env() -> dict[str, Any]:
    """What the latency figures depend on besides the code: thread settings and the machine's load.

    numpy's OpenBLAS keeps its threads spinning for a while after a large product (a fit):
    without ``OPENBLAS_NUM_THREADS=1`` they took the cores from ONNX Runtime and MiniLM's
    p50 went from 3 ms to 20 ms on a 2-core machine.
    """
    import os

    return {
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }


def _warn_threads(notes: list[str]) -> None:
    import os

    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        notes.append(
            "OPENBLAS_NUM_THREADS is not 1: numpy's threads, still spinning after the fit, can slow the "
            "latency figures several-fold on a small machine (set OPENBLAS_NUM_THREADS=1)"
        )


def _sample(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    idx = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
    return [texts[i] for i in idx]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties half: the rank form of ROC AUC (None without both)."""
    y = np.r_[np.ones(len(pos), dtype=bool), np.zeros(len(neg), dtype=bool)]
    a = auc(y, np.concatenate([pos, neg]))
    return None if math.isnan(a) else a


def _embedders(name: str, cache_dir: str | None, progress: bool) -> tuple[Embedder, Embedder]:
    """(cached embedder for the batch work, uncached one-thread embedder for the latency figures)."""
    return (
        create_embedder(name, cache_dir=cache_dir, progress=progress, threads=None),
        create_embedder(name, cache_dir=cache_dir, progress=False, cache=False),
    )


# ------------------------------------------------------------------ domain
def evaluate_domain(
    test_path: str,
    train_path: str | None = None,
    *,
    embedder: str = "minilm",
    artifact: str | None = None,
    rule: str = "reject_rate",
    reject_in_scope: float = 0.02,
    latency_samples: int = 300,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit :class:`DomainClassifier` on TRAIN (or load ``artifact``) and score TEST; returns the report.

    Keys: ``domain_accuracy`` (in-scope rows whose most likely domain is right, rejection
    aside), ``in_scope_accuracy`` (accepted *and* right), ``in_scope_rejected``,
    ``oos_recall``, ``oos_precision``, ``overall_accuracy`` (in-scope accepted and right, or
    out-of-scope rejected, over every row), ``balanced_accuracy`` (the mean of in-scope accuracy
    and out-of-scope recall), ``oos_auc``, ``per_domain``, ``threshold`` and how
    it was chosen, ``test_curve`` (recall at other in-scope rejection rates, on test,
    for reading only), ``p50_ms``/``p99_ms``/``mean_ms`` (embedding included),
    ``classifier_p50_ms`` (without it), ``fit_s``, ``counts``, ``split``, ``notes``.
    """
    test, train, val, notes = split_rows(test_path, train_path)
    emb, emb_live = _embedders(embedder, cache_dir, progress)
    t0 = time.perf_counter()
    if artifact is not None:
        clf = DomainClassifier.load(artifact)
        clf.check_embedder(emb)
        notes.append(f"loaded {artifact}: nothing fitted")
        made_from = clf.provenance.get("examples")
        if (
            made_from
            and Path(made_from).resolve() == Path(test_path).resolve()
            and any(r.split == "val" for r in test)
            and clf.provenance.get("n_val")
        ):
            notes.append(
                f"the artifact was made from {Path(test_path).name} with its 'val' rows tuning the "
                "threshold, and those are the test rows here: the figures are optimistic"
            )
    else:
        if not train:
            raise DataError(
                "the domain guard needs training rows",
                file=test_path,
                fix="pass --train TRAIN (JSONL {text, label}), or --param artifact=FILE.npz",
            )
        settings = DomainSettings(rule=rule, reject_in_scope=reject_in_scope)
        clf = DomainClassifier.fit_examples(
            train, val, emb, embedder_name=embedder, settings=settings, provenance={"train": train_path or test_path}
        )
    fit_s = time.perf_counter() - t0
    unknown = sorted({str(r.label) for r in test} - set(clf.domains) - {OUT_OF_SCOPE})
    if unknown:
        notes.append(f"test labels the classifier does not know (counted as errors): {', '.join(unknown[:10])}")
    X = emb.embed([r.text for r in test])
    preds = clf.predict_batch(X)
    y = np.array([str(r.label) for r in test], dtype=object)
    inside = y != OUT_OF_SCOPE
    nearest = np.array([p.nearest for p in preds], dtype=object)
    rejected = np.array([p.out_of_scope for p in preds])
    sims = np.array([p.similarity for p in preds])
    right = nearest == y
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    rep: dict[str, Any] = {
        "kind": "domain",
        "domain_accuracy": _mean(right[inside]),
        "in_scope_accuracy": _mean(right[inside] & ~rejected[inside]),
        "in_scope_rejected": _mean(rejected[inside]),
        "oos_recall": _mean(rejected[~inside]),
        "oos_precision": _mean(~inside[rejected]),
        "overall_accuracy": float((np.sum(right & ~rejected & inside) + np.sum(rejected & ~inside)) / len(y)),
        "oos_auc": _auc(-sims[~inside], -sims[inside]),
        # in-scope rows outnumber out-of-scope ones 30 to 1 in CLINC150: the mean of the two accuracies weighs them evenly
        "balanced_accuracy": _mean_of(_mean(right[inside] & ~rejected[inside]), _mean(rejected[~inside])),
        "threshold": clf.threshold,
        "threshold_choice": asdict(clf.choice) if clf.choice else None,
        "per_domain": {
            d: {"n": int(np.sum(y == d)), "accuracy": _mean(right[y == d]), "rejected": _mean(rejected[y == d])}
            for d in sorted(set(y[inside]))
        },
        "test_curve": _curve(sims[inside], sims[~inside]),
        "counts": {
            "train": len(train),
            "val": len(val),
            "test_in_scope": n_in,
            "test_out_of_scope": n_out,
            "domains": len(clf.domains),
            "prototypes": len(clf.prototypes),
            "subtopics": len(clf.subtopic_owner),
        },
        "overlap": len({r.text for r in test} & {r.text for r in train}),
        "embedder": embedder,
        "fit_s": fit_s,
    }
    texts = _sample([r.text for r in test], latency_samples)
    full = latency(lambda t: clf.predict(emb_live.embed_one(t)), texts)
    vecs = {t: v for t, v in zip(texts, emb.embed(texts))}
    rep.update(
        {k: v for k, v in full.items() if k != "n"},
        latency_n=full["n"],
        classifier_p50_ms=latency(lambda t: clf.predict(vecs[t]), texts)["p50_ms"],
        latency_env=latency_env(),
    )
    _warn_threads(notes)
    rep["split"] = {
        "test": _describe(test_path, test),
        "train": train_path or (test_path if train else None),
        "threshold_tuned_on": clf.choice.validation if clf.choice else "artifact",
    }
    rep["notes"] = notes
    return rep


def _mean(a: np.ndarray) -> float | None:
    return float(np.mean(a)) if len(a) else None


def _mean_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2


def _curve(sims_in: np.ndarray, sims_out: np.ndarray) -> list[dict[str, float]]:
    """OOS recall at thresholds rejecting 1, 2, 5 and 10% of in-scope test rows (reading only, never chosen on)."""
    if not len(sims_in) or not len(sims_out):
        return []
    out = []
    for r in (0.01, 0.02, 0.05, 0.10):
        t = float(np.quantile(sims_in, r))
        out.append({"in_scope_rejected": r, "threshold": t, "oos_recall": float(np.mean(sims_out < t))})
    return out


def _describe(path: str, rows: Sequence[Example]) -> str:
    splits = sorted({r.split or "none" for r in rows})
    return f"{path} ({len(rows)} rows, split {'/'.join(splits)})"


# ------------------------------------------------------------------ jailbreak
def evaluate_jailbreak(
    test_path: str,
    train_path: str | None = None,
    *,
    embedder: str = "minilm",
    artifact: str | None = None,
    benign: Sequence[str] = (),
    wild: Sequence[str] = (),
    probes: str | None = None,
    holdout_sources: bool = True,
    latency_samples: int = 300,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit :class:`JailbreakDetector` on TRAIN (+ ``benign`` files) or load ``artifact``; score TEST.

    Keys: ``detection_rate``, ``false_positive_rate`` (TEST, default threshold),
    ``auc`` (final score), ``threshold``, ``per_source: {SOURCE: {n, flagged_rate, by_label}}``,
    ``per_length_band``, ``parts`` (how often each part fired, per label),
    ``held_out_sources`` (each attack source left out of training: its detection
    then, beside its detection when trained on), ``probes`` (per family, when a probe
    file is given), ``wild_benign`` (false positives on the unseen rows of ``wild``
    files), ``p50_ms``/``p99_ms``/``mean_ms`` (embedding included), ``fit_s``, ``notes``.
    """
    test, train, _, notes = split_rows(test_path, train_path)
    # every input is read (and checked) before the minutes of fitting
    extra = read_texts(list(benign)) if benign else []
    probe_rows = read_examples(probes) if probes is not None else []
    attack_labels(probe_rows, str(probes))
    wild_texts = {Path(p).name: read_texts([p], splits=("val", "test")) for p in wild}
    emb, emb_live = _embedders(embedder, cache_dir, progress)
    t0 = time.perf_counter()
    if artifact is not None:
        det = JailbreakDetector.load(artifact, emb)
        notes.append(f"loaded {artifact}: nothing fitted")
    else:
        if not train:
            raise DataError(
                "the jailbreak detector needs training rows",
                file=test_path,
                fix="pass --train TRAIN ({text, label: attack|benign, source}) or --param artifact=FILE",
            )
        if not extra:
            notes.append(
                "trained without extra benign prompts (--param benign=FILE,...): the shared data's benign "
                "rows are one kind, so ordinary short user prompts will be flagged far more than here"
            )
        det = _fit(train, emb, embedder, extra)
    fit_s = time.perf_counter() - t0
    texts = [r.text for r in test]
    X = emb.embed(texts)
    verdicts = det.score_batch(texts, X)
    flagged = np.array([v.flagged for v in verdicts])
    scores = np.array([v.score for v in verdicts])
    y = attack_labels(test, test_path)
    rep: dict[str, Any] = {
        "kind": "jailbreak",
        "detection_rate": _mean(flagged[y]),
        "false_positive_rate": _mean(flagged[~y]),
        "auc": _auc(scores[y], scores[~y]),
        "threshold": det.threshold,
        "gibberish_threshold": det.gibberish_threshold,
        "counts": {
            "test_attack": int(y.sum()),
            "test_benign": int((~y).sum()),
            "train": len(train),
            "extra_benign": det.provenance.get("n_extra_benign"),
        },
        "per_source": _per_source(test, flagged, y),
        "per_length_band": _per_band(test, flagged, y),
        "parts": _parts(verdicts, y, det.threshold),
        "training": {
            k: det.provenance.get(k)
            for k in ("threshold_rule", "oof_fpr_at_threshold", "oof_detection_at_threshold", "pattern_hit_rate_benign")
        },
        "embedder": embedder,
        "fit_s": fit_s,
    }
    if holdout_sources and artifact is None:
        rep["held_out_sources"] = _held_out(train, test, X, y, flagged, emb, embedder, extra)
    if probes is not None:
        rep["probes"] = _probes(det, probes, probe_rows)
    if wild:
        rep["wild_benign"] = {name: _wild(det, texts) for name, texts in wild_texts.items()}
    sample = _sample(texts, latency_samples)
    live = det.with_embedder(emb_live)
    rep.update(
        {k: v for k, v in latency(live.score, sample).items() if k != "n"}, latency_n=len(sample), latency_env=latency_env()
    )
    _warn_threads(notes)
    rep["split"] = {"test": _describe(test_path, test), "train": train_path}
    rep["notes"] = notes
    return rep


def _fit(train: Sequence[Example], emb: Embedder, name: str, extra: Sequence[str]) -> JailbreakDetector:
    attack_labels(train, "TRAIN")
    return JailbreakDetector.fit(
        [r.text for r in train],
        [str(r.label) for r in train],
        emb,
        embedder_name=name,
        sources=[r.source for r in train],
        extra_benign=extra,
        settings=JailbreakSettings(),
    )


def attack_labels(rows: Sequence[Example], where: str) -> np.ndarray:
    """Per row, True for an attack: a DataError (naming ``where`` and the row) when a label is not attack or benign."""
    bad = next((r for r in rows if r.label not in ("attack", "benign")), None)
    if bad is not None:
        raise DataError(
            f"label {bad.label!r} is not 'attack' or 'benign'",
            file=where,
            row=bad.row,
            column="label",
            fix="label each row 'attack' or 'benign'",
        )
    return np.array([r.label == ATTACK for r in rows])


def _rate(mask: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    return {"n": int(mask.sum()), "flagged_rate": _mean(flagged[mask])}


def _per_source(rows: Sequence[Example], flagged: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    src = np.array([r.source or "unknown" for r in rows], dtype=object)
    out: dict[str, Any] = {}
    for s in sorted(set(src)):
        m = src == s
        out[s] = {
            **_rate(m, flagged),
            "by_label": {
                lab: _rate(m & (y == (lab == ATTACK)), flagged)
                for lab in ("attack", "benign")
                if np.any(m & (y == (lab == ATTACK)))
            },
        }
    return out


def _band_name(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi}" if hi is not None else f">={lo}"


def _per_band(rows: Sequence[Example], flagged: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    n = np.array([len(r.text) for r in rows])
    out = {}
    for lo, hi in LENGTH_BANDS:
        m = (n >= lo) & (n < (hi if hi is not None else np.inf))
        out[_band_name(lo, hi)] = {"attack": _rate(m & y, flagged), "benign": _rate(m & ~y, flagged)}
    return out


def _parts(verdicts: Sequence[Any], y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Share of attack and benign rows on which each part fired."""
    fired: dict[str, list[bool]] = defaultdict(list)
    for v in verdicts:
        f = v.features
        fired["classifier"].append(f["classifier"] >= threshold)
        fired["rescanned"].append(bool(f.get("rescanned")) and f["rescanned"]["score"] >= threshold)
        fired["patterns"].append(bool(f.get("patterns")))
        fired["gibberish"].append(any(r.startswith("gibberish") for r in v.reasons))
        fired["obfuscation_seen"].append(bool(f.get("obfuscation")))
    return {k: {"attack": _mean(np.array(v)[y]), "benign": _mean(np.array(v)[~y])} for k, v in fired.items()}


def _held_out(
    train: Sequence[Example],
    test: Sequence[Example],
    X: np.ndarray,
    y: np.ndarray,
    flagged: np.ndarray,
    emb: Embedder,
    name: str,
    extra: Sequence[str],
) -> dict[str, Any]:
    """For each attack source: refit without its attack rows, then its test detection (and the FPR).

    ``X`` is the test rows' embeddings (as scored already), ``y`` their labels and ``flagged`` the verdicts
    of the guard trained on every source.
    """
    srcs = sorted({r.source for r in train if r.label == ATTACK and r.source})
    tsrc = np.array([r.source for r in test], dtype=object)
    texts = [r.text for r in test]
    out: dict[str, Any] = {}
    for s in srcs:
        m = (tsrc == s) & y
        if not m.any():
            continue
        kept = [r for r in train if not (r.source == s and r.label == ATTACK)]
        if not any(r.label == ATTACK for r in kept):
            continue
        det = _fit(kept, emb, name, extra)
        f = np.array([v.flagged for v in det.score_batch(texts, X)])
        out[s] = {
            "n_test_attacks": int(m.sum()),
            "detection_trained_on": _mean(flagged[m]),
            "detection_held_out": _mean(f[m]),
            "false_positive_rate_held_out": _mean(f[~y]),
            "threshold_held_out": det.threshold,
        }
    return out


def _probes(det: JailbreakDetector, path: str, rows: Sequence[Example]) -> dict[str, Any]:
    y = attack_labels(rows, path)
    v = det.score_batch([r.text for r in rows])
    f = np.array([x.flagged for x in v])
    fam = np.array([r.family or "unknown" for r in rows], dtype=object)
    per = {}
    for k in sorted(set(zip(fam, y)), key=lambda t: (not t[1], t[0])):
        m = (fam == k[0]) & (y == k[1])
        per[k[0]] = {"label": "attack" if k[1] else "benign", **_rate(m, f)}
    missed = [
        {"family": r.family, "text": r.text[:120], "score": round(x.score, 3), "reasons": x.reasons}
        for r, x, fl, a in zip(rows, v, f, y)
        if fl != a
    ]
    return {"file": path, "detection_rate": _mean(f[y]), "false_positive_rate": _mean(f[~y]), "per_family": per, "errors": missed}


def _wild(det: JailbreakDetector, texts: Sequence[str]) -> dict[str, Any]:
    f = np.array([v.flagged for v in det.score_batch(texts)])
    return {"n": len(texts), "false_positive_rate": _mean(f)}
