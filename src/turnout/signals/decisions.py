"""Decisions: named rules over request signals that choose how a request is served, and the file they live in.

A decision (YAML, under ``decisions:`` in ``turnout.yaml`` or in a separate ``decisions_file:``)::

    - name: french-to-mistral
      priority: 20                     # higher is tried first; equal priorities that can both match are a conflict
      applies_to: [auto]               # the routes (or models) asked for that it applies to; default: every route
      when: {all: [{signal: lang, in: [fr]}, {not: {signal: kw.code, is: true}}]}   # absent: always
      use:
        route: mistral-route           # serve by another route or model (like a guard's redirect)
        candidates: [mistral-small, mistral-large]   # only these models
        router: {type: prior, params: {quality: {mistral-small: 0.6, mistral-large: 0.8}}}  # score with this
        lambda: 50.0                   # the cost weight for this request
        budget: {max_cost_per_request: 0.002}        # candidates predicted to cost more are excluded
        params: {max_tokens: 512, reasoning_effort: low}   # set on the request (the client's are replaced)
      plugins:                         # stages added to this request only, run in their phase
        - {type: system_prompt, params: {text: "Réponds en français.", mode: add}}
        - {type: add_headers, params: {headers: {x-team-route: fr}}}

Decisions are tried by priority (then file order); the first that matches wins and the rest are not
evaluated; when none matches, the route decides as configured. Every decision tried is explained: the
test of each leaf with the value it saw.

This module parses decisions (:func:`parse_decisions`, :func:`read_decisions_file`: every mistake a
:class:`ConfigError` naming the file, the key and the fix), checks their references
(:func:`check_references`), and compiles them against the gateway's signals into a :class:`DecisionSet`
(rules bound and type-checked, the signals to compute planned, conflicts analysed: refused as errors, or
logged as warnings, by ``decision_conflicts``). The gateway's decision stage evaluates the set per request
and hot-swaps a new one when the file changes and compiles.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout._suggest import did_you_mean, fix_for
from turnout._yamlio import read_yaml
from turnout.errors import ConfigError
from turnout.signals.base import Output, Value
from turnout.signals.conflicts import TARGET, Conflict, DecisionRule, analyse
from turnout.signals.registry import ExtractionPlan, SignalSet
from turnout.signals.rules import Rule, bind, evaluate, explain_text, leaves, parse_rule, referenced, signal_key

log = logging.getLogger(__name__)

DECISION_KEYS = ("name", "priority", "description", "applies_to", "when", "use", "plugins")
USE_KEYS = ("route", "candidates", "router", "lambda", "budget", "params")
#: request fields a decision may not set through ``params`` (the route, the conversation and the framing)
FIXED_PARAMS = frozenset({"model", "messages", "stream", "n"})
CONFLICT_MODES = ("error", "warn")


@dataclass(frozen=True)
class RouterChoice:
    """A router a decision scores its request with instead of the route's (``type``, ``artifact``, ``params``)."""

    type: str
    artifact: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Use:
    """What a matched decision changes (each None or empty: unchanged)."""

    route: str | None = None
    candidates: tuple[str, ...] | None = None
    router: RouterChoice | None = None
    lam: float | None = None
    max_cost: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The changes as JSON (the explanation's ``use``)."""
        out: dict[str, Any] = {}
        if self.route is not None:
            out["route"] = self.route
        if self.candidates is not None:
            out["candidates"] = list(self.candidates)
        if self.router is not None:
            out["router"] = self.router.type
        if self.lam is not None:
            out["lambda"] = self.lam
        if self.max_cost is not None:
            out["max_cost_per_request"] = self.max_cost
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True)
class PluginSpec:
    """A stage a matched decision adds to its request: ``type`` and ``params`` as under ``stages:``."""

    type: str
    name: str | None
    params: Mapping[str, Any]
    where: str


