"""Start-up analysis of decision rules: which can never match, which overlap, which are shadowed.

Each rule is put in disjunctive normal form over *atoms* (one test on one signal output, possibly negated),
and a conjunction is checked exactly for the forms the rule language has: for a number, a union of
intervals (within the output's known range); for a bool, the values left; for a label, the finite set it
may still take (its ``choices`` when known) minus the ones excluded; for a set of labels, the labels it must
hold, must not hold, and the groups it must meet. A bool output that stands for a label (``kw.code`` is
``"code" in kw``) is rewritten to that label test first, so the two are one fact. A test on a missing value
is false and its negation true: an output that can be missing (:attr:`Output.optional`) satisfies a
conjunction of negated tests by being missing.

What it cannot decide it says so: two regular expressions on one label (``matches``) "may overlap" — a
warning, never an error. Signals are treated as independent of each other (a language and a keyword set
can take any combination), which is what makes overlap checks exact for the leaves above; two outputs of
one signal that depend on each other (``tokens`` and ``tokens.last``) may be reported as overlapping when
they cannot be.

Checks (:func:`analyse`), in the order decisions are tried (priority, highest first; then file order):

* **never** — a decision whose rule (within its ``applies_to`` scope) no request can satisfy;
* **overlap** — two decisions of equal priority that some request satisfies both (file order would decide
  silently); with an example of such a request;
* **shadowed** — a decision every request of which is taken first by higher ones (names them).

Example::

    found = analyse([DecisionRule("a", 10, rule_a, None, "decisions[0]"), ...], outputs)
    [c.message for c in found if c.certain]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnout.signals.base import Output
from turnout.signals.rules import SYMBOLS, All, Leaf, Not, Rule

#: the pseudo-output a decision's ``applies_to`` scope tests (the route or model the request asked for)
TARGET = "$target"
#: the most conjunctions a check may expand to before it gives up (and says so)
MAX_TERMS = 4096

SAT, UNSAT, MAYBE = "sat", "unsat", "maybe"


@dataclass(frozen=True)
class Atom:
    """One test on one output; ``or_missing``: it also holds when the value is missing (a negated leaf)."""

    output: str
    op: str
    value: Any
    or_missing: bool = False


@dataclass(frozen=True)
class DecisionRule:
    """What the analysis needs of one decision: its bound rule and its scope (None: every request)."""

    name: str
    priority: int
    rule: Rule | None
    scope: frozenset[str] | None
    where: str


@dataclass(frozen=True)
class Conflict:
    """One finding. ``certain`` False: the analysis could not decide (always a warning)."""

    kind: str
    decisions: tuple[str, ...]
    message: str
    where: str
    certain: bool = True


class TooComplex(Exception):
    """A check expanded past :data:`MAX_TERMS` conjunctions."""


# ------------------------------------------------------------------------------------------- normal forms
_Node = tuple[str, list[Any]] | Atom  # ("and" | "or", children) or an atom

_FLIP = {
    "eq": "ne",
    "ne": "eq",
    "gt": "lte",
    "gte": "lt",
    "lt": "gte",
    "lte": "gt",
    "in": "not_in",
    "not_in": "in",
    "matches": "not_matches",
    "contains": "not_contains",
}


def _canon(leaf: Leaf, outputs: Mapping[str, Output], negate: bool) -> _Node:
    """``leaf`` (negated when ``negate``) as atoms, with a member-of bool rewritten to its label test."""
    spec = outputs[leaf.signal]
    op, value, name = leaf.op, leaf.value, leaf.signal
    if spec.type == "bool":
        truth = bool(value) if op in ("is", "eq") else not bool(value)
        if negate:
            truth = not truth
        if spec.member_of is not None and spec.member_of[0] in outputs:
            target, label = spec.member_of
            kind = outputs[target].type
            # the bool is computed with the label: missing exactly when it is, so "not (b is x)" holds then too
            if kind == "labels":
                return Atom(target, "contains" if truth else "not_contains", label, or_missing=negate)
            return Atom(target, "eq" if truth else "ne", label, or_missing=negate)
        return Atom(name, "is", truth, or_missing=negate)
    if not negate:
        return Atom(name, op, value)
    if op == "all_of":  # not (holds every label) = misses one of them
        return ("or", [Atom(name, "not_contains", x, or_missing=True) for x in sorted(value)])
    return Atom(name, _FLIP[op], value, or_missing=True)


def _nnf(rule: Rule, outputs: Mapping[str, Output], negate: bool = False) -> _Node:
    if isinstance(rule, Leaf):
        return _canon(rule, outputs, negate)
    if isinstance(rule, Not):
        return _nnf(rule.item, outputs, not negate)
    conj = isinstance(rule, All) != negate  # De Morgan: not(all) = any(not), not(any) = all(not)
    return ("and" if conj else "or", [_nnf(r, outputs, negate) for r in rule.items])


def _dnf(node: _Node, limit: int = MAX_TERMS) -> list[list[Atom]]:
    if isinstance(node, Atom):
        return [[node]]
    kind, children = node
    if kind == "or":
        out: list[list[Atom]] = []
        for c in children:
            out.extend(_dnf(c, limit))
            if len(out) > limit:
                raise TooComplex
        return out
    terms: list[list[Atom]] = [[]]
    for c in children:
        sub = _dnf(c, limit)
        terms = [t + s for t in terms for s in sub]
        if len(terms) > limit:
            raise TooComplex
    return terms


def formula(d: DecisionRule, outputs: Mapping[str, Output], *, negate: bool = False) -> _Node:
    """A decision's rule and scope as one NNF node (negated: the requests it does *not* match)."""
    parts: list[Any] = []
    if d.rule is not None:
        parts.append(_nnf(d.rule, outputs, negate))
    if d.scope is not None:
        parts.append(Atom(TARGET, "not_in" if negate else "in", d.scope))
    if not parts:
        return ("or", []) if negate else ("and", [])  # never / always
    if len(parts) == 1:
        return parts[0]  # type: ignore[no-any-return]
    return ("or" if negate else "and", parts)


