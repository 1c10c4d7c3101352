"""Route planners: a route's decision turned into a cascade, fan-out or multi-round :class:`~turnout.types.Plan`.

A route's router scores its candidates and its policy chooses one (:class:`~turnout.gateway.routes.RouteRuntime`);
a route with a ``plan:`` in its config then hands that :class:`~turnout.types.Decision` to its planner
(``RouteRuntime.plan``), which returns what the gateway will execute. Planners are synchronous and free of
I/O (they run with the router, off the event loop); the executors that make the calls live in
:mod:`turnout.gateway.cascade` and :mod:`turnout.gateway.fanout`.

* :class:`CascadePlanner`: the configured steps, cheap first. A step's model is fixed, or the route's
  router picks it per request among a list (``router_pick``: the best utility among them). A step whose
  model the policy excluded for this request (a guard's restriction, a context window) is left out.
* :class:`FanoutPlanner`: the members answer in parallel; with a ``switch``, the plan fans out only when its
  predicted utility beats the single model's (JiSi's routing–aggregation switch, see :func:`vote_quality`).
* :class:`RoundsPlanner`: a router model that may consult other models before answering (Router-R1).

Every planner writes a ``plan`` reason into the decision (``/v1/route`` shows it before any call) and sets
``decision.model`` to the first model its plan calls. Thresholds calibrated at start-up
(:func:`calibrate_thresholds`) come from a sample of *training* confidences, like λ from a budget.

Example::

    planner = CascadePlanner("cascade", [StepSpec(model="small", accept="logprob_mean", threshold=0.6),
                                         StepSpec(model="big")])
    runtime = RouteRuntime(..., plan=planner)      # decisions of the route now carry cascade plans
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import ConfigError, TurnoutError
from turnout.routing.acceptance import AcceptanceSignal, create_signal
from turnout.routing.thresholds import escalates, threshold_for_cost, threshold_for_share
from turnout.types import PLAN_CASCADE, PLAN_FANOUT, Candidate, Decision, Plan, PlanStep

#: the plan kind of :class:`RoundsPlanner` (Router-R1's think → route → read loop)
PLAN_ROUNDS = "rounds"
#: a threshold no confidence in [0, 1] reaches: the step always escalates
ALWAYS = math.nextafter(1.0, 2.0)


@dataclass(frozen=True)
class StepSpec:
    """One configured cascade step (see ``CascadeStepSettings`` in ``turnout.config.schema``)."""

    model: str | None = None
    router_pick: tuple[str, ...] | None = None
    fallbacks: tuple[str, ...] = ()
    accept: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    samples: int = 0
    sample_temperature: float = 0.8
    probe: tuple[str, ...] = ()


def signal_key(name: str, params: Mapping[str, Any]) -> str:
    """The key a planner keeps a built signal under: its name and parameters."""
    return name + json.dumps(dict(params), sort_keys=True, default=str)


def _candidates(decision: Decision) -> dict[str, Candidate]:
    return {c.model: c for c in decision.candidates}


def _usable(model: str, cands: Mapping[str, Candidate]) -> bool:
    """Whether the policy left ``model`` usable for this request (a router without a prediction for it is fine:
    a fixed step does not need one)."""
    c = cands.get(model)
    return c is None or c.excluded is None or c.excluded == "no prediction"


def _best_of(models: Sequence[str], cands: Mapping[str, Candidate]) -> str | None:
    """The usable model of ``models`` with the best utility (the cheaper on a tie), as the policy ranks them."""
    live = [cands[m] for m in models if m in cands and cands[m].excluded is None]
    if not live:
        return None
    live.sort(key=lambda c: (-round(c.utility, 12), c.cost))
    return live[0].model


def _single(decision: Decision, why: str) -> Plan:
    decision.reason("plan", f"{why}; single model {decision.model}", plan="single", model=decision.model)
    return Plan.single(decision.model, decision.fallbacks)


class CascadePlanner:
    """Decision → cascade plan (see the module docstring). ``signals`` are built once, at start-up.

    ``calibration`` describes how the thresholds were set (kept in every plan's reason).
    """

    def __init__(
        self,
        route: str,
        steps: Sequence[StepSpec],
        *,
        max_calls: int | None = None,
        stream: str = "live_last",
        calibration: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        self.route = route
        self.steps = list(steps)
        self.max_calls = max_calls
        self.stream = stream
        self.calibration = dict(calibration or {})
        self.signals: dict[str, AcceptanceSignal] = {}
        for i, st in enumerate(self.steps):
            if st.accept is not None:
                key = signal_key(st.accept, st.params)
                if key not in self.signals:
                    try:
                        self.signals[key] = create_signal(st.accept, **dict(st.params))
                    except TurnoutError as exc:
                        raise ConfigError(
                            str(exc),
                            file=source,
                            key=f"routes.{route}.plan.steps[{i}]",
                            fix="see docs/config.md for the acceptance signals and their params",
                        ) from exc

    def signal_for(self, name: str, params: Mapping[str, Any]) -> AcceptanceSignal | None:
        """The signal built at start-up for ``name`` with ``params`` (None: not one of this planner's)."""
        return self.signals.get(signal_key(name, params))

    def __call__(self, decision: Decision) -> Plan:
        cands = _candidates(decision)
        steps: list[PlanStep] = []
        options: list[dict[str, Any]] = []
        dropped: list[str] = []
        for st in self.steps:
            if st.router_pick is not None:
                model = _best_of(st.router_pick, cands)
                if model is None:
                    dropped.append(f"router_pick {'/'.join(st.router_pick)} (every one excluded)")
                    continue
            else:
                assert st.model is not None
                model = st.model
                if not _usable(model, cands):
                    dropped.append(f"{model} ({cands[model].excluded})")
                    continue
            steps.append(PlanStep(model, [m for m in st.fallbacks if m != model], st.accept, st.threshold))
            options.append(
                {
                    "samples": st.samples,
                    "sample_temperature": st.sample_temperature,
                    "probe": [m for m in st.probe if _usable(m, cands) and m != model],
                    "signal_params": dict(st.params),
                    "router_pick": list(st.router_pick or []),
                }
            )
        if dropped:
            decision.reason("plan", f"cascade steps left out for this request: {', '.join(dropped)}", dropped=dropped)
        if not steps:
            return _single(decision, "no cascade step is usable for this request")
        if len(steps) == 1:  # one step left: its answer is always kept, so it is a plain call
            decision.model, decision.fallbacks = steps[0].model, list(steps[0].fallbacks)
            return _single(decision, "one cascade step left")
        steps[-1].threshold = None  # the last answer is always kept (its signal, if any, is still logged)
        decision.model, decision.fallbacks = steps[0].model, list(steps[0].fallbacks)
        path = " → ".join(
            s.model
            + (f" ({s.accept} ≥ {s.threshold:.4g})" if s.threshold is not None else f" ({s.accept} judged)" if s.accept else "")
            for s in steps
        )
        decision.reason(
            "plan",
            f"cascade: {path}",
            plan=PLAN_CASCADE,
            steps=[
                {"model": s.model, "accept": s.accept, "threshold": s.threshold, "picked_by_router": bool(o["router_pick"])}
                for s, o in zip(steps, options)
            ],
            max_calls=self.max_calls,
            stream=self.stream,
            calibration=self.calibration or None,
        )
        # probes and extra samples are calls too: the budget hold at admission counts them
        extra = [m for s, o in zip(steps, options) for m in [s.model] * o["samples"] + o["probe"]]
        return Plan(
            PLAN_CASCADE,
            steps,
            params={"max_calls": self.max_calls, "stream": self.stream, "options": options, "extra_calls": extra},
        )


def vote_quality(p: Sequence[float]) -> float:
    """The predicted quality of a plurality vote of members right with probabilities ``p`` (in order).

    Assumes the members err independently and that wrong answers differ from each other (they scatter):
    the vote is right when two or more members are, or when exactly one is and it is the first member (every
    answer then has one vote; the first member wins the tie). An upper estimate when cheap models fail
    together, as they do on hard items (BENCHMARKS.md, cascades offline).

    >>> round(vote_quality([0.6, 0.6, 0.6]), 3)
    0.744
    """
    q = [min(max(float(x), 0.0), 1.0) for x in p]
    total = 0.0
    for right in itertools.product((0, 1), repeat=len(q)):
        prob = math.prod(qi if r else 1.0 - qi for qi, r in zip(q, right))
        if sum(right) >= 2 or (sum(right) == 1 and right[0] == 1):
            total += prob
    return total


class FanoutPlanner:
    """Decision → fan-out plan, or the single model when the switch predicts no gain (module docstring)."""

    def __init__(
        self, route: str, models: Sequence[str], aggregator: str, *, min_answers: int | None = None, min_gain: float | None = None
    ) -> None:
        self.route = route
        self.models = list(models)
        self.aggregator = aggregator
        self.min_answers = min_answers
        #: None: always fan out; a number: fan out only when the predicted utility gain reaches it
        self.min_gain = min_gain

    def __call__(self, decision: Decision) -> Plan:
        cands = _candidates(decision)
        members = [m for m in self.models if _usable(m, cands)]
        agg = None if self.aggregator == "vote" else self.aggregator
        if len(members) < 2:
            return _single(decision, f"fan-out needs two usable members, {len(members)} left")
        if agg is not None and not _usable(agg, cands):
            return _single(decision, f"the aggregator {agg} is excluded for this request")
        if self.min_gain is not None:
            gain = self._gain(decision, members, agg, cands)
            if gain is None or gain < self.min_gain:
                shown = "unknown (the router does not score every member)" if gain is None else f"{gain:.4g}"
                decision.reason(
                    "plan",
                    f"switch: predicted utility gain of fanning out {shown} < {self.min_gain:g}",
                    plan="single",
                    gain=gain,
                    min_gain=self.min_gain,
                )
                return Plan.single(decision.model, decision.fallbacks)
            decision.reason(
                "plan",
                f"switch: predicted utility gain of fanning out {gain:.4g} ≥ {self.min_gain:g}",
                plan=PLAN_FANOUT,
                gain=gain,
                min_gain=self.min_gain,
            )
        need = min(self.min_answers or max(1, math.ceil(len(members) / 2)), len(members))
        decision.model, decision.fallbacks = members[0], []
        decision.reason(
            "plan",
            f"fan-out: {', '.join(members)} in parallel, "
            + (f"aggregated by {agg}" if agg else "plurality vote")
            + f"; {need} answer(s) needed",
            plan=PLAN_FANOUT,
            models=members,
            aggregator=self.aggregator,
            min_answers=need,
        )
        return Plan(
            PLAN_FANOUT, [PlanStep(m) for m in members], aggregator=agg, params={"vote": agg is None, "min_answers": need}
        )

    def _gain(self, decision: Decision, members: list[str], agg: str | None, cands: Mapping[str, Candidate]) -> float | None:
        """Predicted utility of the fan-out minus that of the policy's single choice (None: not predictable)."""
        chosen = cands.get(decision.model)
        if chosen is None or any(m not in cands or math.isnan(cands[m].quality) for m in members):
            return None
        cost = sum(cands[m].cost for m in members) + (cands[agg].cost if agg is not None and agg in cands else 0.0)
        quality = vote_quality([cands[m].quality for m in members])
        return (quality - decision.lam * cost) - chosen.utility


class RoundsPlanner:
    """Decision → a multi-round plan: ``router_model`` may consult ``models`` up to ``max_rounds`` times.

    The plan's steps spell out its dearest path (router, consulted model, router, ..., router), so the
    budget hold at admission covers every call it may make.
    """

    def __init__(
        self, route: str, router_model: str, models: Sequence[str], *, max_rounds: int = 2, max_cost_usd: float | None = None
    ) -> None:
        self.route = route
        self.router_model = router_model
        self.models = list(models)
        self.max_rounds = max_rounds
        self.max_cost_usd = max_cost_usd

    def __call__(self, decision: Decision) -> Plan:
        cands = _candidates(decision)
        if not _usable(self.router_model, cands):
            return _single(decision, f"the router model {self.router_model} is excluded for this request")
        models = [m for m in self.models if _usable(m, cands)]
        steps = [PlanStep(self.router_model)]
        if models:
            for _ in range(self.max_rounds):
                steps += [PlanStep(models[0], models[1:]), PlanStep(self.router_model)]
        decision.model, decision.fallbacks = self.router_model, []
        decision.reason(
            "plan",
            f"rounds: {self.router_model} may ask {', '.join(models) or 'no model'} up to "
            f"{self.max_rounds} time(s)" + (f" within {self.max_cost_usd:g} USD" if self.max_cost_usd else ""),
            plan=PLAN_ROUNDS,
            router_model=self.router_model,
            models=models,
            max_rounds=self.max_rounds,
            max_cost_usd=self.max_cost_usd,
        )
        return Plan(
            PLAN_ROUNDS,
            steps,
            params={
                "router_model": self.router_model,
                "models": models,
                "max_rounds": self.max_rounds,
                "max_cost_usd": self.max_cost_usd,
            },
        )


# ------------------------------------------------------------------------------------------ calibration
@dataclass(frozen=True)
class CalibrationSample:
    """Training confidences and costs: ``conf[(model, signal)]`` and ``cost[model]``, aligned on ``prompts``."""

    prompts: tuple[str, ...]
    conf: dict[tuple[str, str], np.ndarray]
    cost: dict[str, np.ndarray]

    @classmethod
    def read(cls, path: str | Path, *, key: str = "calibrate.sample") -> CalibrationSample:
        """Read a JSONL sample; rows of ``split: test`` are skipped (thresholds are set on training data only).

        One row per (prompt, model, signal): ``{"prompt_id", "model", "signal", "confidence", "cost_usd"}``,
        ``confidence`` null where the signal could not judge (it escalates). ``bench/cascade_calibrate.py``
        writes it from real answers.
        """
        rows: list[dict[str, Any]] = []
        try:
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(
                            f"line {n} is not JSON ({exc.msg})", file=str(path), key=key, fix="one JSON object per line"
                        ) from None
                    missing = [k for k in ("prompt_id", "model", "signal", "cost_usd") if k not in row]
                    if missing:
                        raise ConfigError(
                            f"line {n} lacks {', '.join(missing)}",
                            file=str(path),
                            key=key,
                            fix="each row needs prompt_id, model, signal, confidence, cost_usd",
                        )
                    if row.get("split", "train") != "test":
                        rows.append(row)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the calibration sample: {exc}",
                file=str(path),
                key=key,
                fix="check the path (relative to the config file)",
            ) from None
        prompts = tuple(dict.fromkeys(str(r["prompt_id"]) for r in rows))
        index = {p: i for i, p in enumerate(prompts)}
        conf: dict[tuple[str, str], np.ndarray] = {}
        cost: dict[str, np.ndarray] = {}
        for r in rows:
            i, model = index[str(r["prompt_id"])], str(r["model"])
            c = conf.setdefault((model, str(r["signal"])), np.full(len(prompts), np.nan))
            value = r.get("confidence")
            c[i] = np.nan if value is None else float(value)
            cost.setdefault(model, np.full(len(prompts), np.nan))[i] = float(r["cost_usd"])
        return cls(prompts, conf, cost)


def calibrate_thresholds(
    steps: Sequence[StepSpec],
    sample: CalibrationSample,
    *,
    target_escalation: float | None,
    target_cost: float | None,
    key: str = "calibrate",
) -> tuple[list[float], dict[str, Any]]:
    """Thresholds for every step but the last, set on ``sample`` (training prompts), and what they give there.

    ``target_escalation``: each step escalates that share of the training prompts it is asked about (for two
    steps exactly the share of requests that reach the second). ``target_cost``: for two steps the most
    escalation whose mean training cost stays under the target (:func:`threshold_for_cost`); for more, the
    largest per-step share (in steps of 1%) that stays under it. Raises ConfigError when the sample lacks a
    step's model or signal.
    """
    judged = steps[:-1]
    conf: list[np.ndarray] = []
    for st in judged:
        pair = (st.model or "", st.accept or "")
        if pair not in sample.conf:
            have = ", ".join(f"{m}/{s}" for m, s in sorted(sample.conf)) or "nothing"
            raise ConfigError(
                f"the calibration sample has no confidences of {pair[0]} by {pair[1]} (it has: {have})",
                key=key,
                fix="write the sample with the cascade's models and signals",
            )
        conf.append(sample.conf[pair])
    costs = []
    for st in steps:
        c = sample.cost.get(st.model or "")
        if c is None:
            raise ConfigError(f"the calibration sample has no cost of {st.model}", key=key, fix="include every step's model")
        costs.append(np.nan_to_num(c, nan=float(np.nanmean(c)) if np.isfinite(c).any() else 0.0))
    if target_escalation is not None:
        ths = [threshold_for_share(c, target_escalation) for c in conf]
    elif len(steps) == 2:
        assert target_cost is not None
        ths = [threshold_for_cost(conf[0], costs[0], costs[1], target_cost)]
    else:
        assert target_cost is not None
        ths = [float("-inf")] * len(judged)
        for share in np.linspace(0.0, 1.0, 101):
            trial = [threshold_for_share(c, float(share)) for c in conf]
            if _simulate(conf, costs, trial)[0] <= target_cost + 1e-15:
                ths = trial
            else:
                break
    mean_cost, reached = _simulate(conf, costs, ths)
    clipped = [ALWAYS if t > 1.0 else max(0.0, t) for t in ths]
    report = {
        "target_escalation": target_escalation,
        "target_cost": target_cost,
        "train_prompts": len(sample.prompts),
        "train_mean_cost": mean_cost,
        "train_share_reaching": reached,
    }
    return clipped, report


def _simulate(conf: list[np.ndarray], costs: list[np.ndarray], ths: list[float]) -> tuple[float, list[float]]:
    """Mean cost of the cascade on the sample, and the share of prompts that reach each step after the first."""
    n = len(costs[0])
    live = np.ones(n, dtype=bool)
    total = np.zeros(n)
    reached: list[float] = []
    for i, c in enumerate(costs):
        total += np.where(live, c, 0.0)
        if i < len(conf):
            live = live & escalates(conf[i], ths[i])
            reached.append(float(live.mean()) if n else 0.0)
    return (float(total.mean()) if n else 0.0), reached


def build_planner(route: str, settings: Any, *, source: str | None = None) -> CascadePlanner | FanoutPlanner | RoundsPlanner:
    """The planner of a route's ``plan:`` settings (``PlanSettings``, already resolved by the config loader).

    A calibrated cascade reads its sample and sets its thresholds here, at start-up. Raises ConfigError
    naming ``routes.<route>.plan``.
    """
    where = f"routes.{route}.plan"
    if settings.kind == PLAN_FANOUT:
        return FanoutPlanner(
            route,
            settings.models,
            settings.aggregator,
            min_answers=settings.min_answers,
            min_gain=settings.switch.min_gain if settings.switch is not None else None,
        )
    if settings.kind == PLAN_ROUNDS:
        return RoundsPlanner(
            route, settings.router_model, settings.models, max_rounds=settings.max_rounds, max_cost_usd=settings.max_cost_usd
        )
    steps = [
        StepSpec(
            model=s.model,
            router_pick=tuple(s.router_pick) if s.router_pick is not None else None,
            fallbacks=tuple(s.fallbacks),
            accept=s.accept,
            params=dict(s.params),
            threshold=s.threshold,
            samples=s.samples,
            sample_temperature=s.sample_temperature,
            probe=tuple(s.probe),
        )
        for s in settings.steps
    ]
    calibration: dict[str, Any] = {}
    cal = settings.calibrate
    if cal is not None:
        sample = CalibrationSample.read(cal.sample, key=f"{where}.calibrate.sample")
        ths, calibration = calibrate_thresholds(
            steps, sample, target_escalation=cal.target_escalation, target_cost=cal.target_cost, key=f"{where}.calibrate"
        )
        steps = [StepSpec(**{**st.__dict__, "threshold": th}) for st, th in zip(steps, ths)] + steps[len(ths) :]
        calibration["sample"] = cal.sample
    return CascadePlanner(
        route, steps, max_calls=settings.max_calls, stream=settings.stream, calibration=calibration, source=source
    )


__all__ = [
    "ALWAYS",
    "PLAN_ROUNDS",
    "CalibrationSample",
    "CascadePlanner",
    "FanoutPlanner",
    "RoundsPlanner",
    "StepSpec",
    "build_planner",
    "calibrate_thresholds",
    "signal_key",
    "vote_quality",
]