@dataclass(frozen=True)
class DecisionSpec:
    """One parsed decision; ``where`` is its key (``decisions[2]``), ``index`` its place in the file."""

    name: str
    priority: int
    when: Rule | None
    use: Use
    plugins: tuple[PluginSpec, ...]
    applies_to: tuple[str, ...] | None
    description: str
    where: str
    index: int


# ---------------------------------------------------------------------------------------------------- parsing
def parse_decisions(raw: Any, *, source: str = "<memory>", key: str = "decisions") -> list[DecisionSpec]:
    """Decisions from their YAML form (a list); a :class:`ConfigError` naming the key of the first mistake."""
    if not isinstance(raw, list):
        raise ConfigError(
            f"decisions must be a list, got {type(raw).__name__}",
            file=source,
            key=key,
            fix="write decisions: [{name: ..., when: ..., use: ...}, ...]",
        )
    out: list[DecisionSpec] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(raw):
        d = _parse_one(item, f"{key}[{i}]", i, source)
        if d.name in seen:
            raise ConfigError(
                f"decision name {d.name!r} is used twice (first at {seen[d.name]})",
                file=source,
                key=f"{d.where}.name",
                fix="give every decision a unique name: it labels headers and logs",
            )
        seen[d.name] = d.where
        out.append(d)
    return out


def _parse_one(item: Any, where: str, index: int, source: str) -> DecisionSpec:
    def err(message: str, key: str, fix: str) -> ConfigError:
        return ConfigError(message, file=source, key=key, fix=fix)

    if not isinstance(item, Mapping):
        raise err(
            f"a decision must be a mapping, got {type(item).__name__}",
            where,
            "write {name: ..., priority: ..., when: ..., use: ...}",
        )
    for k in item:
        if k not in DECISION_KEYS:
            guess = did_you_mean(str(k), DECISION_KEYS)
            raise err(
                f"unknown key {k!r}",
                f"{where}.{k}",
                f"did you mean {guess!r}?" if guess else f"a decision has: {', '.join(DECISION_KEYS)}",
            )
    name = item.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\r\n,"):
        raise err(
            "a decision needs a name (a non-empty string without commas or line breaks)",
            f"{where}.name",
            "add name: my-rule (it is sent in the x-turnout-rule header)",
        )
    priority = item.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise err(f"priority must be an integer, got {priority!r}", f"{where}.priority", "write e.g. priority: 10")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise err("description must be a string", f"{where}.description", "write a sentence, or remove it")
    applies_to = item.get("applies_to")
    if applies_to is not None:
        if isinstance(applies_to, str):
            applies_to = [applies_to]
        if not isinstance(applies_to, list) or not applies_to or not all(isinstance(a, str) for a in applies_to):
            raise err(
                "applies_to must be a non-empty list of route or model names",
                f"{where}.applies_to",
                "write e.g. applies_to: [auto]",
            )
    when = parse_rule(item["when"], where=f"{where}.when", source=source) if "when" in item else None
    use = _parse_use(item.get("use", {}), f"{where}.use", source)
    plugins = _parse_plugins(item.get("plugins", []), f"{where}.plugins", source)
    if use == Use() and not plugins:
        raise err(
            f"decision {name!r} changes nothing (no use and no plugins)",
            where,
            f"add use: {{route: ...}} (or one of {', '.join(USE_KEYS)}) or plugins: [...]",
        )
    return DecisionSpec(
        name.strip(), priority, when, use, plugins, tuple(applies_to) if applies_to else None, description, where, index
    )


