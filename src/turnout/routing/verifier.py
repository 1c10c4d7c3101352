"""The learned verifier: the probability that an answer is right, from the prompt, the answer and the answers beside it.

A logistic regression over features of an :class:`~turnout.routing.acceptance.AnswerView`
(:class:`VerifierFeatures`): who answered; which of the other answers agree
with it and who gave them (agreeing with a strong model says more than
agreeing with a weak one); whether a multiple-choice answer names an option
and which letter (models have favourite letters); whether its code parses; its
length; and, when an embedder is given, the prompt's and the answer's
embeddings. Who answered is crossed with the rest, so each model gets its own
weights where it has the data. Fitting needs scikit-learn (``pip install
'turnout[ml]'``); predicting is numpy only.

Pure: no I/O beyond :func:`save_verifier` / :func:`load_verifier` (an ``.npz``
of arrays plus a JSON metadata entry, no pickle, like router artifacts). The
embedder is injected as a function (``routing`` does not import ``embed``), so
the gateway passes its own.

Example::

    feats = VerifierFeatures(models=["small", "big"])
    v = Verifier.fit(feats, views, labels)                  # views: AnswerView, labels: 0/1
    save_verifier(v, "verifier.npz", meta={"table": "rb.parquet"})
    signal = VerifierSignal(load_verifier("verifier.npz")[0])
    signal.confidence(AnswerView(prompt, "B", "small", others=("B",), others_models=("big",)))
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError, MissingDependency, RoutingError
from turnout.routing import answers
from turnout.routing.answer_view import AnswerView

#: texts in, one unit row per text out (e.g. ``Embedder.embed``)
EmbedFn = Callable[[Sequence[str]], np.ndarray]

FORMAT_VERSION = 1
#: letters whose choice is a feature of its own (models favour some); later letters share one
LETTERS = "ABCDE"
#: the features each answering model gets its own weight for (crossed with the answerer's one-hot)
#: how many options a multiple-choice question offers, as features (2: a coin flip agrees half the time)
OPTION_COUNTS = ("2", "3", "4", "5+")
_CROSSED = (
    "agree_share",
    "has_others",
    "choice_ok",
    "code_ok",
    "code_bad",
    "asks_code",
    *(f"letter_{x}" for x in LETTERS),
    *(f"options_{k}" for k in OPTION_COUNTS),
)


@dataclass(frozen=True)
class VerifierFeatures:
    """Turns answer views into a feature matrix; ``models`` fixes the columns (unknown models share one slot).

    ``embed_dim`` > 0 adds the prompt's and the answer's embeddings (from the
    embedder the verifier was trained with) and their cosine.
    """

    models: tuple[str, ...]
    embed_dim: int = 0

    def names(self) -> list[str]:
        """The column names, in order."""
        who = [*self.models, "(other)"]
        base = [
            "agree_share",
            "has_others",
            "n_others",
            "is_mc",
            "choice_ok",
            "choice_other",
            "asks_code",
            "has_code",
            "code_ok",
            "code_bad",
            "log_len",
            *(f"letter_{x}" for x in LETTERS),
            *(f"options_{k}" for k in OPTION_COUNTS),
            *(f"agree_share*options_{k}" for k in OPTION_COUNTS),
        ]
        out = base + [f"by={m}" for m in who] + [f"agree={m}" for m in who]
        out += [f"by={m}*{f}" for m in who for f in _CROSSED]
        out += [f"by={a}*agree={b}" for a in who for b in who]
        if self.embed_dim:
            out += [f"prompt_emb_{i}" for i in range(self.embed_dim)]
            out += [f"answer_emb_{i}" for i in range(self.embed_dim)] + ["cosine"]
        return out

    def _slot(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            return len(self.models)

    def matrix(self, views: Sequence[AnswerView], embed: EmbedFn | None = None) -> np.ndarray:
        """The n × ``len(names())`` float32 features of ``views`` (embeddings only with ``embed_dim``)."""
        k = len(self.models) + 1
        memo = _Memo()
        rows = [self._row(v, k, memo) for v in views]
        X = np.asarray(rows, dtype=np.float32).reshape(len(views), -1)
        if not self.embed_dim:
            return X
        if embed is None:
            raise RoutingError("this verifier was trained with embeddings: give it the embedder (embed=...)")
        P = np.asarray(embed([v.prompt for v in views]), dtype=np.float32).reshape(len(views), -1)
        A = np.asarray(embed([v.answer or " " for v in views]), dtype=np.float32).reshape(len(views), -1)
        if P.shape[1] != self.embed_dim:
            raise RoutingError(
                f"the embedder gives {P.shape[1]}-d vectors; this verifier was trained on "
                f"{self.embed_dim}-d ones: use the embedder it names in its metadata"
            )
        out: np.ndarray = np.c_[X, P, A, (P * A).sum(axis=1)]
        return out

    def _row(self, v: AnswerView, k: int, memo: _Memo) -> list[float]:
        options = answers.offered_choices(v.prompt)
        choice = answers.extract_choice(v.answer, options) if options else None
        key = memo.key(v.prompt, v.answer)
        same = [key is not None and memo.key(v.prompt, o) == key for o in v.others]
        code = answers.python_code(v.answer)
        code_ok = code is not None and answers.parses_as_python(code)
        code_bad = (code is not None and not code_ok) or (code is None and bool(answers.code_blocks(v.answer)))
        letters = [float(choice == x) for x in LETTERS]
        n_opt = len(options)
        opts = [float(n_opt == 2), float(n_opt == 3), float(n_opt == 4), float(n_opt >= 5)]
        share = (sum(same) / len(same)) if same else 0.0
        asks_code = float(memo.asks_code(v.prompt))
        base = {
            "agree_share": share,
            "has_others": float(bool(same)),
            "choice_ok": float(choice is not None),
            "code_ok": float(code_ok),
            "code_bad": float(code_bad),
            "asks_code": asks_code,
            **{f"letter_{x}": f for x, f in zip(LETTERS, letters)},
            **{f"options_{c}": f for c, f in zip(OPTION_COUNTS, opts)},
        }
        row = [
            share,
            base["has_others"],
            math.log1p(len(v.others)),
            float(bool(options)),
            base["choice_ok"],
            float(bool(options) and choice is None and bool(v.answer.strip())),
            asks_code,
            float(code is not None),
            base["code_ok"],
            base["code_bad"],
            math.log1p(len(v.answer)) / 10,
            *letters,
            *opts,
            *(share * f for f in opts),
        ]
        by = [0.0] * k
        by[self._slot(v.model)] = 1.0
        agree = [0.0] * k  # +1 agrees, -1 disagrees, per model that gave another answer (0: did not answer)
        for o_model, s in zip(v.others_models, same):
            agree[self._slot(o_model)] = 1.0 if s else -1.0
        me = self._slot(v.model)
        crossed = [0.0] * (k * len(_CROSSED))
        crossed[me * len(_CROSSED) : (me + 1) * len(_CROSSED)] = [base[f] for f in _CROSSED]
        pair = [0.0] * (k * k)
        pair[me * k : (me + 1) * k] = agree
        return row + by + agree + crossed + pair


class _Memo:
    """Per-call caches: few-shot prompts are long, and one prompt comes with many answers to read.

    (The options a prompt offers are cached by :func:`turnout.routing.answers.offered_choices` itself.)
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], str | None] = {}
        self._code: dict[str, bool] = {}

    def asks_code(self, prompt: str) -> bool:
        if prompt not in self._code:
            self._code[prompt] = answers.asks_for_code(prompt)
        return self._code[prompt]

    def key(self, prompt: str, answer: str) -> str | None:
        k = (prompt, answer)
        if k not in self._keys:
            self._keys[k] = answers.comparable(prompt, answer)
        return self._keys[k]


