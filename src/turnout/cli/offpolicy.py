"""``turnout eval offpolicy LOG --router X``: what another router would have scored and cost on logged traffic.

LOG is turnout's SQLite request log. Every routed request that was answered by
the model its decision chose, and that has a feedback score, a cost and a
propensity (the probability the logging policy gave that model), is one
sample. X is a router artifact (``turnout train``'s ``.npz``; the logged
prompts are embedded with its own embedder) or, with ``--config``, the name of
a route of a config file (its router, candidates and λ as the gateway would
build them). The target chooses among the candidates each logged decision
had, priced as the decision priced them; its mean feedback score and mean cost
are estimated by IPS, self-normalised IPS and doubly robust estimators, each
with a 95% interval (:mod:`turnout.evaluation.offpolicy`).

Rows are skipped, with a count per reason: not answered (an error), not routed
(no candidates: a model asked for by name), answered by the cache or a guard,
answered by a fallback (the logged reward is another model's), no feedback,
no cost, no propensity.
Decisions logged before propensities were recorded have none; they came from
deterministic routers, and ``--assume-deterministic`` takes them as
propensity 1.0.

Example::

    turnout eval offpolicy turnout-requests.sqlite --router knn.npz --json out/offpolicy.json
    turnout eval offpolicy turnout-requests.sqlite --router auto --config turnout.yaml --lambda 200
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import ConfigError, DataError


def register(subparsers: Any) -> None:
    """Register ``eval offpolicy`` (as the ``eval`` command with one sub-command; see ``cli/main.py``)."""
    p = subparsers.add_parser("eval", help="train and compare routers on a routing table")
    inner = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    q = inner.add_parser(
        "offpolicy", help="estimate another router's quality and cost on logged traffic", description=__doc__.split("\n\n")[0]
    )
    q.add_argument("log", help="the request log (SQLite) the gateway wrote")
    q.add_argument("--router", required=True, help="a router artifact (.npz), or with --config the name of a route")
    q.add_argument("--config", help="turnout.yaml whose route --router names (API-key variables need not be set)")
    q.add_argument("--route", help="only the requests logged under this route (default: every routed request)")
    q.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        metavar="L",
        help="the target's λ (default: the route's, its budget's start-up λ, or the artifact's)",
    )
    q.add_argument(
        "--assume-deterministic",
        action="store_true",
        help="take requests logged without a propensity as propensity 1.0 (a deterministic router's)",
    )
    q.add_argument("--embedder", choices=["minilm", "hashing"], help="override the embedder of the prompts")
    q.add_argument("--seed", type=int, default=0, help="seed of the direct model's cross-fitting folds")
    q.add_argument("--json", help="write the estimates here")
    q.set_defaults(func=run)


@dataclass
class LoggedDecisions:
    """Logged requests as arrays over the fleet models that appear among their candidates (``arms``)."""

    path: str
    arms: list[str]
    prompts: list[str]
    actions: np.ndarray
    propensity: np.ndarray
    score: np.ndarray
    cost: np.ndarray
    #: n × K: the model was a candidate of that decision and not excluded
    available: np.ndarray
    #: n × K: the decision's predicted cost (NaN where not a candidate)
    predicted_cost: np.ndarray
    #: reason -> requests left out
    skipped: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def _entries(path: Path, route: str | None) -> Iterator[Any]:
    from turnout.gateway.requestlog import RequestLog

    log = RequestLog(path)
    try:
        # oldest first: the order the traffic came in
        yield from reversed(log.query(route=route, limit=None))
    finally:
        log.close()


def logged_decisions(path: str | Path, *, route: str | None = None, assume_deterministic: bool = False) -> LoggedDecisions:
    """Read a request log into the arrays off-policy estimators take, counting what is skipped and why.

    A request's propensity is ``entry.propensity`` (the probability its
    router gave the chosen model). Logs written before that field existed have
    none: with ``assume_deterministic`` such requests count as propensity 1.0,
    else they are skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("request log not found", file=str(p), fix="pass the SQLite file the gateway writes (server.request_log)")
    skipped: dict[str, int] = {}
    rows: list[tuple[str, str, float, float, float, dict[str, tuple[bool, float]]]] = []
    arms: dict[str, int] = {}
    total = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for e in _entries(p, route):
        total += 1
        cands = {
            str(c.get("model")): (not c.get("excluded"), _float(c.get("cost")))
            for c in e.candidates or []
            if isinstance(c, Mapping) and c.get("model")
        }
        if e.status != "ok":
            skip("not answered (error)")
        elif not cands:
            skip("not routed (no candidates)")
        elif getattr(e, "answered_by", None) not in (None, "model"):
            skip(f"answered by the {e.answered_by}, not a model")  # a cache hit or a guard: no model's reward
        elif e.fallbacks_tried:
            skip("answered by a fallback")
        elif e.model not in cands or not cands[e.model][0]:
            skip("answered by a model that was not a candidate")
        elif e.score is None:
            skip("no feedback")
        elif e.cost_usd is None or not math.isfinite(float(e.cost_usd)):
            skip("no cost")
        else:
            prop = getattr(e, "propensity", None)
            if prop is None and assume_deterministic:
                prop = 1.0
            if prop is None:
                skip("no propensity")
                continue
            for m in cands:
                arms.setdefault(m, len(arms))
            rows.append((e.prompt or "", str(e.model), float(prop), float(e.score), float(e.cost_usd), cands))
    K, n = len(arms), len(rows)
    available, predicted = np.zeros((n, K), dtype=bool), np.full((n, K), np.nan)
    for i, (*_, cands) in enumerate(rows):
        for m, (ok, c) in cands.items():
            available[i, arms[m]], predicted[i, arms[m]] = ok and math.isfinite(c), c
    return LoggedDecisions(
        path=str(p),
        arms=list(arms),
        prompts=[r[0] for r in rows],
        actions=np.array([arms[r[1]] for r in rows], dtype=np.int64),
        propensity=np.array([r[2] for r in rows]),
        score=np.array([r[3] for r in rows]),
        cost=np.array([r[4] for r in rows]),
        available=available,
        predicted_cost=predicted,
        skipped=skipped,
        total=total,
    )


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class _AnyEnv(dict[str, str]):
    """An environment in which every variable is set: evaluation builds no backend, so API keys are never read."""

    def __contains__(self, key: object) -> bool:
        return True


