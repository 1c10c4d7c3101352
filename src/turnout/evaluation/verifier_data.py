"""Training the verifier from a routing table's recorded answers, on the training split only.

Each training example is one model's answer to one prompt, with the answers of
a few other models beside it (a random subset of 0 to :data:`MAX_OTHERS` of
them, :data:`CONTEXTS` draws per answer): the verifier learns what agreement
with whom says, whatever the cascade will have called. The label is whether
the answer's TRUE score is above 0.5.

A cascade calibrates its thresholds on training confidences, which must come
from a verifier that has not seen those prompts: :class:`OutOfFold` fits one
verifier per fold of the training prompts and judges each prompt with the one
that left it out.

Example::

    v = fit_verifier(train)                     # cross-validated L2 strength
    oof = OutOfFold.fit(train, v)               # 4 fold verifiers at v's strength
    conf, pick = oof.group_confidence(Answers(train), (yi, mixtral))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.cascade import Answers, group_confidence
from turnout.evaluation.table import RoutingTable
from turnout.routing.acceptance import AnswerView
from turnout.routing.verifier import EmbedFn, Verifier, VerifierFeatures

#: random contexts (sets of other answers) drawn per (prompt, answering model)
CONTEXTS = 2
#: the most other answers one training example carries
MAX_OTHERS = 3
#: folds of the training prompts behind the out-of-fold confidences
FOLDS = 4


def training_views(
    table: RoutingTable,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    contexts: int = CONTEXTS,
    max_others: int = MAX_OTHERS,
    seed: int = 0,
) -> tuple[list[AnswerView], np.ndarray, np.ndarray]:
    """(views, labels, prompt of each view) from ``table``'s answers on ``rows`` (default: every prompt).

    Cells without an outcome are skipped; the others beside an answer are drawn
    among the models that answered that prompt.
    """
    if table.responses is None:
        raise DataError(
            "the table carries no answer texts to train a verifier on",
            file=table.source or None,
            fix="use a table with a 'response' column (or RouterBench's <model>|model_response)",
        )
    ans = Answers(table)
    rng = np.random.default_rng(seed)
    views, labels, groups = [], [], []
    for i in range(len(table)) if rows is None else rows:
        there = np.flatnonzero(~np.isnan(table.scores[i]) & np.array([r is not None for r in table.responses[i]]))
        for j in there:
            rest = there[there != j]
            for _ in range(contexts):
                k = int(rng.integers(0, min(max_others, len(rest)) + 1))
                others = [int(x) for x in rng.choice(rest, size=k, replace=False)] if k else []
                views.append(ans.view(int(i), int(j), others))
                labels.append(float(table.scores[i, j]))
                groups.append(int(i))
    return views, np.asarray(labels), np.asarray(groups)


def fit_verifier(
    train: RoutingTable, *, seed: int = 0, embed: EmbedFn | None = None, embed_dim: int = 0, contexts: int = CONTEXTS
) -> Verifier:
    """A verifier fitted on ``train``'s answers (its L2 strength by cross-validation over prompts)."""
    views, y, g = training_views(train, contexts=contexts, seed=seed)
    if not views:
        raise DataError(
            "the training split has no answers to train a verifier on",
            file=train.source or None,
            fix="check that the table's response cells are filled",
        )
    feats = VerifierFeatures(tuple(train.models), embed_dim)
    return Verifier.fit(feats, views, y, embed=embed, groups=g, seed=seed)


@dataclass
class OutOfFold:
    """Verifiers fitted on all training prompts but one fold each, to judge that fold's prompts."""

    fold_of: np.ndarray
    verifiers: list[Verifier]

    @classmethod
    def fit(
        cls,
        train: RoutingTable,
        like: Verifier,
        *,
        folds: int = FOLDS,
        seed: int = 0,
        embed: EmbedFn | None = None,
        contexts: int = CONTEXTS,
    ) -> OutOfFold:
        """One verifier per fold, with ``like``'s features and L2 strength (no cross-validation again)."""
        k = max(2, min(folds, len(train)))
        fold_of = np.random.default_rng(seed).permutation(len(train)) % k
        c = float(like.report.get("C", 0.1))
        out = []
        for f in range(k):
            rows = np.flatnonzero(fold_of != f)
            views, y, _ = training_views(train, rows, contexts=contexts, seed=seed + 1 + f)
            out.append(Verifier.fit(like.features, views, y, embed=embed, cs=(c,), folds=0))
        return cls(fold_of, out)

    def group_confidence(
        self, answers: Answers, group: Sequence[int], *, embed: EmbedFn | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~turnout.evaluation.cascade.group_confidence` on the training table, each fold by its own verifier."""
        n = len(answers.table)
        conf, pick = np.full(n, np.nan), np.zeros(n, dtype=int)
        for f, v in enumerate(self.verifiers):
            rows = np.flatnonzero(self.fold_of == f)
            if len(rows):
                conf[rows], pick[rows] = group_confidence(answers, v, group, rows, embed=embed)
        return conf, pick
