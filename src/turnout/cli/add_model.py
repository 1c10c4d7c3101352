"""``turnout add-model ARTIFACT PROBE --model NAME --out OUT.npz``: add a model to a trained profile router.

A model that joins the fleet after training needs no new routing table. Its
outcomes on a few probe prompts (≤ 50 is the intended size), in any table
format ``turnout data`` reads, plus its card's prices, are enough for the
``profile`` router to score it on every prompt (cold start, as in RouteProfile
and Model-SAT: :meth:`turnout.routing.profile.ProfileRouter.add_model`). The
probe prompts are embedded with the artifact's own embedder.

The artifact's calibration sample (what a route's budget is calibrated on)
gets a column for the new model too. It is exact when the sample stored the
prompts' capability mixes (artifacts trained by this version). For older
artifacts, the new profile is expressed as a blend of the trained models'
profiles (:meth:`~turnout.routing.profile.ProfileRouter.as_blend`), which turns
their stored predictions into its own; the command prints how close that blend is.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from turnout.errors import DataError, RoutingError

#: fewer probe prompts than this get a warning: the new model's profile is then mostly a guess
MIN_PROBES = 10


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "add-model", help="add a model to a trained profile router from a few probe outcomes", description=__doc__
    )
    p.add_argument("artifact", help="a profile router artifact (.npz) from 'turnout train --router profile'")
    p.add_argument("probe", help="a routing table with the new model's outcomes on a few prompts")
    p.add_argument("--model", required=True, help="the model in the probe table to add")
    p.add_argument("--as", dest="as_name", help="name it this in the artifact (default: --model)")
    p.add_argument("--models-card", help="models.json with the model's prices (default: beside the probe table)")
    p.add_argument("--out", required=True, help="where to write the new artifact (.npz); may be ARTIFACT itself")
    p.set_defaults(func=run)


def calibration_column(router: Any, name: str, calibration: dict[str, Any]) -> tuple[list[float | None], float, str]:
    """The new model's predicted quality on the calibration prompts, the largest possible error, and how.

    Exact from the sample's stored ``features`` (artifacts of this version);
    else, for older artifacts, a blend of the stored predictions of the trained
    models, off by at most the blend's residual.
    """
    features = calibration.get("features")
    if features is not None and len(features) == len(calibration["quality"]):
        col = router.quality_from_features(np.asarray(features, dtype=float), name)
        return [round(float(v), 6) for v in col], 0.0, "exact, from the stored capability mixes"
    intercept, weights, residual = router.as_blend(name, list(calibration["models"]))
    Q = np.array([[np.nan if v is None else v for v in row] for row in calibration["quality"]], dtype=float)
    col = np.clip(intercept + Q @ weights, 0.0, 1.0) if len(Q) else np.zeros(0)
    return [None if np.isnan(v) else round(float(v), 6) for v in col], residual, "a blend of the trained models'"


def run(args: Any) -> int:
    from turnout.cli._ui import check_artifact_path
    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.routing.artifact import ARTIFACT_KEYS, load_router, save_router

    out = check_artifact_path(args.out)
    router, meta = load_router(args.artifact)
    if not hasattr(router, "add_model"):
        raise RoutingError(
            f"{args.artifact} holds a '{meta.get('router')}' router; only 'profile' can add a model "
            "from probes (train one with --router profile, or train again with the model's outcomes)"
        )
    name = args.as_name or args.model
    if name in router.models:
        raise RoutingError(
            f"--as {name} is already routed by {args.artifact}; choose another name"
            if args.as_name
            else f"model '{name}' is already routed by {args.artifact}; name it otherwise with --as"
        )
    table = load_table(args.probe, models_card=args.models_card)
    if args.model not in table.models:
        raise DataError(
            f"model '{args.model}' has no outcome in the probe table",
            file=str(args.probe),
            fix=f"models there: {', '.join(table.models)}",
        )
    j = table.models.index(args.model)
    rows = np.flatnonzero(~np.isnan(table.scores[:, j]))
    if not len(rows):
        raise DataError(f"model '{args.model}' has no scored prompt in the probe table", file=str(args.probe))
    embedder = meta.get("embedder", "minilm")
    X = np.asarray(create_embedder(embedder).embed([table.prompts[i] for i in rows]))
    card = table.model_cards.get(args.model)
    known_prices = np.asarray(getattr(router, "prices", []), dtype=float)
    if not table.cost_estimated:
        costs, cost_from = table.costs[rows, j], "probe costs"
    elif np.isfinite(known_prices).any():  # the artifact knows its models' card prices: price by their ratio
        costs, cost_from = None, "card"
    else:  # trained on measured costs: compare like with like, the card's price × the probes' estimated tokens
        costs, cost_from = table.costs[rows, j], "card prices × estimated probe tokens"
    if len(rows) < MIN_PROBES:
        warnings.warn(
            f"only {len(rows)} probe prompt(s) for {args.model}: its profile is mostly the blend of the "
            f"trained models' it resembles, and its quality is uncertain (aim for {MIN_PROBES}–50)",
            UserWarning,
            stacklevel=2,
        )
    router.add_model(name, X, table.scores[rows, j], card=card, costs_probe=costs)

    new_meta = {k: v for k, v in meta.items() if k not in ARTIFACT_KEYS}
    new_meta["models"] = list(router.models)
    added = {"model": name, "from": args.model, "probe_table": str(args.probe), "n_probe": int(len(rows)), "cost_from": cost_from}
    calibration = new_meta.get("calibration")
    if isinstance(calibration, dict):
        col, residual, how = calibration_column(router, name, calibration)
        calibration["models"] = [*calibration["models"], name]
        calibration["quality"] = [[*row, v] for row, v in zip(calibration["quality"], col)]
        added["calibration_residual"], added["calibration"] = residual, how
    new_meta["added_models"] = [*new_meta.get("added_models", []), added]
    save_router(router, out, meta=new_meta)
    msg = (
        f"added {name} to {args.artifact} from {len(rows)} probe prompt(s) ({embedder} embeddings; cost from "
        f"{added['cost_from']}); wrote {out}"
    )
    if isinstance(calibration, dict) and "calibration_residual" in added:
        msg += (
            f"\n  budget calibration: {name}'s quality on the artifact's {len(calibration['quality'])} calibration "
            f"prompts is {added['calibration']} (largest error {added['calibration_residual']:.3g})"
        )
    else:
        msg += "\n  the artifact has no calibration sample: a route budget cannot be calibrated on it (re-train it)"
    print(msg)
    return 0