@dataclass
class Target:
    """The policy being evaluated: a router, the map from its model names to fleet models, λ, its embedder."""

    label: str
    router: Any
    candidates: dict[str, str] | None
    lam: float
    embedder: str | None


def load_target(spec: str, config: str | None, lam: float | None, embedder: str | None) -> Target:
    """The router artifact at ``spec``, or the route ``spec`` of ``config`` as the gateway would build it."""
    from turnout.routing.artifact import load_router
    from turnout.routing.registry import create_router

    if config is None:
        if not spec.endswith(".npz") and not Path(spec).is_file():
            raise DataError(
                f"--router {spec!r} is not a router artifact",
                file=spec,
                fix="pass a .npz from 'turnout train', or a route name with --config turnout.yaml",
            )
        router, art = load_router(spec)
        return Target(
            Path(spec).stem,
            router,
            None,
            lam if lam is not None else float(art.get("lambda") or 0.0),
            embedder or art.get("embedder"),
        )
    from turnout.config import load_config

    cfg = load_config(config, env=_AnyEnv())
    if spec not in cfg.routes:
        raise ConfigError(
            f"no route named {spec!r}", file=config, key="routes", fix=f"choose one of: {', '.join(cfg.routes) or '(none)'}"
        )
    r = cfg.routes[spec]
    meta: dict[str, Any] = {}
    if r.router.artifact is not None:
        router, meta = load_router(r.router.artifact)
    else:
        router = create_router(r.router.type, **r.router.params)
    cmap = r.candidate_map
    if lam is None:
        lam = (
            r.lam
            if r.lam is not None
            else (_budget_lambda(cfg, spec, meta) if r.budget is not None else float(meta.get("lambda") or 0.0))
        )
    return Target(f"route {spec}", router, cmap, float(lam), embedder or r.embedder or meta.get("embedder"))