# ------------------------------------------------------------------------------------------- conjunctions
@dataclass
class _Check:
    status: str
    witness: dict[str, Any] = field(default_factory=dict)
    why: str = ""


def check_conjunction(atoms: Sequence[Atom], outputs: Mapping[str, Output]) -> _Check:
    """Whether some request satisfies every atom: SAT (with an example), UNSAT (with why) or MAYBE."""
    by_output: dict[str, list[Atom]] = {}
    for a in atoms:
        by_output.setdefault(a.output, []).append(a)
    witness: dict[str, Any] = {}
    maybe = False
    for out, group in by_output.items():
        spec = outputs.get(out) or Output("label")
        if spec.optional and all(a.or_missing for a in group):
            witness[out] = None
            continue
        status, example = _present(spec, group)
        if status == UNSAT:
            return _Check(UNSAT, why=" and ".join(_atom_text(a) for a in group) + " cannot all hold")
        if status == MAYBE:
            maybe = True
        else:
            witness[out] = example
    return _Check(MAYBE if maybe else SAT, witness)


def _present(spec: Output, atoms: list[Atom]) -> tuple[str, Any]:
    if spec.type == "number":
        return _numbers(spec, atoms)
    if spec.type == "bool":
        left = {True, False}
        for a in atoms:
            left &= {a.value}
        return (SAT, min(left)) if left else (UNSAT, None)
    if spec.type == "labels":
        return _label_sets(spec, atoms)
    return _labels(spec, atoms)


_Interval = tuple[float, bool, float, bool]  # lo, lo closed, hi, hi closed


def _numbers(spec: Output, atoms: list[Atom]) -> tuple[str, Any]:
    ivs: list[_Interval] = [(spec.lo, math.isfinite(spec.lo), spec.hi, math.isfinite(spec.hi))]
    for a in atoms:
        x = a.value
        if a.op in ("gt", "gte"):
            ivs = _cut(ivs, (x, a.op == "gte", math.inf, False))
        elif a.op in ("lt", "lte"):
            ivs = _cut(ivs, (-math.inf, False, x, a.op == "lte"))
        elif a.op == "eq":
            ivs = _cut(ivs, (x, True, x, True))
        elif a.op == "in":
            ivs = [p for v in sorted(x) for p in _cut(ivs, (v, True, v, True))]
        else:  # ne, not_in: punch points out
            for v in [x] if a.op == "ne" else sorted(x):
                ivs = [p for iv in ivs for p in _punch(iv, v)]
    ivs = [iv for iv in ivs if _nonempty(iv)]
    return (SAT, _pick(ivs[0])) if ivs else (UNSAT, None)


def _cut(ivs: list[_Interval], other: _Interval) -> list[_Interval]:
    out = []
    for lo, lc, hi, hc in ivs:
        olo, olc, ohi, ohc = other
        nlo, nlc = (lo, lc) if lo > olo else (olo, olc) if olo > lo else (lo, lc and olc)
        nhi, nhc = (hi, hc) if hi < ohi else (ohi, ohc) if ohi < hi else (hi, hc and ohc)
        if _nonempty((nlo, nlc, nhi, nhc)):
            out.append((nlo, nlc, nhi, nhc))
    return out


