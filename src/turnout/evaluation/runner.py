"""Run routers on a train/test split: fit, predict, sweep λ, score choices with the TRUE test outcomes."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.bootstrap import (
    aiq_resamples,
    bootstrap_weights,
    interval95,
    paired_comparisons,
    single_models_aiq_resamples,
)
from turnout.evaluation.curves import curve_metrics, distinct_points, only_observed, sweep
from turnout.evaluation.metrics import (
    aiq,
    apgr_cpt,
    same_cost,
    within_task_auc,
)
from turnout.evaluation.table import RoutingTable, oracle
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.policy import choose

if TYPE_CHECKING:
    from turnout.evaluation.cascade_eval import CascadeOptions

#: test-set resamples behind each AIQ's 95% interval
BOOTSTRAP = 200


class RouterFitter:
    """Fits routers by name on one training set; an ``ensemble`` reuses the members already fitted here.

    ``reuse`` names the routers to keep once fitted (an ensemble's members).
    A member is kept only when it was built with its default parameters, as
    the ensemble builds it, so the composed ensemble is the one ``fit`` gives
    (members fit deterministically) at none of the cost. Its fit time is its
    members' fit times plus its own cost lookup's. ``variants`` maps a label to
    the registered router it builds (with the label's own ``router_params``).
    """

    def __init__(
        self,
        data: TrainingData,
        router_params: dict[str, dict[str, Any]] | None = None,
        reuse: Collection[str] = (),
        variants: dict[str, str] | None = None,
    ) -> None:
        self.data, self.params, self.reuse = data, router_params or {}, set(reuse)
        #: label -> registry name, for routers run under a name of their own (``turnout eval --variant``)
        self.variants = dict(variants or {})
        self._fitted: dict[str, tuple[Router, float]] = {}

    def fit(self, name: str) -> tuple[Router, float]:
        """The router fitted on the data, and the seconds its fit took."""
        from turnout.routing.ensemble import EnsembleRouter, default_members
        from turnout.routing.registry import create_router

        params = self.params.get(name, {})
        kind = self.variants.get(name, name)
        if kind == "ensemble" and set(params) <= {"members", "weights"}:
            members = list(params.get("members") or default_members())
            if all(m in self._fitted for m in members):
                t0 = time.perf_counter()
                ens = EnsembleRouter.compose([self._fitted[m][0] for m in members], self.data, params.get("weights"))
                return ens, sum(self._fitted[m][1] for m in members) + time.perf_counter() - t0
        router = create_router(kind, **params)
        t0 = time.perf_counter()
        router.fit(self.data)
        fit_s = time.perf_counter() - t0
        if name in self.reuse and not params:
            self._fitted[name] = (router, fit_s)
        return router, fit_s


def ensemble_members(routers: list[str], router_params: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The members of the ``ensemble`` in ``routers`` (none when there is no ensemble there)."""
    if "ensemble" not in routers:
        return []
    from turnout.routing.ensemble import default_members

    return list((router_params or {}).get("ensemble", {}).get("members") or default_members())


def evaluate_router(
    router: Router,
    train: RoutingTable | None,
    test: RoutingTable,
    Xtr: np.ndarray | None,
    Xte: np.ndarray,
    *,
    fit_s: float | None = None,
) -> dict[str, Any]:
    """Fit ``router`` on train (unless ``fit_s`` says it already was: then train and Xtr may be None), sweep λ on test.

    Returns the per-router JSON block of ``turnout eval``.
    """
    if fit_s is None:
        if train is None or Xtr is None:
            raise DataError("evaluate_router needs training data to fit the router", fix="pass train and Xtr, or fit_s")
        t0 = time.perf_counter()
        router.fit(train.to_training_data(Xtr))
        fit_s = time.perf_counter() - t0
    pred = only_observed(router.predict(Xte), test)
    assert pred.available is not None
    return {
        **sweep(pred, test),
        "fit_s": fit_s,
        "decision_ms_p50": _decision_p50(router, Xte, pred.available),
        **({"within_task_auc": within_task_auc(pred.quality, test.scores, test.tasks)} if test.tasks else {}),
    }


def progress_bar() -> Any:
    """The rich progress bar of long evaluation work (description, bar, done/total, elapsed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)


def _decision_p50(router: Router, Xte: np.ndarray, avail: np.ndarray) -> float | None:
    """Median ms of one routing decision (predict one row + the policy) over up to 200 test prompts."""
    lat = []
    for i in range(min(len(Xte), 200)):
        t = time.perf_counter()
        p1 = router.predict(Xte[i : i + 1])
        choose(Prediction(p1.models, p1.quality, p1.cost, avail[i : i + 1]), 0.0)
        lat.append((time.perf_counter() - t) * 1e3)
    return float(np.median(lat)) if lat else None


def task_mean_references(train: RoutingTable, test: RoutingTable, base: dict[str, Any]) -> dict[str, Any]:
    """Evaluation-only reference lines for tables with a ``task`` column (like the oracle, not routers).

    ``task_means``: each test prompt is given its TRUE task and the per-task mean quality and cost
    of every model on *train*: the line a router reaches by learning only which model suits which
    task. ``task_means_test``: the same with the test set's own per-task means, so it peeks at test:
    the best any per-task rule could do on this test set. A learned router above ``task_means``
    has found signal within tasks. Empty when either table lacks tasks.

    Each entry also carries ``_choices`` (L × n model indices per λ), for the
    paired comparisons of :func:`run_eval`; it is not part of the JSON.
    """
    if not train.tasks or not test.tasks:
        return {}
    ttr = np.asarray(train.tasks, dtype=object).astype(str)
    tte = np.asarray(test.tasks, dtype=object).astype(str)
    if len(np.unique(tte)) < 2:
        return {}  # one task: the line is the single-model hull, which is already in the output
    out: dict[str, Any] = {}
    for key, (src, tsrc) in {"task_means": (train, ttr), "task_means_test": (test, tte)}.items():
        q = np.full(test.scores.shape, np.nan)
        c = np.full(test.costs.shape, np.nan)
        overall_q, overall_c = np.nanmean(src.scores, axis=0), np.nanmean(src.costs, axis=0)
        for task in np.unique(tte):
            rows, srows = tte == task, tsrc == task
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a model with no outcome in a task
                tq = np.nanmean(src.scores[srows], axis=0) if srows.any() else overall_q
                tc = np.nanmean(src.costs[srows], axis=0) if srows.any() else overall_c
            q[rows] = np.where(np.isnan(tq), overall_q, tq)
            c[rows] = np.where(np.isnan(tc), overall_c, tc)
        pred = only_observed(Prediction(list(test.models), np.nan_to_num(q, nan=0.0), np.nan_to_num(c, nan=0.0)), test)
        res = sweep(pred, test)
        out[key] = {**curve_metrics(res["curve"], base), "curve": distinct_points(res["curve"]), "_choices": res["_choices"]}
    return out


def baselines(test: RoutingTable) -> dict[str, Any]:
    """Single models, best single model, oracle and the single-model hull's AIQ on ``test``."""
    singles = {
        m: {"quality": float(np.nanmean(test.scores[:, j])), "cost": float(np.nanmean(test.costs[:, j]))}
        for j, m in enumerate(test.models)
        if (~np.isnan(test.scores[:, j])).any()
    }
    best = max(singles, key=lambda m: (singles[m]["quality"], -singles[m]["cost"]))
    pts = np.array([[v["cost"], v["quality"]] for v in singles.values()])
    oq, oc = oracle(test.scores, test.costs)
    return {
        "single_models": singles,
        "best_single": {"model": best, **singles[best]},
        "oracle": {"quality": oq, "cost": oc},
        "single_models_aiq": aiq(pts, pts[:, 0].min(), pts[:, 0].max()),
        "_range": (pts[:, 0].min(), pts[:, 0].max()),
    }


def two_model_metrics(
    curve: list[list[float]], shares: list[list[float]], test: RoutingTable, base: dict[str, Any]
) -> dict[str, Any]:
    """RouteLLM's APGR and CPT(50%/80%) for a two-model table; {} for any other number of models.

    The strong model is the best single model on test, the weak one the other; a curve point's
    share is the fraction of test prompts routed to the strong model.
    """
    if len(test.models) != 2 or len(base["single_models"]) != 2:
        return {}
    strong = test.models.index(base["best_single"]["model"])
    weak_name = test.models[1 - strong]
    q_strong, q_weak = base["best_single"]["quality"], base["single_models"][weak_name]["quality"]
    if q_strong - q_weak <= 1e-12:
        return {"apgr": None, "cpt50": None, "cpt80": None}
    s = np.array([sh[strong] for sh in shares], dtype=float)
    q = np.array([c[1] for c in curve], dtype=float)
    return apgr_cpt(s, q, q_weak, q_strong)


def run_eval(
    train: RoutingTable,
    test: RoutingTable,
    Xtr: np.ndarray,
    Xte: np.ndarray,
    routers: list[str],
    *,
    table: str = "",
    progress: bool = True,
    router_params: dict[str, dict[str, Any]] | None = None,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
    variants: dict[str, str] | None = None,
    cascades: CascadeOptions | None = None,
) -> dict[str, Any]:
    """The whole ``turnout eval`` result (see docs/eval.md) for ``routers`` on a train/test split.

    ``router_params`` maps a name in ``routers`` to its parameters; ``variants``
    maps names in ``routers`` that are labels of their own to the router each runs
    (``{"knn50": "knn"}`` with ``router_params={"knn50": {"k": 50}}`` compares two
    kNNs paired on the same split).
    Shows a rich progress bar over the routers being fitted when ``progress`` is true.
    ``bootstrap`` resamples of the test prompts give each AIQ a 95% interval (0 turns it off).
    With ``cascades``, and answer texts in both splits, cascades and fan-outs are simulated
    beside the routers (:func:`turnout.evaluation.cascade_eval.evaluate_cascades`): the
    result gains ``cascades``, ``best_cascade`` and ``acceptance``; the routers' figures are unchanged.
    """
    train, unseen = drop_untrained_models(train)
    test, left_out = align_models(train, test)  # the untrained models are now among the left out
    base = baselines(test)
    out, weights, single = _result_head(
        test, base, left_out, table, bootstrap, seed, n_train=len(train), estimated=train.cost_estimated
    )
    if unseen:
        out.setdefault("notes", []).append(
            f"left out, with no outcome on any training prompt (a router cannot learn them): {', '.join(unseen)}"
        )
    refs = task_mean_references(train, test, base)
    ref_choices = {key: r.pop("_choices") for key, r in refs.items()}
    if refs:
        out["references"] = refs
    task_line = (
        aiq_resamples(ref_choices["task_means"], test, weights) if weights is not None and "task_means" in ref_choices else None
    )
    samples: dict[str, np.ndarray] = {}  # each router's AIQ per resample, for the paired comparisons
    evaluation_only: list[str] = []

    fitter = RouterFitter(
        train.to_training_data(Xtr), router_params, reuse=ensemble_members(routers, router_params), variants=variants
    )

    def one(name: str) -> None:
        router, fit_s = fitter.fit(name)
        _record(
            out,
            name,
            router,
            evaluate_router(router, train, test, Xtr, Xte, fit_s=fit_s),
            test,
            base,
            weights,
            samples,
            evaluation_only,
        )

    if not progress:
        for name in routers:
            one(name)
    else:
        _fit_all(routers, one, out)
    if single is not None:
        paired_comparisons(out, samples, single, evaluation_only, task_line)
    if cascades is not None:
        _add_cascades(out, train, test, Xtr, Xte, base, cascades, weights, single, samples, progress)
    return out


def _add_cascades(
    out: dict[str, Any],
    train: RoutingTable,
    test: RoutingTable,
    Xtr: np.ndarray,
    Xte: np.ndarray,
    base: dict[str, Any],
    options: CascadeOptions,
    weights: np.ndarray | None,
    single: np.ndarray | None,
    samples: dict[str, np.ndarray],
    progress: bool,
) -> None:
    """Cascades and fan-outs beside the routers, paired with the best router on the same resamples."""
    from turnout.evaluation.cascade_eval import evaluate_cascades

    best = out.get("best_router")
    with progress_bar() if progress else contextlib.nullcontext() as bar:
        log: Callable[[str], None] | None = None
        if bar is not None:
            task = bar.add_task("cascades and fan-outs", total=None)

            def say(msg: str) -> None:
                bar.update(task, description=msg, advance=1)
                bar.console.log(msg)

            log = say
        extra = evaluate_cascades(
            train,
            test,
            Xtr,
            Xte,
            base,
            options=options,
            weights=weights,
            single=single,
            best=samples.get(best) if best else None,
            log=log,
        )
        if bar is not None:
            done = next(t.completed for t in bar.tasks if t.id == task)
            bar.update(task, description="cascades and fan-outs simulated", total=done)
    if extra.get("cascades"):
        out["cascades"] = extra["cascades"]
        out["best_cascade"] = max(extra["cascades"], key=lambda n: extra["cascades"][n]["aiq"])
    if extra.get("acceptance"):
        out["acceptance"] = extra["acceptance"]
    if extra.get("notes"):
        out.setdefault("notes", []).extend(extra["notes"])


def drop_untrained_models(train: RoutingTable) -> tuple[RoutingTable, list[str]]:
    """``train`` without the models that have no outcome on any of its prompts, and those models.

    Such a column (a model that only has test rows under a split column) would
    be scored by every router from nothing but its prior; it is left out, and
    named, as a test model absent from training is. A table with no model left is an error.
    """
    seen = ~np.isnan(train.scores).all(axis=0)
    if seen.all():
        return train, []
    if not seen.any():
        raise DataError(
            "no model has an outcome on any training prompt",
            file=train.source or None,
            fix="check the table's split column: every outcome is on a test prompt",
        )
    return (train.with_models([m for m, k in zip(train.models, seen) if k]), [m for m, k in zip(train.models, seen) if not k])


def result_notes(test: RoutingTable, base: dict[str, Any], estimated: bool = False) -> list[str]:
    """What a reader of the figures should know about ``test`` (printed under the table, and in the JSON)."""
    notes = []
    n_models = len(base["single_models"])
    if n_models < 2:
        notes.append(
            "the test prompts have outcomes of one model only: there is nothing to route, and every router makes the same choice"
        )
    elif same_cost(*base["_range"]):
        notes.append(
            f"every model costs the same on average here ({base['_range'][0]:.4g}): the cost axis says "
            "nothing, so AIQ is each router's quality at that cost"
        )
    if len(test) < 30:
        notes.append(f"only {len(test)} test prompt(s): every figure is very noisy")
    coverage = (~np.isnan(test.scores)).mean(axis=0)
    partial = [m for m, c in zip(test.models, coverage) if 0 < c < 1]
    if partial:
        notes.append(
            f"{len(partial)} of {len(test.models)} models lack outcomes on some test prompts (coverage "
            f"{coverage[coverage > 0].min():.0%} and up): a single model's quality and cost (and so the best "
            "single model and the single-model hull) are means over the prompts that model answered, while "
            "routers and the oracle are measured over every prompt"
        )
    if estimated or test.cost_estimated:
        notes.append(
            "some costs were estimated: card prices × token counts assumed from the prompt's length or a "
            "default answer length (no cost_usd or token counts there), so the cost axis is approximate"
        )
    return notes


def _result_head(
    test: RoutingTable,
    base: dict[str, Any],
    left_out: list[str],
    table: str,
    bootstrap: int,
    seed: int,
    n_train: int | None = None,
    estimated: bool = False,
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """A result's baselines, the bootstrap weights (None with ``bootstrap`` 0) and the single-model hull's resamples."""
    out: dict[str, Any] = {
        "table": table,
        **({"n_train": n_train} if n_train is not None else {}),
        "n_test": len(test),
        "best_single": base["best_single"],
        "oracle": base["oracle"],
        "single_models_aiq": base["single_models_aiq"],
        "single_models": base["single_models"],
        "routers": {},
    }
    if left_out:
        out["models_left_out"] = left_out
    notes = result_notes(test, base, estimated)
    if notes:
        out["notes"] = notes
    weights = bootstrap_weights(len(test), bootstrap, seed) if bootstrap else None
    single = single_models_aiq_resamples(test, weights) if weights is not None else None
    if single is not None:
        out["single_models_aiq_ci"] = interval95(single)
    return out, weights, single


def _record(
    out: dict[str, Any],
    name: str,
    router: Router,
    res: dict[str, Any],
    test: RoutingTable,
    base: dict[str, Any],
    weights: np.ndarray | None,
    samples: dict[str, np.ndarray],
    evaluation_only: list[str],
) -> None:
    """Put one router's metrics (from :func:`evaluate_router`) in ``out``; keep its AIQ resamples for the pairing."""
    shares, choices = res.pop("_shares"), res.pop("_choices")
    ci: dict[str, Any] = {}
    if weights is not None:
        samples[name] = aiq_resamples(choices, test, weights)
        ci = {"aiq_ci": interval95(samples[name])}
    if router.evaluation_only:
        evaluation_only.append(name)
    out["routers"][name] = {
        **curve_metrics(res["curve"], base),
        **two_model_metrics(res["curve"], shares, test, base),
        **ci,
        **res,
        "curve": distinct_points(res["curve"]),
    }


def eval_fitted(
    test: RoutingTable,
    routers: dict[str, tuple[Router, np.ndarray]],
    *,
    table: str = "",
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """``turnout eval --artifact``: routers fitted elsewhere (saved artifacts) measured on a whole table.

    ``routers`` maps a name to ``(router, embeddings of test's prompts)`` (each
    artifact with its own embedder). They must route the same models, in any order. The
    result has ``run_eval``'s schema, without ``n_train`` and the task-mean
    references (no training table is at hand) and with every ``fit_s`` null.
    """
    if not routers:
        raise DataError("no router to evaluate", fix="give at least one --artifact")
    model_lists = {name: list(r.models) for name, (r, _) in routers.items()}
    first = next(iter(model_lists.values()))
    if any(set(m) != set(first) for m in model_lists.values()):
        detail = "; ".join(f"{n}: {', '.join(m)}" for n, m in model_lists.items())
        raise DataError(f"the artifacts route different models ({detail})", fix="evaluate them one at a time")
    test, left_out = align_to(first, test, "the artifacts")
    base = baselines(test)
    out, weights, single = _result_head(test, base, left_out, table, bootstrap, seed)
    samples: dict[str, np.ndarray] = {}
    evaluation_only: list[str] = []
    for name, (router, Xte) in routers.items():
        # the same models in this router's column order; prompts (and so the resamples) stay the same
        own = test if list(router.models) == first else test.with_models(list(router.models))
        res = evaluate_router(router, None, own, None, Xte, fit_s=0.0)
        res["fit_s"] = None  # fitted elsewhere
        _record(out, name, router, res, own, base, weights, samples, evaluation_only)
    if single is not None:
        paired_comparisons(out, samples, single, evaluation_only)
    return out


def _fit_all(routers: list[str], one: Callable[[str], None], out: dict[str, Any]) -> None:
    """Run ``one`` on each router under a rich progress bar, logging each router's AIQ as it lands."""
    with progress_bar() as bar:
        task = bar.add_task("fitting routers", total=len(routers))
        for name in routers:
            bar.update(task, description=f"fitting {name}")
            one(name)
            # a line per router, above the bar; when output is piped (CI, a log file) the bar only shows at the end
            r = out["routers"][name]
            bar.console.log(f"{name}: AIQ {r['aiq']:.4f}, fitted in {r['fit_s']:.1f} s")
            bar.advance(task)
        bar.update(task, description="fitted routers")


def align_models(train: RoutingTable, test: RoutingTable) -> tuple[RoutingTable, list[str]]:
    """``test`` with its model columns in ``train``'s order, and the test models train never saw.

    Routers predict one column per *training* model, so a test table loaded from
    another file (whose models may come in another order) is re-indexed to
    train's models before any prediction meets a test outcome. A model with
    test outcomes but no training column cannot be scored by a trained router:
    it is left out of the evaluation (and named in the result's
    ``models_left_out``). A training model missing from test is simply never a
    candidate there.
    """
    return align_to(list(train.models), test, "the training table")


def align_to(models: list[str], test: RoutingTable, what: str) -> tuple[RoutingTable, list[str]]:
    """``test`` re-indexed to ``models`` (a router's), and the test models left out (see :func:`align_models`)."""
    if list(test.models) == list(models):
        return test, []
    left_out = [m for m in test.models if m not in set(models)]
    aligned = test.with_models(list(models))
    if not (~np.isnan(aligned.scores)).any():
        raise DataError(
            f"the test table shares no model with {what}",
            file=test.source or None,
            fix=f"models there: {', '.join(models)}; test models: {', '.join(test.models)}",
        )
    return aligned, left_out
