"""Fan-outs and answer-aware plans as candidates a router chooses among, per prompt.

A fan-out calls ``k`` models in parallel and keeps one answer: here by a
plurality vote over comparable answers (the extracted choice, the normalised
code, the number: :func:`turnout.routing.answers.comparable`), ties going to the
model listed first (the best on the training split). Offline the vote's score
is the TRUE score of a model whose answer won; its cost the sum of all ``k``.

A router decides per prompt between one model and a plan (a fan-out, a
cascade) from their predicted gain, as JiSi's routing–aggregation switch does:
each plan becomes one more candidate column of the routing table (its
per-prompt outcome and cost), the router is fitted on the training table with
those columns, and the one λ policy picks among models and plans
(:func:`with_plans`). The plans' training outcomes must not have seen the
prompts they are scored on (a verifier's confidences there are out-of-fold).

Example::

    score, cost, pick = vote(test, group=[yi, gpt35, mixtral])
    aug_train = with_plans(train, {"fanout:yi+gpt35+mixtral": vote_outcome_train})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from turnout.evaluation.cascade import Answers, Outcome, short_name
from turnout.evaluation.table import RoutingTable
from turnout.routing import answers as read


def vote(table: RoutingTable, group: Sequence[int], rows: np.ndarray | None = None) -> tuple[Outcome, np.ndarray]:
    """The plurality vote of ``group`` (model indices, in order of preference) on each prompt.

    A member whose answer has no comparable form (a refusal, long prose) does not
    vote; when no member votes the first member's answer is kept. Returns the
    outcome (every member paid for) and the index of the model whose answer is kept.
    """
    ans = Answers(table)
    rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=int)
    pick = np.empty(len(rows), dtype=int)
    for r, i in enumerate(rows):
        prompt = table.prompts[int(i)]
        keys = [read.comparable(prompt, ans.text(int(i), j)) for j in group]
        counts = Counter(k for k in keys if k is not None)
        if not counts:
            pick[r] = group[0]
            continue
        top = max(counts.values())
        # ties between answers go to the one a more preferred member gave
        winner = next(k for k in keys if k is not None and counts[k] == top)
        pick[r] = group[keys.index(winner)]
    cost = np.nansum(table.costs[np.ix_(rows, np.asarray(group, dtype=int))], axis=1)
    return Outcome(table.scores[rows, pick], cost, np.zeros(len(rows), dtype=bool)), pick


def fanout_label(models: Sequence[str], group: Sequence[int]) -> str:
    """``fanout-vote-<a>+<b>+<c>``."""
    return "fanout-vote-" + "+".join(short_name(models[j]) for j in group)


def with_plans(table: RoutingTable, plans: Mapping[str, Outcome]) -> RoutingTable:
    """``table`` with one more column per plan: its name, its per-prompt score and cost.

    A plan's cell is missing (never a candidate) where its outcome is NaN, e.g.
    where a member model has no outcome for that prompt. The answers of plan
    columns are left empty: a plan is not answered by one model.
    """
    names = list(plans)
    S = np.column_stack([table.scores, *[plans[p].score for p in names]]) if names else table.scores
    C = np.column_stack([table.costs, *[plans[p].cost for p in names]]) if names else table.costs
    R = None
    if table.responses is not None:
        R = np.full(S.shape, None, dtype=object)
        R[:, : len(table.models)] = table.responses
    return RoutingTable(
        prompt_ids=list(table.prompt_ids),
        prompts=list(table.prompts),
        models=[*table.models, *names],
        scores=S,
        costs=C,
        tasks=table.tasks,
        split=table.split,
        model_cards=dict(table.model_cards),
        source=table.source,
        cost_estimated=table.cost_estimated,
        responses=R,
    )


def member_missing(table: RoutingTable, group: Sequence[int]) -> np.ndarray:
    """Per prompt: True when some member of ``group`` has no outcome there (the plan cannot run)."""
    missing: np.ndarray = np.isnan(table.scores[:, [int(j) for j in group]]).any(axis=1)
    return missing


def masked(outcome: Outcome, missing: np.ndarray) -> Outcome:
    """``outcome`` with NaN score and cost where ``missing``: the plan is no candidate there."""
    return Outcome(
        np.where(missing, np.nan, outcome.score), np.where(missing, np.nan, outcome.cost), outcome.escalated & ~missing
    )
