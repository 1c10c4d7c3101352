"""The rule language: Boolean conditions on signal outputs, type-checked at start-up, explained per request.

A rule is a *leaf* comparing one signal output to a value, or ``all`` / ``any`` / ``not`` of rules::

    {signal: lang, in: [fr, de]}                 # a label among these
    {signal: tokens, gt: 2000}                   # numbers: eq ne gt gte lt lte in not_in
    {signal: tokens, gte: 100, lt: 2000}         # several tests in one leaf: all must hold
    {signal: kw.code, is: true}                  # booleans: is (or eq / ne)
    {signal: domain, eq: math}                   # labels: eq ne in not_in matches (a regular expression)
    {signal: kw, contains: code}                 # label sets: contains, in (any of), not_in (none of), all_of
    {signal: jb.score, gte: 0.5}
    all: [rule, ...]     any: [rule, ...]     not: rule     not: [rule, ...]  (none of them)

A leaf on a *missing* value (a language not recognised, an absent header) is false, whatever its test;
``not`` of it is true. Parsing (:func:`parse_rule`) checks the shape, the operators and that every regular
expression compiles, and names the key of any mistake (``decisions[2].when.all[1].gte``); binding
(:func:`bind`) checks each leaf against the signal outputs the gateway defines (an unknown output, an
operator its type does not have, a value of the wrong type are errors with a did-you-mean).
Evaluation (:func:`evaluate`) returns whether a rule matched *and why*: every leaf with the value it saw.

Example::

    rule = bind(parse_rule({"all": [{"signal": "lang", "in": ["fr"]}, {"signal": "tokens", "lt": 500}]},
                           where="when"), outputs)
    matched, trace = evaluate(rule, {"lang": "fr", "tokens": 42})
    matched, explain_text(trace)     # True, 'lang in [fr] (lang = fr): yes; tokens < 500 (tokens = 42): yes'
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from turnout.errors import ConfigError
from turnout.signals.base import Output, Value

#: which tests each value type has
OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "bool": ("is", "eq", "ne"),
    "number": ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"),
    "label": ("eq", "ne", "in", "not_in", "matches"),
    "labels": ("contains", "in", "not_in", "all_of"),
}
ALL_OPS = tuple(dict.fromkeys(op for ops in OPS_BY_TYPE.values() for op in ops))
#: how each operator reads in an explanation
SYMBOLS = {
    "eq": "=",
    "ne": "!=",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "is": "is",
    "in": "in",
    "not_in": "not in",
    "matches": "matches",
    "contains": "contains",
    "all_of": "contains all of",
}
_LIST_OPS = frozenset({"in", "not_in", "all_of"})


@dataclass(frozen=True)
class Leaf:
    """One test of one signal output. ``value`` is as written until :func:`bind` normalises it for ``vtype``."""

    signal: str
    op: str
    value: Any
    where: str
    vtype: str | None = None

    def test(self, v: Value) -> bool:
        """Whether the test holds for ``v`` (False for a missing value, or one of another type)."""
        if v is None:
            return False
        op, x = self.op, self.value
        t = self.vtype
        if t == "labels":
            if not isinstance(v, frozenset):
                return False
            if op == "contains":
                return x in v
            if op == "in":
                return not v.isdisjoint(x)
            if op == "not_in":
                return v.isdisjoint(x)
            return bool(x <= v)  # all_of
        if t == "number":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return False
            if op == "eq":
                return bool(v == x)
            if op == "ne":
                return bool(v != x)
            if op == "gt":
                return bool(v > x)
            if op == "gte":
                return bool(v >= x)
            if op == "lt":
                return bool(v < x)
            if op == "lte":
                return bool(v <= x)
            return (v in x) if op == "in" else (v not in x)
        if t == "bool":
            if not isinstance(v, bool):
                return False
            return bool(v != x) if op == "ne" else bool(v == x)
        if not isinstance(v, str):  # label
            return False
        if op == "eq":
            return bool(v == x)
        if op == "ne":
            return bool(v != x)
        if op == "in":
            return v in x
        if op == "not_in":
            return v not in x
        return x.search(v) is not None  # matches

    def text(self) -> str:
        """The test in words: ``lang in [de, fr]``."""
        return f"{self.signal} {SYMBOLS[self.op]} {_show(self.value)}"


@dataclass(frozen=True)
class All:
    """Every rule holds (an empty ``all`` is refused at parse time)."""

    items: tuple[Rule, ...]
    where: str


@dataclass(frozen=True)
class AnyOf:
    """At least one rule holds."""

    items: tuple[Rule, ...]
    where: str


@dataclass(frozen=True)
class Not:
    """The rule does not hold."""

    item: Rule
    where: str


Rule = Leaf | All | AnyOf | Not


# ---------------------------------------------------------------------------------------------------- parsing
def parse_rule(raw: Any, *, where: str, source: str = "<memory>") -> Rule:
    """A rule from its YAML form; a :class:`ConfigError` naming the key of the first mistake."""

    def err(message: str, key: str, fix: str) -> ConfigError:
        return ConfigError(message, file=source, key=key, fix=fix)

    if not isinstance(raw, Mapping) or not raw:
        raise err(
            f"a rule must be a mapping, got {_kind(raw)}",
            where,
            "write {signal: NAME, OP: VALUE} or {all: [...]}, {any: [...]}, {not: ...}",
        )
    composite = [k for k in ("all", "any", "not") if k in raw]
    if composite:
        if len(raw) != 1:
            extra = sorted(str(k) for k in raw if k != composite[0])
            raise err(
                f"{composite[0]!r} cannot be combined with {', '.join(map(repr, extra))} in one mapping",
                where,
                "nest them: {all: [{any: [...]}, {signal: ...}]}",
            )
        k = composite[0]
        body = raw[k]
        here = f"{where}.{k}"
        if k == "not":
            if isinstance(body, list):
                return (
                    Not(AnyOf(_parse_list(body, here, source), here), where)
                    if len(body) != 1
                    else Not(parse_rule(body[0], where=f"{here}[0]", source=source), where)
                )
            return Not(parse_rule(body, where=here, source=source), where)
        if not isinstance(body, list):
            raise err(f"{k!r} takes a list of rules, got {_kind(body)}", here, f"write {k}: [rule, rule, ...]")
        items = _parse_list(body, here, source)
        return (All if k == "all" else AnyOf)(items, where) if len(items) > 1 else items[0]
    if "signal" not in raw:
        unknown = sorted(str(k) for k in raw)
        guess = difflib.get_close_matches(unknown[0], ["signal", "all", "any", "not"], n=1)
        raise err(
            f"a rule needs 'signal' (or all / any / not); found {', '.join(map(repr, unknown))}",
            where,
            f"did you mean {guess[0]!r}?" if guess else "write {signal: NAME, OP: VALUE}",
        )
    name = raw["signal"]
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*", name):
        raise err(
            f"{name!r} is not a signal output name",
            f"{where}.signal",
            "write a signal's name, or name.output (lower case, e.g. kw.code)",
        )
    ops = [k for k in raw if k != "signal"]
    if not ops:
        raise err(f"the rule on {name!r} has no test", where, f"add one of: {', '.join(ALL_OPS)}")
    leaves: list[Rule] = []
    for op in ops:
        if op not in ALL_OPS:
            guess = difflib.get_close_matches(str(op), ALL_OPS, n=1)
            raise err(
                f"unknown test {op!r}",
                f"{where}.{op}",
                f"did you mean {guess[0]!r}?" if guess else f"use one of: {', '.join(ALL_OPS)}",
            )
        value = raw[op]
        if op in _LIST_OPS and not (isinstance(value, list) and value):
            raise err(f"{op!r} takes a non-empty list, got {_kind(value)}", f"{where}.{op}", f"write {op}: [a, b]")
        if op == "matches":
            if not isinstance(value, str) or not value:
                raise err("'matches' takes a regular expression (a string)", f"{where}.{op}", "write matches: '^fr'")
            try:
                value = re.compile(value)
            except re.error as exc:
                raise err(
                    f"the regular expression {raw[op]!r} does not compile: {exc.msg}"
                    + (f" at position {exc.pos}" if exc.pos is not None else ""),
                    f"{where}.{op}",
                    "fix the pattern (Python 're' syntax); quote it with single quotes in YAML",
                ) from exc
        leaves.append(Leaf(name, str(op), value, f"{where}.{op}" if len(ops) > 1 else where))
    return All(tuple(leaves), where) if len(leaves) > 1 else leaves[0]


def _parse_list(body: list[Any], where: str, source: str) -> tuple[Rule, ...]:
    if not body:
        raise ConfigError("an empty list of rules", file=source, key=where, fix="give at least one rule, or remove it")
    return tuple(parse_rule(r, where=f"{where}[{i}]", source=source) for i, r in enumerate(body))


def leaves(rule: Rule) -> Iterable[Leaf]:
    """Every leaf of ``rule``, in order."""
    if isinstance(rule, Leaf):
        yield rule
    elif isinstance(rule, Not):
        yield from leaves(rule.item)
    else:
        for r in rule.items:
            yield from leaves(r)


def referenced(rule: Rule | None) -> set[str]:
    """The signal outputs ``rule`` reads."""
    return set() if rule is None else {leaf.signal for leaf in leaves(rule)}


# ---------------------------------------------------------------------------------------------------- binding
def bind(rule: Rule, outputs: Mapping[str, Output], *, source: str = "<memory>") -> Rule:
    """``rule`` checked against the defined signal outputs, its values normalised for their types."""
    if isinstance(rule, Leaf):
        return _bind_leaf(rule, outputs, source)
    if isinstance(rule, Not):
        return Not(bind(rule.item, outputs, source=source), rule.where)
    items = tuple(bind(r, outputs, source=source) for r in rule.items)
    return All(items, rule.where) if isinstance(rule, All) else AnyOf(items, rule.where)


def _bind_leaf(leaf: Leaf, outputs: Mapping[str, Output], source: str) -> Leaf:
    def err(message: str, fix: str, key: str | None = None) -> ConfigError:
        return ConfigError(message, file=source, key=key or leaf.where, fix=fix)

    spec = outputs.get(leaf.signal)
    if spec is None:
        base = leaf.signal.split(".")[0]
        siblings = sorted(o for o in outputs if o == base or o.startswith(base + "."))
        guess = difflib.get_close_matches(leaf.signal, list(outputs), n=1, cutoff=0.6)
        if siblings:
            fix = (f"did you mean {guess[0]!r}? " if guess else "") + f"signal {base!r} has: {', '.join(siblings)}"
        else:
            fix = (
                f"did you mean {guess[0]!r}? " if guess else ""
            ) + f"define it under 'signals:' (defined: {', '.join(sorted(outputs)) or 'none'})"
        raise err(f"signal {leaf.signal!r} is not defined", fix, key=signal_key(leaf.where))
    t = spec.type
    if leaf.op not in OPS_BY_TYPE[t]:
        raise err(
            f"{leaf.signal!r} is a {t}, which has no test {leaf.op!r}", f"a {t} is tested with: {', '.join(OPS_BY_TYPE[t])}"
        )
    v = leaf.value
    if t == "bool":
        if not isinstance(v, bool):
            raise err(f"{leaf.signal!r} is a bool; {leaf.op} needs true or false, got {v!r}", f"write {leaf.op}: true")
        return replace(leaf, vtype=t)
    if t == "number":
        if leaf.op in _LIST_OPS:
            if not all(_is_number(x) for x in v):
                raise err(f"{leaf.op} on the number {leaf.signal!r} needs a list of numbers, got {v!r}", "write e.g. in: [1, 2]")
            return replace(leaf, value=frozenset(float(x) for x in v), vtype=t)
        if not _is_number(v):
            raise err(f"{leaf.signal!r} is a number; {leaf.op} needs a number, got {v!r}", f"write {leaf.op}: 100")
        return replace(leaf, value=float(v), vtype=t)
    if leaf.op == "matches":
        return replace(leaf, vtype=t)
    if leaf.op in _LIST_OPS:
        return replace(leaf, value=frozenset(_label(x, leaf, source) for x in v), vtype=t)
    return replace(leaf, value=_label(v, leaf, source), vtype=t)


def _label(x: Any, leaf: Leaf, source: str) -> str:
    if isinstance(x, bool) or x is None or isinstance(x, (list, dict)):
        raise ConfigError(
            f"{leaf.signal!r} holds labels; {x!r} is not one",
            file=source,
            key=leaf.where,
            fix="write labels as strings (quote yes/no/on/off/null in YAML: 'no')",
        )
    return str(x)


def signal_key(where: str) -> str:
    """The key of a leaf's ``signal`` entry, from the leaf's key (a multi-test leaf's ends with its test)."""
    head, _, tail = where.rpartition(".")
    return f"{head}.signal" if tail in ALL_OPS and head else f"{where}.signal"


# ------------------------------------------------------------------------------------------------- evaluation
def evaluate(rule: Rule | None, values: Mapping[str, Value]) -> tuple[bool, dict[str, Any]]:
    """Whether ``rule`` holds for these signal values, and the trace of why (every leaf, its value, its result).

    Every leaf is evaluated (no short-circuit), so the explanation shows all of them; a missing rule (a
    decision without ``when``) always holds.
    """
    if rule is None:
        return True, {"always": True, "matched": True}
    if isinstance(rule, Leaf):
        v = values.get(rule.signal)
        ok = rule.test(v)
        return ok, {"test": rule.text(), "value": _show_value(v), "matched": ok}
    if isinstance(rule, Not):
        ok, sub = evaluate(rule.item, values)
        return not ok, {"not": sub, "matched": not ok}
    subs = [evaluate(r, values) for r in rule.items]
    ok = all(s[0] for s in subs) if isinstance(rule, All) else any(s[0] for s in subs)
    return ok, {"all" if isinstance(rule, All) else "any": [s[1] for s in subs], "matched": ok}


def explain_text(trace: Mapping[str, Any], *, negated: bool = False) -> str:
    """A trace in one line of words: ``lang in [fr] (lang = fr): yes; tokens > 2000 (tokens = 15): no``."""
    if "always" in trace:
        return "no condition (always matches)"
    if "test" in trace:
        name = str(trace["test"]).split(" ", 1)[0]
        return f"{trace['test']} ({name} = {_fmt(trace['value'])}): {'yes' if trace['matched'] else 'no'}"
    if "not" in trace:
        return f"not ({explain_text(trace['not'])}): {'yes' if trace['matched'] else 'no'}"
    key = "all" if "all" in trace else "any"
    inner = "; ".join(explain_text(t) for t in trace[key])
    return inner if key == "all" and not negated else f"{key} of ({inner}): {'yes' if trace['matched'] else 'no'}"


def describe(rule: Rule | None) -> str:
    """A rule in words: ``lang in [de, fr] and (tokens > 2000 or kw.code is true)``."""
    if rule is None:
        return "always"
    if isinstance(rule, Leaf):
        return rule.text()
    if isinstance(rule, Not):
        return f"not ({describe(rule.item)})"
    joiner = " and " if isinstance(rule, All) else " or "
    return joiner.join(describe(r) if isinstance(r, (Leaf, Not)) else f"({describe(r)})" for r in rule.items)


# ----------------------------------------------------------------------------------------------------- helpers
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _kind(v: Any) -> str:
    return "nothing" if v is None else type(v).__name__


def _show(value: Any) -> str:
    if isinstance(value, re.Pattern):
        return repr(value.pattern)
    if isinstance(value, frozenset):
        return "[" + ", ".join(_fmt(x) for x in sorted(value, key=str)) + "]"
    return _fmt(value)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(x) for x in value) + "]"
    if value is None:
        return "missing"
    return str(value)


def _show_value(v: Value) -> Any:
    """A value as JSON: a set of labels as a sorted list."""
    return sorted(v) if isinstance(v, frozenset) else v


__all__ = [
    "ALL_OPS",
    "OPS_BY_TYPE",
    "All",
    "AnyOf",
    "Leaf",
    "Not",
    "Rule",
    "bind",
    "describe",
    "evaluate",
    "explain_text",
    "leaves",
    "parse_rule",
    "referenced",
    "signal_key",
]