def _parse_use(raw: Any, where: str, source: str) -> Use:
    def err(message: str, key: str, fix: str) -> ConfigError:
        return ConfigError(message, file=source, key=key, fix=fix)

    if not isinstance(raw, Mapping):
        raise err(f"use must be a mapping, got {type(raw).__name__}", where, f"use has: {', '.join(USE_KEYS)}")
    for k in raw:
        if k not in USE_KEYS:
            guess = did_you_mean(str(k), [*USE_KEYS, "lam"])
            fix = (
                "write lambda:"
                if guess == "lam"
                else f"did you mean {guess!r}?"
                if guess
                else f"use has: {', '.join(USE_KEYS)} (stages such as a system prompt go under plugins:)"
            )
            raise err(f"unknown key {k!r}", f"{where}.{k}", fix)
    route = raw.get("route")
    if route is not None and (not isinstance(route, str) or not route):
        raise err("route must be a route or model name", f"{where}.route", "write route: my-route")
    cands = raw.get("candidates")
    if cands is not None and (not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands)):
        raise err("candidates must be a non-empty list of model names", f"{where}.candidates", "write candidates: [a, b]")
    lam = raw.get("lambda")
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0 or not math.isfinite(lam)):
        raise err(f"lambda must be a number >= 0, got {lam!r}", f"{where}.lambda", "write e.g. lambda: 100")
    max_cost = None
    budget = raw.get("budget")
    if budget is not None:
        if not isinstance(budget, Mapping) or set(budget) != {"max_cost_per_request"}:
            raise err(
                "budget takes max_cost_per_request (USD)",
                f"{where}.budget",
                "write budget: {max_cost_per_request: 0.002} (route budgets are set on the route)",
            )
        max_cost = budget["max_cost_per_request"]
        if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not max_cost > 0:
            raise err(
                f"max_cost_per_request must be a number > 0, got {max_cost!r}",
                f"{where}.budget.max_cost_per_request",
                "write e.g. 0.002",
            )
    params = raw.get("params", {})
    if not isinstance(params, Mapping):
        raise err("params must be a mapping of request fields", f"{where}.params", "write params: {max_tokens: 512}")
    fixed = sorted(FIXED_PARAMS & set(params))
    if fixed:
        raise err(
            f"a decision cannot set {fixed[0]!r}",
            f"{where}.params.{fixed[0]}",
            "send the request elsewhere with use.route; messages change through plugins (system_prompt)",
        )
    router = raw.get("router")
    choice = None
    if router is not None:
        if (
            not isinstance(router, Mapping)
            or not isinstance(router.get("type"), str)
            or set(router) - {"type", "artifact", "params"}
        ):
            raise err(
                "router takes type (and artifact, params), as a route's router does",
                f"{where}.router",
                "write router: {type: prior, params: {quality: {...}}}",
            )
        if not isinstance(router.get("params", {}), Mapping):
            raise err("router params must be a mapping", f"{where}.router.params", "write params: {k: 20}")
        artifact = router.get("artifact")
        if artifact is not None and not isinstance(artifact, str):
            raise err("router artifact must be a path", f"{where}.router.artifact", "write artifact: router.npz")
        choice = RouterChoice(router["type"], artifact, dict(router.get("params", {})))
    return Use(
        route,
        tuple(cands) if cands else None,
        choice,
        None if lam is None else float(lam),
        None if max_cost is None else float(max_cost),
        dict(params),
    )


