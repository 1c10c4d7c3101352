import numpy as np
import pytest

from tests.evaluation.eval_tables import answered, two_kinds
from turnout.errors import DataError
from turnout.evaluation.cascade import (
    Answers,
    FixedCascade,
    binormal_confidence,
    cascade_outcome,
    group_confidence,
    sweep_cascade,
    threshold_for_cost,
    threshold_for_share,
)
from turnout.evaluation.fanout import vote, with_plans
from turnout.evaluation.metrics import auc
from turnout.evaluation.splits import split_table
from turnout.routing.acceptance import create_signal

CHEAP, PROBE, STRONG = 0, 1, 2


def test_agreement_cascade_matches_the_truth_computed_by_hand():
    table, _ = answered(2000, seed=1, split=False)
    conf, pick = group_confidence(Answers(table), create_signal("agreement"), (CHEAP, PROBE))
    agree = table.responses[:, CHEAP] == table.responses[:, PROBE]
    assert np.array_equal(conf == 1.0, agree) and (pick == CHEAP).all()  # ties: the first member's answer
    out = cascade_outcome(table, (CHEAP, PROBE), STRONG, conf, pick, threshold=1.0)  # escalate on disagreement
    S = table.scores
    assert np.array_equal(out.escalated, ~agree)
    assert out.score.mean() == pytest.approx(np.where(agree, S[:, CHEAP], S[:, STRONG]).mean())
    # every call paid for: both cheap models always, the strong one where it escalated
    assert np.allclose(out.cost, 1.0 + 1.0 + 10.0 * ~agree)
    # and the known rates: independent 75% and 65% models on two options agree 0.75·0.65 + 0.25·0.35 = 57.5%
    assert (~agree).mean() == pytest.approx(0.425, abs=0.03)
    assert out.score.mean() == pytest.approx(0.4875 + 0.425 * 0.95, abs=0.03)


def test_threshold_for_share_calibrates_on_train_and_counts_unjudged():
    rng = np.random.default_rng(0)
    conf = rng.random(1000)
    for share in (0.0, 0.1, 0.37, 0.9, 1.0):
        th = threshold_for_share(conf, share)
        assert ((conf < th).mean()) == pytest.approx(share, abs=1e-3)
    with_nan = np.r_[conf[:900], [np.nan] * 100]  # 10% cannot be judged: they escalate anyway
    assert threshold_for_share(with_nan, 0.05) == float("-inf")
    th = threshold_for_share(with_nan, 0.3)
    assert (np.isnan(with_nan) | (with_nan < th)).mean() == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(DataError, match="not in"):
        threshold_for_share(conf, 1.5)


def test_calibrated_on_train_the_test_share_follows():
    table, _ = answered(4000, seed=2)
    train, test = split_table(table)
    y_tr, y_te = train.scores[:, CHEAP] > 0.5, test.scores[:, CHEAP] > 0.5
    rng = np.random.default_rng(0)
    c_tr, c_te = binormal_confidence(y_tr, 0.8, rng), binormal_confidence(y_te, 0.8, rng)
    assert auc(y_te, c_te) == pytest.approx(0.8, abs=0.03)
    th = threshold_for_share(c_tr, 0.3)
    pick = np.full(len(test), CHEAP)
    out = cascade_outcome(test, (CHEAP,), STRONG, c_te, pick, th)
    assert out.escalated.mean() == pytest.approx(0.3, abs=0.04)  # the same distribution: the share carries over


def test_threshold_for_cost_meets_the_budget_on_train():
    rng = np.random.default_rng(3)
    conf = rng.random(500)
    base, strong = np.ones(500), np.full(500, 10.0)
    th = threshold_for_cost(conf, base, strong, target=4.0)
    cost = (base + np.where(conf < th, strong, 0.0)).mean()
    assert cost <= 4.0 and cost > 3.9  # the most escalation the budget allows
    assert threshold_for_cost(conf, base, strong, target=0.5) == float("-inf")


def test_sweep_goes_from_cheap_to_strong():
    table, _ = answered(1000, seed=4)
    train, test = split_table(table)
    plan = FixedCascade((CHEAP, PROBE), STRONG, "agreement")
    sig = create_signal("agreement")
    ctr, _ = group_confidence(Answers(train), sig, plan.group)
    cte, pte = group_confidence(Answers(test), sig, plan.group)
    outs, info = sweep_cascade(plan, test, ctr, cte, pte)
    assert outs[0].cost.mean() == pytest.approx(2.0) and not outs[0].escalated.any()
    assert outs[-1].escalated.all() and outs[-1].score.mean() == pytest.approx(test.scores[:, STRONG].mean())
    costs = [o.cost.mean() for o in outs]
    assert costs == sorted(costs) and len(info) == len(outs)
    assert plan.label(test.models) == "cascade-agreement-cheap+probe->strong"


def test_vote_keeps_the_majority_and_pays_for_all():
    table, _ = answered(600, seed=5, split=False)
    out, pick = vote(table, (CHEAP, PROBE, STRONG))
    R = table.responses
    for i in range(50):
        letters = list(R[i])
        assert R[i, pick[i]] == max(set(letters), key=letters.count)
    assert np.allclose(out.cost, 12.0)
    # three voters, one of them 95% right: better than either cheap model
    assert out.score.mean() > table.scores[:, CHEAP].mean() + 0.1


def test_plans_become_candidate_columns():
    table, _ = answered(100, seed=6, split=False)
    out, _ = vote(table, (CHEAP, PROBE, STRONG))
    aug = with_plans(table, {"plan:vote": out})
    assert aug.models[-1] == "plan:vote" and aug.scores.shape == (100, 4)
    assert np.array_equal(aug.scores[:, 3], out.score) and aug.responses[0, 3] is None


def test_a_table_without_answers_cannot_simulate():
    table, _ = two_kinds()
    with pytest.raises(DataError, match="no answer texts"):
        Answers(table)