@dataclass
class Verifier:
    """A fitted verifier: standardised features -> logistic regression -> P(answer is right).

    ``report`` records how it was fitted (rows, positives, the regularisation
    chosen by cross-validation, the held-out Brier score and AUC).
    """

    features: VerifierFeatures
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        features: VerifierFeatures,
        views: Sequence[AnswerView],
        labels: Sequence[float] | np.ndarray,
        *,
        embed: EmbedFn | None = None,
        X: np.ndarray | None = None,
        groups: Sequence[Any] | np.ndarray | None = None,
        cs: Sequence[float] = (0.03, 0.3),
        folds: int = 4,
        seed: int = 0,
    ) -> Verifier:
        """Fit on ``views`` with 0/1 ``labels`` (a score above 0.5 counts as right).

        ``X`` (the views' feature matrix, if already built) saves building it again.
        The L2 strength is chosen among ``cs`` by ``folds``-fold cross-validated log-loss,
        folds split by ``groups`` (the prompt of each view: views of one prompt stay
        together, so agreement seen in training is not scored again). With one value
        in ``cs`` and ``folds`` < 2 it is fitted at once, with no cross-validation.
        """
        try:
            from sklearn.linear_model import LogisticRegression
            from sklearn.metrics import log_loss, roc_auc_score
            from sklearn.model_selection import GroupKFold
        except ImportError:
            raise MissingDependency("scikit-learn", "ml", "fitting the verifier") from None
        X = features.matrix(views, embed) if X is None else np.asarray(X, dtype=np.float32)
        y = (np.asarray(labels, dtype=float) > 0.5).astype(int)
        if len(np.unique(y)) < 2:
            raise RoutingError(
                f"the verifier needs right and wrong answers to learn from; all {len(y)} are {'right' if y.all() else 'wrong'}"
            )
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale < 1e-6] = 1.0
        Z = (X - mean) / scale
        if len(cs) == 1 and folds < 2:
            model = LogisticRegression(C=cs[0], max_iter=1000).fit(Z, y)
            report = {"rows": len(y), "positives": float(y.mean()), "C": cs[0], "features": int(X.shape[1])}
            return cls(
                features,
                model.coef_[0].astype(np.float64),
                float(model.intercept_[0]),
                mean.astype(np.float64),
                scale.astype(np.float64),
                report,
            )
        g = np.asarray(groups if groups is not None else np.arange(len(y)))
        k = max(2, min(folds, len(np.unique(g))))
        splits = list(GroupKFold(n_splits=k).split(Z, y, g))
        scores: dict[float, tuple[float, np.ndarray]] = {}
        for c in cs:
            oof = np.zeros(len(y))
            for tr, te in splits:
                if len(np.unique(y[tr])) < 2:
                    oof[te] = y[tr].mean()
                    continue
                m = LogisticRegression(C=c, max_iter=500).fit(Z[tr], y[tr])
                oof[te] = m.predict_proba(Z[te])[:, 1]
            scores[c] = (float(log_loss(y, np.clip(oof, 1e-6, 1 - 1e-6))), oof)
        best = min(scores, key=lambda c: scores[c][0])
        final = LogisticRegression(C=best, max_iter=1000).fit(Z, y)
        oof = scores[best][1]
        report = {
            "rows": len(y),
            "positives": float(y.mean()),
            "C": best,
            "cv_folds": k,
            "cv_log_loss": scores[best][0],
            "cv_brier": float(np.mean((oof - y) ** 2)),
            "cv_auc": float(roc_auc_score(y, oof)),
            "features": int(X.shape[1]),
        }
        return cls(
            features,
            final.coef_[0].astype(np.float64),
            float(final.intercept_[0]),
            mean.astype(np.float64),
            scale.astype(np.float64),
            report,
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(right) for each row of the feature matrix ``X``."""
        z = ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        p: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return p

    def predict_views(self, views: Sequence[AnswerView], embed: EmbedFn | None = None) -> np.ndarray:
        """P(right) for each view."""
        if not views:
            return np.zeros(0)
        return self.predict(self.features.matrix(views, embed))


@dataclass
class VerifierSignal:
    """The verifier as an acceptance signal (registered as ``verifier``).

    It judges any view (``needs`` is empty): without other answers it has less
    to go on, and says so with less extreme probabilities.
    """

    verifier: Verifier
    embed: EmbedFn | None = None
    name: str = "verifier"
    needs: frozenset[str] = frozenset()

    @classmethod
    def from_params(cls, artifact: str | Path, embed: EmbedFn | None = None) -> VerifierSignal:
        """``create_signal("verifier", artifact="verifier.npz", embed=embedder.embed)``."""
        return cls(load_verifier(artifact)[0], embed)

    def confidence(self, view: AnswerView) -> float | None:
        return float(self.verifier.predict_views([view], self.embed)[0])


def save_verifier(verifier: Verifier, path: str | Path, *, meta: dict[str, Any]) -> Path:
    """Write ``verifier`` and ``meta`` (JSON-able: the training table, the embedder ...) to ``path`` (``.npz``)."""
    from turnout import __version__

    doc = {
        "format": FORMAT_VERSION,
        "kind": "verifier",
        "models": list(verifier.features.models),
        "embed_dim": verifier.features.embed_dim,
        "intercept": verifier.intercept,
        "report": verifier.report,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "turnout_version": __version__,
        "meta": meta,
    }
    try:
        blob = json.dumps(doc).encode("utf-8")
    except TypeError as exc:
        raise DataError(f"verifier metadata is not JSON-serialisable: {exc}", file=str(path)) from exc
    path = Path(path)
    with open(path, "wb") as fh:  # a file object: np.savez would otherwise append '.npz' to other suffixes
        np.savez_compressed(
            fh, __meta__=np.frombuffer(blob, dtype=np.uint8), coef=verifier.coef, mean=verifier.mean, scale=verifier.scale
        )
    return path


def load_verifier(path: str | Path) -> tuple[Verifier, dict[str, Any]]:
    """Rebuild a verifier written by :func:`save_verifier`; returns ``(verifier, metadata)``."""
    path = Path(path)
    fix = "train one with 'turnout eval TABLE --save-verifier verifier.npz' (a table with answers)"
    if not path.exists():
        raise DataError("verifier artifact not found", file=str(path), fix=fix)
    try:
        with np.load(path, allow_pickle=False) as npz:
            doc = json.loads(bytes(npz["__meta__"]).decode("utf-8"))
            coef, mean, scale = (np.asarray(npz[k], dtype=np.float64) for k in ("coef", "mean", "scale"))
    except (zipfile.BadZipFile, ValueError, OSError, KeyError) as exc:
        raise DataError(f"not a turnout verifier artifact ({type(exc).__name__}: {exc})", file=str(path), fix=fix) from exc
    if doc.get("kind") != "verifier" or doc.get("format") != FORMAT_VERSION:
        raise DataError(
            f"not a verifier artifact of format {FORMAT_VERSION} (kind {doc.get('kind')!r}, format {doc.get('format')!r})",
            file=str(path),
            fix=fix,
        )
    features = VerifierFeatures(tuple(doc["models"]), int(doc["embed_dim"]))
    if not coef.shape == mean.shape == scale.shape == (len(features.names()),):
        raise DataError(
            f"a damaged verifier artifact: {coef.shape[0]} weights for {len(features.names())} features", file=str(path), fix=fix
        )
    verifier = Verifier(features, coef, float(doc["intercept"]), mean, scale, dict(doc.get("report") or {}))
    return verifier, {**doc.pop("meta"), **doc}
