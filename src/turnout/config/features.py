"""Reference checks of the config's newer sections: signals and decision rules, and routes' plans.

Called by :func:`turnout.config.loader.resolve` (phase 2); like it, they raise only ConfigError naming the
file, the key and the fix, and make relative paths absolute (relative to the config file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from turnout._suggest import fix_for as _fix_for
from turnout.config._refs import existing_file
from turnout.config._refs import model_ref as _model_ref
from turnout.config.schema import RouteSettings, TurnoutConfig
from turnout.errors import ConfigError


def resolve_signals(cfg: TurnoutConfig, routes: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Check ``signals:`` (known types, files that exist, made absolute) and the decision rules (their shape and
    every signal, route and model they name); the rules' types and conflicts are checked when the gateway is
    built, against the signals' outputs (turnout.signals.decisions)."""
    if not (cfg.signals or cfg.decisions or cfg.decisions_file):
        return {}
    from turnout.signals.decisions import check_references, parse_decisions, read_decisions_file
    from turnout.signals.registry import check_signal_name, signal_class

    src = cfg.source
    signals = {}
    for name, sig in cfg.signals.items():
        where = f"signals.{name}"
        check_signal_name(name, source=src, where=where)
        cls = signal_class(sig.type, source=src, where=where)
        params = dict(sig.params)
        for p in cls.path_params:
            value = params.get(p)
            if isinstance(value, str):
                params[p] = str(existing_file(value, base, file=src, key=f"{where}.params.{p}"))
        signals[name] = sig.model_copy(update={"params": params})
    update: dict[str, Any] = {"signals": signals}
    if cfg.decisions and cfg.decisions_file:
        raise ConfigError(
            "decisions are given both inline and in decisions_file",
            file=src,
            key="decisions_file",
            fix="keep one: the file (hot-reloaded) or the inline list",
        )
    if cfg.decisions_file:
        path = existing_file(cfg.decisions_file, base, file=src, key="decisions_file", what="decisions file")
        update["decisions_file"] = str(path)
        specs, where = read_decisions_file(path), str(path)
    else:
        specs, where = parse_decisions(list(cfg.decisions), source=src), src
    check_references(specs, signals=signals, routes=routes, models=cfg.models, source=where)
    return update


def resolve_plan(cfg: TurnoutConfig, name: str, r: RouteSettings, base: Path) -> RouteSettings:
    """Check a route's ``plan`` (cascade, fan-out, rounds): its models, signals and files; paths made absolute.

    Every model a plan calls is a candidate of its route, so the policy's exclusions (a guard's restriction,
    a context window) apply to it as to any choice; fallbacks are any fleet models.
    """
    from turnout.routing.acceptance import signal_names

    plan = r.plan
    assert plan is not None
    where = f"routes.{name}.plan"
    cands = list(r.candidate_map.values())

    def candidate(model: str, key: str) -> None:
        _model_ref(cfg, model, key)
        if model not in cands:
            raise ConfigError(
                f"'{model}' is not a candidate of route '{name}'",
                file=cfg.source,
                key=key,
                fix=f"add '{model}' to routes.{name}.candidates (a plan calls only the route's candidates)",
            )

    def path(value: str, key: str, what: str, fix: str) -> str:
        return str(existing_file(value, base, file=cfg.source, key=key, what=what, fix=fix))

    steps = []
    for i, st in enumerate(plan.steps):
        at = f"{where}.steps[{i}]"
        last = i == len(plan.steps) - 1
        if st.model is not None:
            candidate(st.model, f"{at}.model")
        for j, m in enumerate(st.router_pick or []):
            candidate(m, f"{at}.router_pick[{j}]")
        for j, m in enumerate(st.probe):
            candidate(m, f"{at}.probe[{j}]")
        for j, m in enumerate(st.fallbacks):
            _model_ref(cfg, m, f"{at}.fallbacks[{j}]")
        if st.accept is not None and st.accept not in signal_names():
            raise ConfigError(
                f"unknown acceptance signal '{st.accept}'",
                file=cfg.source,
                key=f"{at}.accept",
                fix=_fix_for(st.accept, signal_names(), "signals"),
            )
        if last and st.threshold is not None:
            raise ConfigError(
                "the last step's answer is always kept; a threshold there means nothing",
                file=cfg.source,
                key=f"{at}.threshold",
                fix="remove it (or add a step after this one)",
            )
        if not last and st.accept is None:
            raise ConfigError(
                "every step but the last needs an acceptance signal",
                file=cfg.source,
                key=f"{at}.accept",
                fix=f"add accept: one of {', '.join(signal_names())}",
            )
        if not last and st.threshold is None and plan.calibrate is None:
            raise ConfigError(
                "this step has no threshold and the plan is not calibrated",
                file=cfg.source,
                key=f"{at}.threshold",
                fix=f"give threshold: 0..1, or {where}.calibrate",
            )
        if not last and st.threshold is not None and plan.calibrate is not None:
            raise ConfigError(
                "a threshold given by hand and a calibrated one: which should win?",
                file=cfg.source,
                key=f"{at}.threshold",
                fix=f"remove the threshold, or {where}.calibrate",
            )
        if plan.calibrate is not None and st.router_pick is not None:
            raise ConfigError(
                "a calibrated cascade needs fixed models (its sample holds one model's confidences per step)",
                file=cfg.source,
                key=f"{at}.router_pick",
                fix="give this step a model, or thresholds by hand instead of calibrate",
            )
        art = st.params.get("artifact")
        if isinstance(art, str):
            st = st.model_copy(
                update={
                    "params": {
                        **st.params,
                        "artifact": path(
                            art,
                            f"{at}.params.artifact",
                            "verifier artifact",
                            "write one with 'turnout eval TABLE --save-verifier V.npz' (relative to the config file)",
                        ),
                    }
                }
            )
        steps.append(st)
    calibrate = plan.calibrate
    if calibrate is not None:
        calibrate = calibrate.model_copy(
            update={
                "sample": path(
                    calibrate.sample,
                    f"{where}.calibrate.sample",
                    "calibration sample",
                    "write one with 'bench/cascade_calibrate.py --sample OUT.jsonl' (relative to the config file)",
                )
            }
        )
    for j, m in enumerate(plan.models):
        candidate(m, f"{where}.models[{j}]")
    if plan.aggregator is not None and plan.aggregator != "vote":
        if plan.aggregator not in cfg.models:
            raise ConfigError(
                f"unknown aggregator '{plan.aggregator}'",
                file=cfg.source,
                key=f"{where}.aggregator",
                fix="'vote', or " + _fix_for(plan.aggregator, cfg.models, "models"),
            )
        candidate(plan.aggregator, f"{where}.aggregator")
    if plan.router_model is not None:
        candidate(plan.router_model, f"{where}.router_model")
    new_plan = plan.model_copy(update={"steps": steps, "calibrate": calibrate})
    return r.model_copy(update={"plan": new_plan})


__all__ = ["resolve_plan", "resolve_signals"]
