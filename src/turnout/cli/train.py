"""``turnout train TABLE --router NAME --out FILE.npz``: fit one router and save the artifact a route points at.

The artifact's metadata carries what the gateway reads (``lambda``; ``models``
is stored by :func:`~turnout.routing.artifact.save_router`; ``calibration``,
the router's predictions on a sample of training prompts, from which a route's
``budget`` is turned into λ at the *fleet's* prices, see
:mod:`turnout.gateway.budget`) plus provenance: embedder, table, router name
and parameters, training size and the target λ was calibrated for.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from turnout.errors import DataError, RoutingError

#: cross-validation folds of ``--router auto``
CV_FOLDS = 4
#: fewer training prompts per fold than this make fold AIQs jumpy (and their mean optimistic): warned about
MIN_FOLD_PROMPTS = 30


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="fit a router and save the artifact a route points at")
    p.add_argument("table")
    p.add_argument(
        "--router",
        required=True,
        help="router name (see turnout.routing.router_names()), or 'auto': the candidate with the best "
        "cross-validated AIQ on the training prompts",
    )
    p.add_argument(
        "--candidates",
        help="with --router auto: comma-separated routers to choose among (default: knn,mlp,mf,bt,graph,profile,ensemble)",
    )
    p.add_argument(
        "--cv-folds", type=int, default=CV_FOLDS, help=f"with --router auto: cross-validation folds (default {CV_FOLDS})"
    )
    p.add_argument("--out", required=True, help="artifact path (.npz)")
    p.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    p.add_argument("--models-card", help="models.json with per-model prices (default: beside the table)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="router parameter, repeatable (values parsed as int, float, bool or str)",
    )
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument(
        "--target-cost",
        type=float,
        metavar="USD",
        help="calibrate lambda so the mean predicted cost on training prompts is <= USD",
    )
    tgt.add_argument(
        "--target-share", type=float, metavar="F", help="calibrate lambda so at most F of training prompts go to --share-model"
    )
    p.add_argument("--share-model", help="model --target-share limits (default: the most expensive)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="when the table has no split column, hold out this seeded random share of prompts "
        "(default 0: train on every prompt)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"knn,mlp"`` -> ["knn", "mlp"] (a list, each item
    parsed the same way: the ensemble's ``members`` and ``weights``), anything else stays a str."""
    if "," in text:
        return [parse_value(item.strip()) for item in text.split(",") if item.strip()]
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def check_targets(args: Any) -> None:
    """``--target-cost`` / ``--target-share`` / ``--share-model`` values that cannot mean anything, refused up front."""
    if args.target_cost is not None and not args.target_cost > 0:
        raise DataError(
            f"--target-cost {args.target_cost} is not a positive mean cost per request in USD",
            fix="give e.g. --target-cost 0.002",
        )
    if args.target_share is not None and not 0 <= args.target_share <= 1:
        raise DataError(
            f"--target-share {args.target_share} is not a share of prompts in [0, 1]", fix="give e.g. --target-share 0.2"
        )
    if args.share_model is not None and args.target_share is None:
        raise DataError("--share-model only means something with --target-share", fix="add --target-share F")


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise RoutingError(f"--param '{item}' is not KEY=VALUE (e.g. --param k=40)")
        out[key.strip()] = parse_value(val)
    return out


def train_split(table: Any, test_fraction: float, seed: int) -> tuple[Any, int]:
    """(training table, number of held-out prompts): the train split if any, else all or a seeded random share."""
    if table.split is not None:
        sp = np.array(table.split)
        if (sp == "train").any():
            idx = np.flatnonzero(sp == "train")
            return table.subset(idx), len(table) - len(idx)
    if test_fraction == 0:
        return table, 0
    if not 0 < test_fraction < 1:
        raise DataError(f"--test-fraction {test_fraction} not in [0, 1)", fix="use e.g. 0.25, or 0 for every prompt")
    perm = np.random.default_rng(seed).permutation(len(table))
    k = max(1, int(round(len(table) * test_fraction)))
    if k >= len(table):
        raise DataError(f"--test-fraction {test_fraction} leaves no training prompt", file=table.source)
    return table.subset(np.sort(perm[k:])), k


def _warn_about(train: Any, args: Any, auto: bool) -> None:
    """Warnings for training data that can be fitted but hardly routes (the fit goes ahead)."""
    import warnings

    observed = [m for j, m in enumerate(train.models) if (~np.isnan(train.scores[:, j])).any()]
    if len(observed) < 2:
        warnings.warn(
            f"the training prompts have outcomes of {len(observed)} model(s): there is nothing to route",
            UserWarning,
            stacklevel=2,
        )
    if len(train) < 30:
        warnings.warn(
            f"only {len(train)} training prompt(s): the router's predictions will be little better than each model's mean",
            UserWarning,
            stacklevel=2,
        )
    if auto and len(train) / max(args.cv_folds, 1) < MIN_FOLD_PROMPTS:
        warnings.warn(
            f"--cv-folds {args.cv_folds} leaves about {len(train) // max(args.cv_folds, 1)} prompts per fold: "
            "fold AIQs jump and their mean is optimistic (use fewer folds)",
            UserWarning,
            stacklevel=2,
        )