def _parse_plugins(raw: Any, where: str, source: str) -> tuple[PluginSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(
            f"plugins must be a list, got {type(raw).__name__}",
            file=source,
            key=where,
            fix="write plugins: [{type: system_prompt, params: {text: ...}}]",
        )
    out = []
    for i, p in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(p, Mapping) or not isinstance(p.get("type"), str) or not p["type"].strip():
            raise ConfigError(
                "a plugin needs a type",
                file=source,
                key=f"{here}.type",
                fix="name a stage type (system_prompt, set_params, add_headers, a guard...)",
            )
        extra = sorted(set(p) - {"type", "name", "params"})
        if extra:
            raise ConfigError(
                f"unknown key {extra[0]!r}",
                file=source,
                key=f"{here}.{extra[0]}",
                fix="a plugin has type, name and params (its settings go under params:)",
            )
        params = p.get("params", {})
        if not isinstance(params, Mapping):
            raise ConfigError(
                "plugin params must be a mapping", file=source, key=f"{here}.params", fix="write params: {text: ...}"
            )
        name = p.get("name")
        out.append(PluginSpec(p["type"], name if isinstance(name, str) else None, dict(params), here))
    return tuple(out)


def read_decisions_file(path: str | Path) -> list[DecisionSpec]:
    """Parse a decisions file: a YAML list of decisions, or a mapping with a ``decisions:`` list."""
    source = str(Path(path))
    data = read_yaml(
        path, fix="fix the YAML syntax (the previous rules stay in force until it parses)", what="the decisions file"
    )
    if isinstance(data, Mapping):
        if set(data) != {"decisions"}:
            raise ConfigError(
                "a decisions file holds a list of decisions, or a mapping with only 'decisions:'",
                file=source,
                key=next(iter(k for k in data if k != "decisions"), None),
                fix="move signals and other settings to turnout.yaml",
            )
        return parse_decisions(data["decisions"], source=source, key="decisions")
    if data is None:
        return []
    return parse_decisions(data, source=source, key="decisions" if isinstance(data, list) else "")


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """What tells a changed file: its modification time (ns) and size; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def check_references(
    specs: Sequence[DecisionSpec], *, signals: Collection[str], routes: Collection[str], models: Collection[str], source: str
) -> None:
    """Every signal, route and model a decision names exists (a ConfigError with a did-you-mean otherwise)."""
    from turnout.routing.registry import router_names

    def err(message: str, key: str, word: str, choices: Collection[str], what: str) -> ConfigError:
        return ConfigError(message, file=source, key=key, fix=fix_for(word, choices, what))

    targets = [*routes, *models]
    for d in specs:
        if d.when is not None:
            for leaf in leaves(d.when):
                base = leaf.signal.split(".")[0]
                if base not in signals:
                    raise err(
                        f"signal {base!r} is not defined",
                        signal_key(leaf.where),
                        base,
                        signals,
                        "signals defined under 'signals:'",
                    )
        u = d.use
        if u.route is not None and u.route not in targets:
            raise err(
                f"{u.route!r} is neither a route nor a model", f"{d.where}.use.route", u.route, targets, "routes and models"
            )
        for i, c in enumerate(u.candidates or ()):
            if c not in models:
                raise err(f"unknown model {c!r}", f"{d.where}.use.candidates[{i}]", c, models, "models")
        for i, a in enumerate(d.applies_to or ()):
            if a not in targets:
                raise err(f"{a!r} is neither a route nor a model", f"{d.where}.applies_to[{i}]", a, targets, "routes and models")
        if u.router is not None and u.router.type not in router_names():
            raise err(
                f"unknown router type {u.router.type!r}",
                f"{d.where}.use.router.type",
                u.router.type,
                router_names(),
                "router types",
            )


# ---------------------------------------------------------------------------------------------------- compiled
@dataclass
class Evaluation:
    """One request's outcome: the decision that matched (None: none did) and the trace of every one tried."""

    matched: DecisionSpec | None
    trace: list[dict[str, Any]]
    elapsed_ms: float = 0.0

    def summary(self) -> str:
        """One line for the explanation."""
        tried = sum(1 for t in self.trace if t.get("evaluated", True))
        if self.matched is None:
            return f"no decision rule matched ({tried} evaluated): the route decides as configured"
        m = next(t for t in self.trace if t["decision"] == self.matched.name)
        return f"decision rule {self.matched.name!r} matched (priority {self.matched.priority}): {m['why']}"


class DecisionSet:
    """Decisions compiled against the gateway's signals: bound rules, the signals to compute, the conflicts.

    Building one raises :class:`ConfigError` on any mistake, and on conflicts when ``conflicts="error"``;
    with ``"warn"`` they are logged and kept in :attr:`conflicts`. Immutable once built: a reload builds a
    new one and swaps it in whole.
    """

    def __init__(
        self,
        specs: Sequence[DecisionSpec],
        signals: SignalSet,
        *,
        routes: Collection[str],
        models: Collection[str],
        conflicts: str = "error",
        source: str = "<memory>",
    ) -> None:
        if conflicts not in CONFLICT_MODES:
            raise ConfigError(
                f"decision_conflicts is {conflicts!r}", file=source, key="decision_conflicts", fix="write error or warn"
            )
        check_references(specs, signals=signals.signals, routes=routes, models=models, source=source)
        self.source = source
        self.routes = frozenset(routes)
        self.decisions: list[DecisionSpec] = sorted(specs, key=lambda d: (-d.priority, d.index))
        self._rules: dict[str, Rule | None] = {
            d.name: None if d.when is None else bind(d.when, signals.outputs, source=source) for d in self.decisions
        }
        needed: set[str] = set()
        for r in self._rules.values():
            needed |= referenced(r)
        #: the signal outputs some rule reads
        self.needed = frozenset(needed)
        self.plan: ExtractionPlan = signals.plan(sorted(needed))
        outputs: dict[str, Output] = {**signals.outputs, TARGET: Output("label", choices=frozenset([*routes, *models]))}
        self.conflicts: list[Conflict] = analyse(
            [DecisionRule(d.name, d.priority, self._rules[d.name], self._scope(d), d.where) for d in self.decisions], outputs
        )
        certain = [c for c in self.conflicts if c.certain]
        if conflicts == "error" and certain:
            listing = " | ".join(f"{c.where}: {c.message}" for c in certain)
            raise ConfigError(
                f"{len(certain)} conflict(s) among the decision rules: {listing}",
                file=source,
                key=certain[0].where,
                fix="fix the rules as each message says, or set "
                "decision_conflicts: warn to start with them (they are then logged)",
            )
        for c in self.conflicts:
            log.warning("%s: %s: %s", source, c.where, c.message)

    def _scope(self, d: DecisionSpec) -> frozenset[str] | None:
        return frozenset(d.applies_to) if d.applies_to is not None else self.routes

    def applies(self, d: DecisionSpec, target: str) -> bool:
        """Whether ``d`` applies to a request for ``target`` (default scope: every route)."""
        return target in d.applies_to if d.applies_to is not None else target in self.routes

    def evaluate(self, values: Mapping[str, Value], target: str) -> Evaluation:
        """Try the decisions in order on one request's signal values; the first that matches wins."""
        trace: list[dict[str, Any]] = []
        matched: DecisionSpec | None = None
        for d in self.decisions:
            entry: dict[str, Any] = {"decision": d.name, "priority": d.priority}
            if matched is not None:
                entry.update(evaluated=False, matched=False, why=f"not evaluated: {matched.name!r} matched first")
            elif not self.applies(d, target):
                scope = ", ".join(d.applies_to) if d.applies_to is not None else "every route"
                entry.update(matched=False, why=f"applies to {scope}, not to {target!r}")
            else:
                ok, tree = evaluate(self._rules[d.name], values)
                entry.update(matched=ok, why=explain_text(tree), rule=tree)
                if ok:
                    matched = d
                    entry["use"] = d.use.describe()
                    if d.plugins:
                        entry["plugins"] = [p.name or p.type for p in d.plugins]
            trace.append(entry)
        return Evaluation(matched, trace)

    def describe(self) -> list[dict[str, Any]]:
        """The decisions in evaluation order, as JSON."""
        from turnout.signals.rules import describe

        return [
            {
                "name": d.name,
                "priority": d.priority,
                "when": describe(self._rules[d.name]),
                "applies_to": list(d.applies_to) if d.applies_to else None,
                "use": d.use.describe(),
                "plugins": [p.type for p in d.plugins],
            }
            for d in self.decisions
        ]


__all__ = [
    "CONFLICT_MODES",
    "DECISION_KEYS",
    "USE_KEYS",
    "DecisionSet",
    "DecisionSpec",
    "Evaluation",
    "PluginSpec",
    "RouterChoice",
    "Use",
    "check_references",
    "file_stamp",
    "parse_decisions",
    "read_decisions_file",
]