def _budget_lambda(cfg: Any, route: str, meta: dict[str, Any]) -> float:
    """A budget route's start-up λ, calibrated as the gateway calibrates it (gateway/budget.py)."""
    from turnout.gateway.budget import RouteBudget
    from turnout.routing.calibration import CalibrationSample
    from turnout.types import Price

    r = cfg.routes[route]
    sample = CalibrationSample.from_meta(meta)
    if sample is None:
        raise ConfigError(
            "a budget route needs its artifact's calibration sample",
            file=cfg.source,
            key=f"routes.{route}.budget",
            fix="give --lambda, or train the artifact with 'turnout train'",
        )
    prices = {m: Price(cfg.models[m].price.input_per_mtok, cfg.models[m].price.output_per_mtok) for m in r.candidate_map.values()}
    windows = {m: cfg.models[m].context_window for m in r.candidate_map.values()}
    budget = RouteBudget.calibrate(
        sample.priced(r.candidate_map, prices, windows),
        target_cost=r.budget.target_cost_per_request,
        target_share=r.budget.target_share,
    )
    return float(budget.base_lambda)


def target_probabilities(target: Target, logged: LoggedDecisions, X: np.ndarray) -> np.ndarray:
    """The target's probability of each fleet model per logged request (n × K); rows it cannot decide are all 0.

    Deterministic routers give one-hot rows (the policy's choice); a router
    with a ``probabilities`` method (the bandit) gives its own distribution.
    """
    from turnout.routing import Prediction, choose

    router = target.router
    scored = list(getattr(router, "models", []) or [])
    cmap = target.candidates if target.candidates is not None else {m: m for m in scored}
    col = {fleet: j for j, fleet in enumerate(logged.arms)}
    n, K = len(logged), len(logged.arms)
    pred = router.predict(X)
    index = {m: i for i, m in enumerate(pred.models)}
    quality = np.full((n, K), np.nan)
    for router_model, fleet in cmap.items():
        if fleet in col and router_model in index:
            quality[:, col[fleet]] = pred.quality[:, index[router_model]]
    avail = logged.available & ~np.isnan(quality)
    probs = np.zeros((n, K))
    ok = avail.any(axis=1)
    if not ok.any():
        return probs
    if hasattr(router, "probabilities"):
        # the router's own arms, priced as the logged decisions priced their fleet models
        arms = [m for m in pred.models]
        costs = np.full((n, len(arms)), np.nan)
        amask = np.zeros((n, len(arms)), dtype=bool)
        for a, m in enumerate(arms):
            fleet = cmap.get(m)
            if fleet in col:
                costs[:, a], amask[:, a] = logged.predicted_cost[:, col[fleet]], avail[:, col[fleet]]
        rows = np.flatnonzero(amask.any(axis=1))
        p = router.probabilities(X[rows], np.nan_to_num(costs[rows], nan=0.0), target.lam, amask[rows])
        for a, m in enumerate(arms):
            fleet = cmap.get(m)
            if fleet in col:
                probs[rows, col[fleet]] += p[:, a]
        return probs
    rows = np.flatnonzero(ok)
    idx = choose(Prediction(list(logged.arms), quality[rows], logged.predicted_cost[rows], available=avail[rows]), target.lam)
    probs[rows, idx] = 1.0
    return probs


def _embed(target: Target, prompts: list[str]) -> np.ndarray:
    if target.embedder is None:  # a router that reads no embedding (prior, baselines): one column per prompt
        return np.zeros((len(prompts), 1), dtype=np.float32)
    from turnout.embed import create_embedder

    return np.asarray(create_embedder(target.embedder, threads=os.cpu_count() or 1).embed(prompts))