def _candidates(args: Any, params: dict[str, Any]) -> list[str] | None:
    """The routers ``--router auto`` chooses among (None for a named router), checked before any work."""
    from turnout.evaluation.crossval import AUTO_CANDIDATES
    from turnout.routing.registry import create_router

    if args.router != "auto":
        if args.candidates:
            raise RoutingError("--candidates needs --router auto")
        if args.cv_folds != CV_FOLDS:
            raise RoutingError("--cv-folds needs --router auto (a named router is not cross-validated)")
        return None
    if params:
        raise RoutingError("--param needs a named router; --router auto uses each candidate's defaults")
    names = [c for c in (args.candidates.split(",") if args.candidates else AUTO_CANDIDATES) if c]
    if not args.candidates:  # the default candidates: leave out what cannot run here, and say so
        from turnout.cli._ui import console, runnable

        names = runnable(names, console())
    for c in names:
        if getattr(create_router(c), "evaluation_only", False):
            raise RoutingError(f"router '{c}' cannot be a candidate: it cannot be trained for serving")
    if not names:
        raise RoutingError("--candidates names no router")
    return names


def run(args: Any) -> int:
    from turnout.cli._ui import check_artifact_path
    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.routing.artifact import save_router
    from turnout.routing.base import Prediction
    from turnout.routing.calibration import calibration_sample
    from turnout.routing.policy import calibrate_lambda, choose
    from turnout.routing.registry import create_router

    out = check_artifact_path(args.out)
    check_targets(args)
    params = parse_params(args.param)
    candidates = _candidates(args, params)
    name = args.router
    if candidates is None:
        router = create_router(name, **params)  # fails early on an unknown router or parameter
        if getattr(router, "evaluation_only", False):
            raise RoutingError(f"router '{name}' reads ground truth at prediction time; it cannot be trained for serving")
    table = load_table(args.table, models_card=args.models_card)
    if args.share_model is not None and args.share_model not in table.models:
        raise DataError(
            f"--share-model {args.share_model} is not a model of the table",
            file=str(args.table),
            fix=f"choose one of: {', '.join(table.models)}",
        )
    train, n_held = train_split(table, args.test_fraction, args.seed)
    _warn_about(train, args, candidates is not None)
    emb = create_embedder(args.embedder, threads=os.cpu_count() or 1)  # a batch job: use every core
    X = np.asarray(emb.embed(train.prompts))
    selection = None
    if candidates is not None:
        from turnout.evaluation.crossval import choose_router, cross_validate, tied_with

        cv = cross_validate(train, X, candidates, folds=args.cv_folds, seed=args.seed, progress=True)
        name = choose_router(cv)
        tied = tied_with(cv, name)
        selection = {
            "method": f"{args.cv_folds}-fold cross-validated AIQ on the training prompts",
            "candidates": candidates,
            "folds": args.cv_folds,
            "seed": args.seed,
            "scores": cv,
            "tied_with_choice": tied,
        }
        print(
            f"cross-validated AIQ ({args.cv_folds} folds): "
            + ", ".join(f"{r} {cv[r]['aiq']:.4f}" for r in sorted(cv, key=lambda r: -cv[r]["aiq"]))
            + f"; chose {name}"
        )
        if tied:
            print(
                f"  the folds do not tell {name} apart from: {', '.join(tied)} "
                "(paired fold differences within 2 standard errors); naming one with --router skips the cross-validation"
            )
        router = create_router(name)
    router.fit(train.to_training_data(X))

    lam, target = 0.0, None
    if args.target_cost is not None or args.target_share is not None:
        pred = router.predict(X)
        avail = ~np.isnan(train.scores)
        pred = Prediction(
            models=pred.models,
            quality=pred.quality,
            cost=pred.cost,
            available=avail if pred.available is None else (pred.available & avail),
        )
        lam = calibrate_lambda(pred, target_cost=args.target_cost, target_share=args.target_share, model=args.share_model)
        idx = choose(pred, lam)
        rows = np.arange(len(idx))
        share_model = args.share_model
        if args.target_share is not None and share_model is None:  # calibrate_lambda's default: most expensive
            share_model = pred.models[int(np.argmax(np.nanmean(pred.cost, axis=0)))]
        target = {
            "cost_usd": args.target_cost,
            "share": args.target_share,
            "share_model": share_model,
            **({"train_share": float(np.mean(np.asarray(pred.models)[idx] == share_model))} if share_model is not None else {}),
            "train_mean_predicted_cost": float(pred.cost[rows, idx].mean()),
            "train_mean_true_cost": float(np.nanmean(train.costs[rows, idx])),
            "train_mean_true_quality": float(np.nanmean(train.scores[rows, idx])),
        }
    meta = {
        "embedder": args.embedder,
        "models": list(getattr(router, "models", train.models)),
        "table": str(args.table),
        "router_name": name,
        "router_params": params,
        "selection": selection,
        "n_train": len(train),
        "n_held_out": n_held,
        "lambda": float(lam),
        "target": target,
        "cost_estimated": bool(table.cost_estimated),
        # what a route's budget is calibrated on, at the serving fleet's prices (gateway/budget.py)
        "calibration": calibration_sample(router, X, train.prompts, seed=args.seed),
    }
    try:
        save_router(router, out, meta=meta)
    except NotImplementedError as exc:
        raise RoutingError(f"router '{name}' cannot be saved: {exc}") from exc
    msg = f"trained {name} on {len(train)} prompts × {len(train.models)} models; lambda={lam:.6g}; wrote {out}"
    if target is not None:
        msg += (
            f"\n  on training prompts: mean predicted cost {target['train_mean_predicted_cost']:.6g} USD, "
            f"true cost {target['train_mean_true_cost']:.6g} USD, quality {target['train_mean_true_quality']:.4g}"
        )
        if "train_share" in target:
            msg += f", share to {target['share_model']} {target['train_share']:.1%} (target ≤ {args.target_share:.1%})"
    print(msg)
    return 0