def _punch(iv: _Interval, v: float) -> list[_Interval]:
    lo, lc, hi, hc = iv
    if v < lo or v > hi or (v == lo and not lc) or (v == hi and not hc):
        return [iv]
    return [p for p in ((lo, lc, v, False), (v, False, hi, hc)) if _nonempty(p)]


def _nonempty(iv: _Interval) -> bool:
    lo, lc, hi, hc = iv
    return lo < hi or (lo == hi and lc and hc and math.isfinite(lo))


def _pick(iv: _Interval) -> float:
    lo, lc, hi, hc = iv
    if lc and math.isfinite(lo):
        return lo
    if hc and math.isfinite(hi):
        return hi
    if math.isfinite(lo) and math.isfinite(hi):
        return (lo + hi) / 2
    if math.isfinite(lo):
        return lo + 1
    return hi - 1 if math.isfinite(hi) else 0.0


def _labels(spec: Output, atoms: list[Atom]) -> tuple[str, Any]:
    allowed: set[str] | None = set(spec.choices) if spec.choices is not None else None
    excluded: set[str] = set()
    pos: list[re.Pattern[str]] = []
    neg: list[re.Pattern[str]] = []
    for a in atoms:
        if a.op == "eq":
            allowed = {a.value} if allowed is None else allowed & {a.value}
        elif a.op == "in":
            allowed = set(a.value) if allowed is None else allowed & set(a.value)
        elif a.op == "ne":
            excluded.add(a.value)
        elif a.op == "not_in":
            excluded |= set(a.value)
        elif a.op == "matches":
            pos.append(a.value)
        else:
            neg.append(a.value)
    if allowed is not None:  # finite: try every candidate, regular expressions included, exactly
        for cand in sorted(allowed - excluded):
            if all(p.search(cand) for p in pos) and not any(n.search(cand) for n in neg):
                return SAT, cand
        return UNSAT, None
    if not pos and not neg:
        return SAT, _fresh(excluded)
    if len(pos) == 1 and not neg and not (pos[0].pattern.startswith("^") and pos[0].pattern.endswith("$")):
        # re.search: a string that matches, with anything appended or prepended, still matches: infinitely many
        return SAT, f"(a text matching {pos[0].pattern!r})"
    return MAYBE, None


def _fresh(excluded: set[str]) -> str:
    i = 0
    while f"other{i or ''}" in excluded:
        i += 1
    return f"other{i or ''}"


def _label_sets(spec: Output, atoms: list[Atom]) -> tuple[str, Any]:
    must: set[str] = set()
    never: set[str] = set()
    groups: list[frozenset[str]] = []
    for a in atoms:
        if a.op == "contains":
            must.add(a.value)
        elif a.op == "all_of":
            must |= set(a.value)
        elif a.op == "not_contains":
            never.add(a.value)
        elif a.op == "not_in":
            never |= set(a.value)
        else:  # in: meets the group
            groups.append(a.value)
    if must & never:
        return UNSAT, None
    universe = spec.choices
    if universe is not None and not must <= universe:
        return UNSAT, None
    example = set(must)
    for g in groups:
        if example & g:
            continue
        options = sorted((g - never) & universe if universe is not None else g - never)
        if not options:
            return UNSAT, None
        example.add(options[0])
    return SAT, sorted(example)


#: the rules' operators, and the negated ones normalising a rule produces
_ATOM_SYMBOLS = {**SYMBOLS, "not_matches": "does not match", "not_contains": "does not contain"}


def _atom_text(a: Atom) -> str:
    sym = _ATOM_SYMBOLS[a.op]
    v = a.value
    shown = (
        v.pattern
        if isinstance(v, re.Pattern)
        else ("[" + ", ".join(sorted(map(_num, v))) + "]" if isinstance(v, frozenset) else _num(v))
    )
    name = "the route asked for" if a.output == TARGET else a.output
    return f"{name} {sym} {shown}" + (" (or missing)" if a.or_missing else "")


def _num(v: Any) -> str:
    if v is True or v is False:
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------------ checks
def satisfiable(node: _Node, outputs: Mapping[str, Output]) -> _Check:
    """Whether some request satisfies ``node``: SAT with an example, UNSAT with why, or MAYBE."""
    terms = _dnf(node)
    if not terms:
        return _Check(UNSAT, why="it matches nothing")
    reasons: list[str] = []
    maybe = False
    for t in terms:
        c = check_conjunction(t, outputs)
        if c.status == SAT:
            return c
        if c.status == MAYBE:
            maybe = True
        else:
            reasons.append(c.why)
    return _Check(MAYBE) if maybe else _Check(UNSAT, why="; ".join(dict.fromkeys(reasons)))


