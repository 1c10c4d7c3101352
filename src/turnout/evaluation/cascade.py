"""Cascades simulated on a routing table that carries answers: every call paid for, outcomes from the table.

A cascade here is a *group* of models called first (one model, or a cheap model
and its probes in parallel), then a *strong* model when the group's answer is
not accepted. Each member's answer is judged by an acceptance signal with the
group's other answers as ``others`` (:class:`~turnout.routing.acceptance.AnswerView`);
the best-judged answer is the group's, and its confidence decides: accepted at
or above the threshold, else escalated. A signal that cannot judge (None)
escalates. The outcome of a prompt is the TRUE score of the answer kept, and
its cost the sum of every call made (a rejected answer is paid for too).

Thresholds are calibrated on the training split only, like λ: to a target
share of escalations (:func:`threshold_for_share`) or a target mean cost
(:func:`threshold_for_cost`); a curve sweeps the target share.

Example::

    answers = Answers(test)
    conf, pick = group_confidence(answers, create_signal("agreement"), group=[yi, mixtral])
    out = cascade_outcome(test, group=[yi, mixtral], strong=gpt4, conf=conf, pick=pick, threshold=0.99)
    out.cost.mean(), out.score.mean(), out.escalated.mean()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.table import RoutingTable
from turnout.routing.acceptance import AcceptanceSignal, AnswerView, judge
from turnout.routing.thresholds import escalates as _escalate
from turnout.routing.thresholds import threshold_for_cost, threshold_for_share  # noqa: F401  (re-exported)
from turnout.routing.verifier import EmbedFn, Verifier

#: target escalation shares a fixed cascade's curve sweeps (calibrated on train)
SHARES = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 21), 3))


def short_name(model: str) -> str:
    """``meta/llama-2-70b-chat`` -> ``llama-2-70b-chat``: names in entry labels stay readable."""
    return model.rsplit("/", 1)[-1]


class Answers:
    """A table's recorded answers, as the views an acceptance signal reads.

    ``view(i, j, others)`` is model ``j``'s answer to prompt ``i`` with the answers of
    the models in ``others`` beside it (their names in ``others_models``). A cell
    without an answer text is read as an empty answer.
    """

    def __init__(self, table: RoutingTable) -> None:
        if table.responses is None:
            raise DataError(
                "the table carries no answer texts, so no cascade can be simulated on it",
                file=table.source or None,
                fix="use a table with a 'response' column (or RouterBench's <model>|model_response)",
            )
        self.table = table
        self.responses: np.ndarray = table.responses

    def text(self, i: int, j: int) -> str:
        r = self.responses[i, j]
        return "" if r is None else str(r)

    def view(self, i: int, j: int, others: Sequence[int] = ()) -> AnswerView:
        t = self.table
        return AnswerView(
            prompt=t.prompts[i],
            answer=self.text(i, j),
            model=t.models[j],
            others=tuple(self.text(i, k) for k in others),
            others_models=tuple(t.models[k] for k in others),
        )


def _judge_many(signal: AcceptanceSignal | Verifier, views: list[AnswerView], embed: EmbedFn | None) -> np.ndarray:
    """Confidences of ``views`` (NaN: cannot judge); a :class:`Verifier` is asked in one batch."""
    if isinstance(signal, Verifier):
        return signal.predict_views(views, embed)
    return np.array([np.nan if (c := judge(signal, v)) is None else c for v in views], dtype=float)


def group_confidence(
    answers: Answers,
    signal: AcceptanceSignal | Verifier,
    group: Sequence[int],
    rows: np.ndarray | None = None,
    *,
    embed: EmbedFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: the confidence in the group's best-judged answer (NaN: none could be judged), and whose it is.

    Each member is judged with the other members' answers as ``others``; the
    member judged highest wins (the first member on ties, so list the group in
    order of preference). When no member can be judged, the first member's answer
    is the group's and its confidence is NaN.
    """
    n = len(answers.table)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=int)
    conf = np.full((len(rows), len(group)), np.nan)
    for g, j in enumerate(group):
        others = [k for k in group if k != j]
        conf[:, g] = _judge_many(signal, [answers.view(int(i), j, others) for i in rows], embed)
    filled = np.where(np.isnan(conf), -np.inf, conf)
    best = np.argmax(filled, axis=1)  # argmax takes the first of ties
    pick = np.asarray(group, dtype=int)[best]
    out = conf[np.arange(len(rows)), best]
    return out, pick