def evaluate(logged: LoggedDecisions, target: Target, *, seed: int = 0) -> dict[str, Any]:
    """Every estimate of the target's quality and cost on ``logged``, as the JSON document of the command."""
    from turnout.evaluation.offpolicy import estimate, logged_value

    if not len(logged):
        raise DataError(
            "no logged request can be evaluated: "
            + (", ".join(f"{v} {k}" for k, v in logged.skipped.items()) or "the log is empty"),
            file=logged.path,
            fix="collect feedback (POST /v1/feedback) on routed requests; for logs without propensities "
            "add --assume-deterministic",
        )
    X = _embed(target, logged.prompts)
    probs = target_probabilities(target, logged, X)
    keep = probs.sum(axis=1) > 0
    skipped = dict(logged.skipped)
    if (~keep).any():
        skipped["the target has no candidate it scores"] = int((~keep).sum())
    if not keep.any():
        raise DataError(
            "the target scores none of the logged candidates",
            file=logged.path,
            fix="map the artifact's models to fleet models with --config (the route's candidates)",
        )
    a, p, pi, Xk = logged.actions[keep], logged.propensity[keep], probs[keep], X[keep]
    est = {
        what: estimate(a, p, r[keep], pi, contexts=Xk, seed=seed)
        for what, r in (("quality", logged.score), ("cost", logged.cost))
    }
    agree = float((pi[np.arange(len(a)), a] > 0).mean())
    notes = []
    if np.all(p >= 1.0 - 1e-12) and agree < 1.0:
        notes.append(
            f"every logged decision was deterministic (propensity 1): the target would have chosen another model "
            f"on {1 - agree:.0%} of the requests, whose outcome the log cannot show. IPS counts them as 0, "
            "SNIPS leaves them out, DR fills them in with its direct model: all three are then biased. Log "
            "from a randomised router (the bandit) for unbiased estimates"
        )
    return {
        "log": logged.path,
        "router": target.label,
        "lambda": target.lam,
        "arms": logged.arms,
        "requests": logged.total,
        "evaluated": int(keep.sum()),
        "skipped": skipped,
        "agreement": agree,
        "logged": {"quality": logged_value(logged.score[keep]).to_dict(), "cost": logged_value(logged.cost[keep]).to_dict()},
        "target_share": {m: float(pi[:, j].mean()) for j, m in enumerate(logged.arms)},
        "estimates": {what: {k: v.to_dict() for k, v in e.items()} for what, e in est.items()},
        "notes": notes,
    }


def run(args: Any) -> int:
    from rich.table import Table

    from turnout.cli._ui import console, print_table

    target = load_target(args.router, args.config, args.lam, args.embedder)
    logged = logged_decisions(args.log, route=args.route, assume_deterministic=args.assume_deterministic)
    doc = evaluate(logged, target, seed=args.seed)
    con = console()
    t = Table(title=f"{doc['router']} (λ = {doc['lambda']:.6g}) on {doc['evaluated']} of {doc['requests']} logged requests")
    for c in ("estimator", "quality", "95% interval", "cost (USD/request)", "95% interval", "ESS"):
        t.add_column(c)

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    rows = [("logged router (on-policy)", doc["logged"]["quality"], doc["logged"]["cost"])]
    rows += [
        (k.upper() if k != "snips" else "SNIPS", doc["estimates"]["quality"][k], doc["estimates"]["cost"][k])
        for k in ("ips", "snips", "dr")
    ]
    for name, q, c in rows:
        t.add_row(
            name,
            fmt(q["value"]),
            f"{fmt(q['ci'][0])} – {fmt(q['ci'][1])}",
            fmt(c["value"]),
            f"{fmt(c['ci'][0])} – {fmt(c['ci'][1])}",
            fmt(q["ess"]),
        )
    print_table(con, t)
    if doc["skipped"]:
        con.print("skipped: " + ", ".join(f"{v} {k}" for k, v in doc["skipped"].items()), markup=False)
    con.print(f"the target would have chosen the logged model on {doc['agreement']:.0%} of the requests", markup=False)
    for note in doc["notes"]:
        con.print(f"note: {note}", style="yellow", markup=False)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2))
        con.print(f"wrote {out}", markup=False)
    return 0


__all__ = ["LoggedDecisions", "Target", "evaluate", "load_target", "logged_decisions", "register", "run", "target_probabilities"]