def example_text(witness: Mapping[str, Any]) -> str:
    """An example request in words: ``kw.code = true, lang = fr``."""
    parts = []
    for k, v in witness.items():
        name = "the route asked for" if k == TARGET else k
        shown = "missing" if v is None else "[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else _num(v)
        parts.append(f"{name} = {shown}")
    return ", ".join(parts) or "any request"


def analyse(decisions: Sequence[DecisionRule], outputs: Mapping[str, Output]) -> list[Conflict]:
    """Every conflict among ``decisions`` (given in evaluation order: priority, then file order)."""
    found: list[Conflict] = []
    alive: list[DecisionRule] = []
    for d in decisions:
        try:
            c = satisfiable(formula(d, outputs), outputs)
        except TooComplex:
            found.append(
                Conflict(
                    "too_complex",
                    (d.name,),
                    f"decision {d.name!r} is too complex to analyse "
                    f"(over {MAX_TERMS} cases): conflicts involving it are not checked",
                    d.where,
                    False,
                )
            )
            continue
        if c.status == UNSAT:
            found.append(Conflict("never", (d.name,), f"decision {d.name!r} can never match: {c.why}", d.where))
            continue
        alive.append(d)
    for i, d in enumerate(alive):
        for e in alive[:i]:
            if e.priority != d.priority:
                continue
            c = _both(d, e, outputs)
            if c.status == SAT:
                found.append(
                    Conflict(
                        "overlap",
                        (e.name, d.name),
                        f"decisions {e.name!r} and {d.name!r} have the same priority ({d.priority}) and "
                        f"can both match one request (e.g. {example_text(c.witness)}); file order "
                        f"would decide: give them different priorities, or make their rules exclusive",
                        d.where,
                    )
                )
            elif c.status == MAYBE:
                found.append(
                    Conflict(
                        "may_overlap",
                        (e.name, d.name),
                        f"decisions {e.name!r} and {d.name!r} have the same priority ({d.priority}) and "
                        "may overlap (regular expressions cannot be compared)",
                        d.where,
                        False,
                    )
                )
        higher = alive[:i]
        if higher:
            shadow = _shadowed(d, higher, outputs)
            if shadow is not None:
                found.append(shadow)
    return found


def _both(d: DecisionRule, e: DecisionRule, outputs: Mapping[str, Output]) -> _Check:
    try:
        return satisfiable(("and", [formula(d, outputs), formula(e, outputs)]), outputs)
    except TooComplex:
        return _Check(MAYBE)


def _covered(d: DecisionRule, h: DecisionRule, outputs: Mapping[str, Output]) -> bool:
    """Whether every request ``d`` matches is matched by ``h``."""
    try:
        return satisfiable(("and", [formula(d, outputs), formula(h, outputs, negate=True)]), outputs).status == UNSAT
    except TooComplex:
        return False


def _shadowed(d: DecisionRule, higher: list[DecisionRule], outputs: Mapping[str, Output]) -> Conflict | None:
    """A conflict when every request ``d`` matches is matched by one of ``higher`` first."""
    try:
        terms = _dnf(formula(d, outputs))
        for h in higher:
            neg = _dnf(formula(h, outputs, negate=True))
            # conjoin with "not h", dropping impossible cases as we go so the expansion stays small
            terms = [t + n for t in terms for n in neg]
            if len(terms) > MAX_TERMS:
                raise TooComplex
            terms = [t for t in terms if check_conjunction(t, outputs).status != UNSAT]
            if not terms:
                break
    except TooComplex:
        return None
    if terms:
        return None
    # name the fewest: one higher decision that alone covers it, else every higher one it overlaps
    takers = [h.name for h in higher if _covered(d, h, outputs)][:1] or [
        h.name for h in higher if _both(d, h, outputs).status != UNSAT
    ]
    return Conflict(
        "shadowed",
        (d.name, *takers),
        f"decision {d.name!r} is shadowed: every request it matches is taken first by "
        f"{', '.join(map(repr, takers))} (higher priority, or equal and earlier in the file); "
        "raise its priority, narrow the others, or remove it",
        d.where,
    )


__all__ = [
    "MAX_TERMS",
    "TARGET",
    "Atom",
    "Conflict",
    "DecisionRule",
    "TooComplex",
    "analyse",
    "check_conjunction",
    "example_text",
    "formula",
    "satisfiable",
]
