"""``turnout eval`` on a table with answers: cascades and fan-outs beside the routers, on the same footing.

:func:`evaluate_cascades` adds to a :func:`~turnout.evaluation.runner.run_eval`
result (only when both splits carry answer texts):

* ``cascades``: entries named ``cascade-...`` and ``fanout-...``, each with the
  routers' metrics (AIQ, max quality, quality at the best single model's cost,
  cost fraction to match it, the curve) and paired bootstrap intervals against
  the single-model hull (``aiq_gain_ci``) and the best router (``aiq_vs_best_ci``);
* ``acceptance``: each signal's AUC for "the cheap model's answer is right", per
  task, and what a signal of a given AUC would reach (``needed_auc``);
* notes on the signals that were skipped (log-probs: tables carry none).

Everything that is chosen is chosen on the training split: the strong model
(best training quality), the cheap pool (best training quality among models
costing at most :data:`CHEAP_SHARE` of it), the verifier (fitted on training
answers; its training-side confidences out-of-fold), every threshold (a share
of training escalations). The test split only measures.

Entries:

* ``cascade-<signal>-<cheap>[+<probe>]-><strong>``: a fixed cascade per signal,
  its thresholds swept over training escalation shares;
* ``fanout-vote-<a>+<b>+<c>``: the cheap pool answers, the plurality vote keeps one;
* ``cascade-<router>`` / ``fanout-<router>``: the router chooses per prompt among
  the models *and* cascade (resp. fan-out) plans, each plan a candidate column
  whose training outcomes it learns (the routing–aggregation switch), swept over λ.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnout.evaluation.bootstrap import interval95, outcome_aiq_resamples
from turnout.evaluation.cascade import (
    SHARES,
    Answers,
    FixedCascade,
    Outcome,
    binormal_confidence,
    cascade_outcome,
    group_confidence,
    member_confidence,
    short_name,
    sweep_cascade,
)
from turnout.evaluation.curves import curve_metrics, distinct_points, only_observed, sweep
from turnout.evaluation.fanout import fanout_label, masked, member_missing, vote, with_plans
from turnout.evaluation.metrics import auc, cost_fraction_to_match, hull_quality_at, nondecreasing_hull
from turnout.evaluation.table import RoutingTable
from turnout.evaluation.verifier_data import OutOfFold, fit_verifier
from turnout.routing.acceptance import AcceptanceSignal, create_signal
from turnout.routing.thresholds import threshold_for_share
from turnout.routing.verifier import EmbedFn, Verifier

#: a cheap model costs at most this share of the strong model's mean training cost
CHEAP_SHARE = 0.25
#: signals that read only the answer (a one-model first step) and those that compare answers (a probe beside it)
SINGLE_SIGNALS = ("choice", "code_parses")
#: the signals no routing table can feed, and why (live only)
SKIPPED = {
    "logprob_mean": "needs token log-probabilities, which routing tables do not carry (live with llama.cpp)",
    "logprob_min": "needs token log-probabilities, which routing tables do not carry (live with llama.cpp)",
    "margin": "needs top-2 token log-probabilities, which routing tables do not carry (live)",
    "json_schema": "needs the request's response_format, which routing tables do not carry (live)",
}
#: the escalation shares of the cascade plans a router chooses among (0: the group's verified answer, no escalation)
PLAN_SHARES = (0.0, 0.15, 0.3, 0.5, 0.7, 0.85)
#: signal AUCs simulated for ``needed_auc``
NEEDED_AUCS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class CascadeOptions:
    """What :func:`evaluate_cascades` builds.

    ``router``: the router behind ``cascade-<router>``/``fanout-<router>`` (None: skip them);
    ``verifier``: a verifier trained elsewhere (``--verifier``), else one is fitted on the
    training split; ``embed``: the embedder the verifier uses, if it uses one; ``pool``:
    how many cheap models (best training quality first) the cascades and fan-outs draw on.
    """

    router: str | None = "knn"
    verifier: Verifier | None = None
    embed: EmbedFn | None = None
    pool: int = 3
    shares: Sequence[float] = SHARES
    plan_shares: Sequence[float] = PLAN_SHARES
    max_group: int = 3
    seed: int = 0
    router_params: dict[str, Any] = field(default_factory=dict)


def has_answers(table: RoutingTable) -> bool:
    """True when ``table`` carries answer texts (cascades and fan-outs can be simulated on it)."""
    return table.responses is not None


def choose_models(train: RoutingTable) -> tuple[int, list[int]]:
    """(strong, cheap pool) from the training split: best mean quality; then the best of those costing ≤ CHEAP_SHARE."""
    obs = ~np.isnan(train.scores)
    q = np.array([np.nanmean(train.scores[:, j]) if obs[:, j].any() else -1.0 for j in range(len(train.models))])
    c = np.array([np.nanmean(train.costs[:, j]) if obs[:, j].any() else np.inf for j in range(len(train.models))])
    strong = int(np.lexsort((c, -q))[0])
    cheap = [j for j in np.argsort(-q, kind="stable") if j != strong and c[j] <= CHEAP_SHARE * c[strong] and obs[:, j].any()]
    return strong, [int(j) for j in cheap]


def _entry(
    outcomes: list[Outcome],
    base: dict[str, Any],
    test: RoutingTable,
    weights: np.ndarray | None,
    single: np.ndarray | None,
    best: np.ndarray | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """One ``cascades`` entry: the routers' metrics of these per-point outcomes, with paired intervals."""
    curve = [o.point for o in outcomes]
    res: dict[str, Any] = {**curve_metrics(curve, base), **extra, "curve": distinct_points(curve)}
    if weights is not None:
        s = outcome_aiq_resamples(np.array([o.score for o in outcomes]), np.array([o.cost for o in outcomes]), test, weights)
        res["aiq_ci"] = interval95(s)
        if single is not None:
            res["aiq_gain_ci"] = interval95(s - single)
        if best is not None:
            res["aiq_vs_best_ci"] = interval95(s - best)
    return res