def member_confidence(
    answers: Answers,
    signal: AcceptanceSignal | Verifier,
    j: int,
    others: Sequence[int] = (),
    rows: np.ndarray | None = None,
    *,
    embed: EmbedFn | None = None,
) -> np.ndarray:
    """Per prompt, the confidence in model ``j``'s own answer with ``others``' answers beside it (NaN: not judged)."""
    rows = np.arange(len(answers.table)) if rows is None else np.asarray(rows, dtype=int)
    return _judge_many(signal, [answers.view(int(i), j, others) for i in rows], embed)


@dataclass(frozen=True)
class Outcome:
    """What a plan did on each prompt: the kept answer's TRUE score, the cost of every call, whether it escalated."""

    score: np.ndarray
    cost: np.ndarray
    escalated: np.ndarray

    @property
    def point(self) -> list[float]:
        """``[mean cost, mean quality]``: the plan's point on a cost/quality plot."""
        return [float(self.cost.mean()), float(self.score.mean())]


def cascade_outcome(
    table: RoutingTable,
    group: Sequence[int],
    strong: int | None,
    conf: np.ndarray,
    pick: np.ndarray,
    threshold: float,
    rows: np.ndarray | None = None,
) -> Outcome:
    """The outcome of calling ``group``, keeping its answer when ``conf`` >= ``threshold``, else calling ``strong``.

    With ``strong`` None (a fan-out with no escalation) the group's answer is always kept.
    Costs: every group member on every prompt, plus ``strong`` where it escalated.
    """
    rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=int)
    base = np.nansum(table.costs[np.ix_(rows, np.asarray(group, dtype=int))], axis=1)
    kept = table.scores[rows, pick]
    if strong is None:
        return Outcome(kept, base, np.zeros(len(rows), dtype=bool))
    esc = _escalate(conf, threshold)
    return Outcome(np.where(esc, table.scores[rows, strong], kept), base + np.where(esc, table.costs[rows, strong], 0.0), esc)


@dataclass(frozen=True)
class FixedCascade:
    """One cascade configuration: ``group`` first (model indices, preferred first), ``strong`` on rejection.

    ``signal`` is the acceptance signal's name (for labels); the curve sweeps the
    escalation share, calibrated on train.
    """

    group: tuple[int, ...]
    strong: int
    signal: str

    def label(self, models: Sequence[str]) -> str:
        """``cascade-<signal>-<first>+<probe>-><strong>``."""
        first = "+".join(short_name(models[j]) for j in self.group)
        return f"cascade-{self.signal}-{first}->{short_name(models[self.strong])}"


def sweep_cascade(
    plan: FixedCascade,
    test: RoutingTable,
    train_conf: np.ndarray,
    test_conf: np.ndarray,
    test_pick: np.ndarray,
    shares: Sequence[float] = SHARES,
) -> tuple[list[Outcome], list[dict[str, float]]]:
    """The test outcomes of ``plan`` at each training escalation share (thresholds from ``train_conf``).

    Returns the outcomes (one per share that gives a new threshold) and, for
    each, ``{"share_train", "threshold", "escalated_test"}``.
    """
    outcomes, info, seen = [], [], set()
    for share in shares:
        th = threshold_for_share(train_conf, share)
        if th in seen:
            continue
        seen.add(th)
        o = cascade_outcome(test, plan.group, plan.strong, test_conf, test_pick, th)
        outcomes.append(o)
        info.append({"share_train": float(share), "threshold": th, "escalated_test": float(o.escalated.mean())})
    return outcomes, info


def binormal_confidence(correct: np.ndarray, auc: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic confidence with a given AUC for ``correct``: right answers score ``d`` higher, plus N(0, 1) noise.

    With d = sqrt(2) * Phi^-1(auc) the expected AUC is ``auc`` (the binormal model);
    it tells what AUC a signal would need for a goal, with everything else equal.
    """
    from statistics import NormalDist

    a = min(max(auc, 0.5), 1.0 - 1e-9)
    d = float(np.sqrt(2.0) * NormalDist().inv_cdf(a))
    return d * np.asarray(correct, dtype=float) + rng.standard_normal(len(correct))