def evaluate_cascades(
    train: RoutingTable,
    test: RoutingTable,
    Xtr: np.ndarray,
    Xte: np.ndarray,
    base: dict[str, Any],
    *,
    options: CascadeOptions | None = None,
    weights: np.ndarray | None = None,
    single: np.ndarray | None = None,
    best: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The ``cascades``, ``acceptance`` and ``notes`` a table with answers adds to an eval result (see the module).

    ``base`` is :func:`~turnout.evaluation.runner.baselines` of ``test``; ``weights`` the
    bootstrap resamples, ``single`` and ``best`` the single-model hull's and the best
    router's AIQ on them (for the paired intervals). ``{}`` when a split has no answers.
    """
    opts = options or CascadeOptions()
    say = log or (lambda _msg: None)
    if not (has_answers(train) and has_answers(test)):
        return {}
    notes = [f"{name} skipped: {why}" for name, why in SKIPPED.items()]
    strong, pool = choose_models(train)
    pool = pool[: max(opts.pool, 1)]
    if not pool:
        why = f"no model costs at most {CHEAP_SHARE:.0%} of the strong model ({test.models[strong]}) on train"
        return {"notes": [*notes, f"no cascade or fan-out: {why}"]}
    cover = ~member_missing(test, [*pool, strong])
    if not cover.all():
        notes.append(
            f"cascades and fan-outs: {int((~cover).sum())} test prompt(s) lack an outcome of "
            f"{', '.join(short_name(test.models[j]) for j in [*pool, strong])}; fixed cascades and fan-outs "
            "are scored only where every model they call has one (so are their AUCs)"
        )
    t0 = time.perf_counter()
    verifier, oof = _verifiers(train, opts, say)
    fit_s = time.perf_counter() - t0
    tr_ans, te_ans = Answers(train), Answers(test)
    signals: dict[str, AcceptanceSignal | Verifier] = {
        "verifier": verifier,
        "agreement": create_signal("agreement"),
        **{s: create_signal(s) for s in SINGLE_SIGNALS},
    }
    entries: dict[str, dict[str, Any]] = {}
    rows = np.flatnonzero(cover)
    sub = test.subset(rows)
    cheap, probe = pool[0], (pool[1] if len(pool) > 1 else None)
    plans = [FixedCascade((cheap,), strong, "verifier"), *(FixedCascade((cheap,), strong, s) for s in SINGLE_SIGNALS)]
    if probe is not None:
        plans = [FixedCascade((cheap, probe), strong, "verifier"), FixedCascade((cheap, probe), strong, "agreement"), *plans]
    conf_cache: dict[tuple[str, tuple[int, ...], str], tuple[np.ndarray, np.ndarray]] = {}

    def conf(name: str, group: tuple[int, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
        """Confidences and picks of ``group`` under signal ``name`` on every prompt of a split (train: out-of-fold)."""
        key = (name, group, split)
        if key not in conf_cache:
            if split == "test":
                conf_cache[key] = group_confidence(te_ans, signals[name], group, embed=opts.embed)
            elif name == "verifier":
                conf_cache[key] = oof.group_confidence(tr_ans, group, embed=opts.embed)
            else:
                conf_cache[key] = group_confidence(tr_ans, signals[name], group, embed=opts.embed)
        return conf_cache[key]

    for plan in plans:
        say(f"simulating {plan.label(test.models)}")
        ctr, _ = conf(plan.signal, plan.group, "train")
        cte, pte = (a[rows] for a in conf(plan.signal, plan.group, "test"))
        outs, info = sweep_cascade(plan, sub, ctr, cte, pte, opts.shares)
        extra = {
            "kind": "cascade",
            "signal": plan.signal,
            "group": [test.models[j] for j in plan.group],
            "strong": test.models[strong],
            "points": info,
        }
        entries[plan.label(test.models)] = _entry(outs, base, sub, _w(weights, rows, cover), single, best, extra)
    if len(pool) >= 2:
        out, _ = vote(sub, pool)
        entries[fanout_label(test.models, pool)] = _entry(
            [out],
            base,
            sub,
            _w(weights, rows, cover),
            single,
            best,
            {"kind": "fanout", "aggregator": "plurality vote", "group": [test.models[j] for j in pool]},
        )
    if opts.router:
        entries.update(_router_plans(train, test, Xtr, Xte, base, opts, pool, strong, conf, weights, single, best, say, notes))
    for e in entries.values():
        e["fit_s"] = fit_s  # the verifier's fit (or 0 when it was given), shared by every entry
    acceptance = _acceptance(
        train, sub, pool, strong, signals, opts, verifier, lambda name: conf(name, (cheap,), "test")[0][rows]
    )
    return {"cascades": entries, "acceptance": acceptance, "notes": notes}


def _w(weights: np.ndarray | None, rows: np.ndarray, cover: np.ndarray) -> np.ndarray | None:
    """The resamples restricted to the covered prompts (all of them, on a table without missing cells)."""
    if weights is None or cover.all():
        return weights
    return weights[:, rows]


def _verifiers(train: RoutingTable, opts: CascadeOptions, say: Callable[[str], None]) -> tuple[Verifier, OutOfFold]:
    """The verifier (given, or fitted on train) and out-of-fold verifiers for its training-side confidences."""
    if opts.verifier is not None:
        say("using the given verifier; its training-side confidences come from fold verifiers fitted here")
        return opts.verifier, OutOfFold.fit(train, opts.verifier, seed=opts.seed, embed=opts.embed)
    say(f"fitting the verifier on {len(train)} training prompts' answers")
    v = fit_verifier(train, seed=opts.seed, embed=opts.embed)
    return v, OutOfFold.fit(train, v, seed=opts.seed, embed=opts.embed)


def _router_plans(
    train: RoutingTable,
    test: RoutingTable,
    Xtr: np.ndarray,
    Xte: np.ndarray,
    base: dict[str, Any],
    opts: CascadeOptions,
    pool: list[int],
    strong: int,
    conf: Any,
    weights: np.ndarray | None,
    single: np.ndarray | None,
    best: np.ndarray | None,
    say: Callable[[str], None],
    notes: list[str],
) -> dict[str, dict[str, Any]]:
    """``cascade-<router>`` and ``fanout-<router>``: the router chooses among models and plans per prompt."""
    from turnout.routing.registry import create_router

    groups = [g for k in range(1, opts.max_group + 1) for g in itertools.combinations(pool, k)]
    cascade_train: dict[str, Outcome] = {}
    cascade_test: dict[str, Outcome] = {}
    for g in groups:
        ctr, ptr = conf("verifier", g, "train")
        cte, pte = conf("verifier", g, "test")
        for share in opts.plan_shares:
            if share == 0.0 and len(g) == 1:
                continue  # the cheap model alone: already a candidate
            th = threshold_for_share(ctr, share)
            name = (
                "plan:"
                + "+".join(short_name(test.models[j]) for j in g)
                + (f"->{short_name(test.models[strong])}@{share:.2f}" if share else ":verified")
            )
            st = None if share == 0.0 else strong
            cascade_train[name] = masked(cascade_outcome(train, g, st, ctr, ptr, th), member_missing(train, [*g, strong]))
            cascade_test[name] = masked(cascade_outcome(test, g, st, cte, pte, th), member_missing(test, [*g, strong]))
    fan_train, fan_test = {}, {}
    if len(pool) >= 2:
        for g in groups:
            if len(g) >= 3 or (len(g) == 2 and len(pool) == 2):
                name = "plan:vote:" + "+".join(short_name(test.models[j]) for j in g)
                fan_train[name] = masked(vote(train, g)[0], member_missing(train, g))
                fan_test[name] = masked(vote(test, g)[0], member_missing(test, g))
    out: dict[str, dict[str, Any]] = {}
    for kind, tr_plans, te_plans in (("cascade", cascade_train, cascade_test), ("fanout", fan_train, fan_test)):
        kept, n_offered = on_training_hull(train, tr_plans), len(tr_plans)
        tr_plans, te_plans = {k: tr_plans[k] for k in kept}, {k: te_plans[k] for k in kept}
        if not tr_plans:
            if n_offered:
                notes.append(
                    f"no {kind}-{opts.router}: none of its {n_offered} {kind} plan(s) is on a training "
                    "cost/quality hull, so the router would never choose one"
                )
            continue
        label = f"{kind}-{opts.router}"
        say(f"fitting {opts.router} on the models and {len(tr_plans)} {kind} plans ({label})")
        aug_tr, aug_te = with_plans(train, tr_plans), with_plans(test, te_plans)
        t0 = time.perf_counter()
        router = create_router(str(opts.router), **opts.router_params)
        router.fit(aug_tr.to_training_data(Xtr))
        pred = only_observed(router.predict(Xte), aug_te)
        res = sweep(pred, aug_te)
        rows = np.arange(len(test))
        outs = [Outcome(aug_te.scores[rows, j], aug_te.costs[rows, j], j >= len(test.models)) for j in res["_choices"]]
        plan_share = [float((j >= len(test.models)).mean()) for j in res["_choices"]]
        extra = {
            "kind": kind,
            "router": opts.router,
            "plans": list(tr_plans),
            "strong": test.models[strong],
            "plans_offered": n_offered,
            "plan_share": plan_share,
            "router_fit_s": time.perf_counter() - t0,
        }
        out[label] = _entry(outs, base, test, weights, single, best, extra)
    return out


def on_training_hull(train: RoutingTable, plans: dict[str, Outcome]) -> list[str]:
    """The plans on the training cost/quality hull of the models and plans, per task when the table has tasks.

    A router choosing among dozens of near-duplicate plans picks the ones its noise
    overrates (the winner's curse); a plan that no task's training hull needs is
    never the right choice there, so it is not offered. Chosen on train only.
    """
    tasks = np.asarray(train.tasks if train.tasks else ["(all)"] * len(train), dtype=object).astype(str)
    kept: set[str] = set()
    for task in np.unique(tasks):
        sel = tasks == task
        with np.errstate(all="ignore"):
            pts = [
                (float(np.nanmean(train.costs[sel, j])), float(np.nanmean(train.scores[sel, j])), "")
                for j in range(len(train.models))
                if (~np.isnan(train.scores[sel, j])).any()
            ]
            pts += [
                (float(np.nanmean(o.cost[sel])), float(np.nanmean(o.score[sel])), name)
                for name, o in plans.items()
                if np.isfinite(o.score[sel]).any()
            ]
        hull = nondecreasing_hull(np.array([[c, q] for c, q, _ in pts]))
        kept |= {name for c, q, name in pts if name and np.isclose(hull, [c, q], rtol=0, atol=1e-12).all(axis=1).any()}
    return [name for name in plans if name in kept]


def _acceptance(
    train: RoutingTable,
    test: RoutingTable,
    pool: list[int],
    strong: int,
    signals: dict[str, AcceptanceSignal | Verifier],
    opts: CascadeOptions,
    verifier: Verifier,
    alone: Callable[[str], np.ndarray],
) -> dict[str, Any]:
    """Per signal and task, the AUC of the cheap model's confidence for 'its answer is right'; and the AUC needed.

    ``alone(signal)`` is the cheap model's confidence on ``test`` judged with no other answer (the
    one-model cascades computed it already).
    """
    cheap, probe = pool[0], (pool[1] if len(pool) > 1 else None)
    y = test.scores[:, cheap] > 0.5
    tasks = np.asarray(test.tasks if test.tasks else ["(all)"] * len(test), dtype=object).astype(str)
    ans = Answers(test)
    judged: dict[str, tuple[str, list[int]]] = {"verifier (alone)": ("verifier", []), **{s: (s, []) for s in SINGLE_SIGNALS}}
    if probe is not None:
        judged = {"verifier": ("verifier", [probe]), "agreement": ("agreement", [probe]), **judged}
    aucs: dict[str, dict[str, float | None]] = {}
    for label, (name, others) in judged.items():
        c = alone(name) if not others else member_confidence(ans, signals[name], cheap, others, embed=opts.embed)
        per: dict[str, float | None] = {}
        for task in [*np.unique(tasks), "all"]:
            sel = (tasks == task if task != "all" else np.ones(len(tasks), bool)) & ~np.isnan(c)
            a = auc(y[sel], c[sel]) if sel.sum() >= 2 else float("nan")
            per[task] = None if np.isnan(a) else a
        per["judged_share"] = float((~np.isnan(c)).mean())
        aucs[label] = per
    return {
        "cheap": test.models[cheap],
        "probe": None if probe is None else test.models[probe],
        "strong": test.models[strong],
        "auc": aucs,
        "skipped": dict(SKIPPED),
        "verifier": dict(verifier.report),
        "needed_auc": needed_auc(train, test, cheap, strong, tasks, opts.seed),
    }


def needed_auc(
    train: RoutingTable,
    test: RoutingTable,
    cheap: int,
    strong: int,
    tasks: np.ndarray,
    seed: int = 0,
    aucs: Sequence[float] = NEEDED_AUCS,
    seeds: int = 3,
) -> list[dict[str, Any]]:
    """What the cascade ``cheap -> strong`` reaches with a synthetic signal of each AUC (binormal, averaged over seeds).

    Per AUC: the least cost (as a fraction of the strong model's) at which the cascade
    matches the strong model's test quality, overall and per task (None: never), and
    its quality at half the strong model's cost. Thresholds are calibrated on train,
    as for a real signal.
    """
    rng = np.random.default_rng(seed)
    out = []
    ytr, yte = train.scores[:, cheap] > 0.5, test.scores[:, cheap] > 0.5
    pick = np.full(len(test), cheap)
    for a in aucs:
        fracs: dict[str, list[float | None]] = {}
        half = []
        for _ in range(seeds):
            ctr, cte = binormal_confidence(ytr, a, rng), binormal_confidence(yte, a, rng)
            outs = [cascade_outcome(test, (cheap,), strong, cte, pick, threshold_for_share(ctr, s)) for s in SHARES]
            for task in [*np.unique(tasks), "all"]:
                sel = tasks == task if task != "all" else np.ones(len(tasks), bool)
                pts = np.array([[o.cost[sel].mean(), o.score[sel].mean()] for o in outs])
                q_s, c_s = test.scores[sel, strong].mean(), test.costs[sel, strong].mean()
                fracs.setdefault(task, []).append(cost_fraction_to_match(pts, q_s, c_s))
                if task == "all":
                    half.append(hull_quality_at(nondecreasing_hull(pts), 0.5 * c_s))
        out.append(
            {
                "auc": a,
                "cost_fraction_to_match_strong": {
                    t: (None if any(v is None for v in vs) else float(np.mean([v for v in vs if v is not None])))
                    for t, vs in fracs.items()
                },
                "quality_at_half_strong_cost": float(np.nanmean(half)) if not np.isnan(half).all() else None,
            }
        )
    return out
