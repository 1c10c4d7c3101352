"""Start-up analysis of decision rules: never-matching, same-priority overlaps, shadowing; checked against brute force."""

from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.errors import ConfigError
from turnout.signals.base import Output
from turnout.signals.conflicts import DecisionRule, analyse, formula, satisfiable
from turnout.signals.decisions import DecisionSet, parse_decisions
from turnout.signals.registry import build_signals
from turnout.signals.rules import bind, evaluate, parse_rule

OUTPUTS = {
    "b": Output("bool"),
    "l": Output("label", choices=frozenset({"a", "b", "c"}), optional=True),
    "n": Output("number", lo=0),
    "s": Output("labels", choices=frozenset({"x", "y"})),
    "k.x": Output("bool", member_of=("s", "x")),
    "m": Output("label"),
}
NUMBERS = [0, 1, 2, 3]
FREE = ["p", "q"]


def bound(raw: Any):
    return bind(parse_rule(raw, where="when"), OUTPUTS)


def every_request() -> list[dict[str, Any]]:
    """Every combination of values that matters for rules over the constants above (plus a fresh label)."""
    grid = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]
    subsets = [frozenset(c) for r in range(3) for c in itertools.combinations(["x", "y"], r)]
    out = []
    for b, label, n, s, m in itertools.product([True, False], ["a", "b", "c", None], grid, subsets, [*FREE, "zz"]):
        out.append({"b": b, "l": label, "n": n, "s": s, "k.x": "x" in s, "m": m})
    return out


REQUESTS = every_request()

leaf = st.one_of(
    st.builds(lambda op, v: {"signal": "b", op: v}, st.sampled_from(["is", "eq", "ne"]), st.booleans()),
    st.builds(lambda op, v: {"signal": "l", op: v}, st.sampled_from(["eq", "ne"]), st.sampled_from(["a", "b", "c"])),
    st.builds(
        lambda op, v: {"signal": "l", op: v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
    ),
    st.builds(
        lambda op, v: {"signal": "n", op: v}, st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), st.sampled_from(NUMBERS)
    ),
    st.builds(
        lambda op, v: {"signal": "n", op: v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=3, unique=True),
    ),
    st.builds(lambda v: {"signal": "s", "contains": v}, st.sampled_from(["x", "y"])),
    st.builds(
        lambda op, v: {"signal": "s", op: v},
        st.sampled_from(["in", "not_in", "all_of"]),
        st.lists(st.sampled_from(["x", "y"]), min_size=1, max_size=2, unique=True),
    ),
    st.builds(lambda v: {"signal": "k.x", "is": v}, st.booleans()),
    st.builds(lambda op, v: {"signal": "m", op: v}, st.sampled_from(["eq", "ne"]), st.sampled_from(FREE)),
    st.builds(
        lambda op, v: {"signal": "m", op: v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(FREE), min_size=1, max_size=2, unique=True),
    ),
)
rules = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)


def matches(rule: Any, request: dict[str, Any]) -> bool:
    return evaluate(rule, request)[0]


def d(name: str, rule: Any, priority: int = 0) -> DecisionRule:
    return DecisionRule(name, priority, rule, None, f"decisions.{name}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules)
def test_satisfiable_agrees_with_brute_force_and_its_example_matches(raw: Any) -> None:
    r = bound(raw)
    truth = any(matches(r, q) for q in REQUESTS)
    c = satisfiable(formula(d("x", r), OUTPUTS), OUTPUTS)
    assert c.status == ("sat" if truth else "unsat"), raw
    if truth:  # the example it gives is a request the rule matches
        q = {"b": True, "l": "a", "n": 0, "s": frozenset(), "m": "zz"}
        for k, v in c.witness.items():
            q[k] = frozenset(v) if isinstance(v, list) else v
        q["k.x"] = "x" in q["s"]
        assert matches(r, q), (raw, c.witness)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules, rules)
def test_overlap_and_shadowing_agree_with_brute_force(raw_hi: Any, raw_lo: Any) -> None:
    hi, lo = bound(raw_hi), bound(raw_lo)
    found = {c.kind for c in analyse([d("hi", hi, 5), d("lo", lo, 5)], OUTPUTS)}
    can_hi = any(matches(hi, q) for q in REQUESTS)
    can_lo = any(matches(lo, q) for q in REQUESTS)
    both = any(matches(hi, q) and matches(lo, q) for q in REQUESTS)
    shadowed = can_lo and not any(matches(lo, q) and not matches(hi, q) for q in REQUESTS)
    assert ("never" in found) == (not can_hi or not can_lo)
    if can_hi and can_lo:
        assert ("overlap" in found) == both
        assert ("shadowed" in found) == shadowed


def test_examples_of_each_finding() -> None:
    found = analyse(
        [
            d("code", bound({"signal": "k.x", "is": True}), 10),
            d("legal", bound({"signal": "s", "contains": "y"}), 10),
            d("impossible", bound({"all": [{"signal": "n", "gt": 2000}, {"signal": "n", "lt": 100}]}), 5),
            d("also-code", bound({"signal": "s", "in": ["x"]}), 3),
            d("fr", bound({"signal": "l", "eq": "a"}), 1),
            d("regex1", bound({"signal": "m", "matches": "^f"}), 0),
            d("regex2", bound({"signal": "m", "matches": "r$"}), 0),
        ],
        OUTPUTS,
    )
    by = {c.kind: c for c in found}
    assert "'code' and 'legal'" in by["overlap"].message and "e.g. s = [x, y]" in by["overlap"].message
    assert by["never"].decisions == ("impossible",) and "n > 2000 and n < 100 cannot all hold" in by["never"].message
    # k.x is "x" in s: the two are one fact, so also-code is entirely taken by code first
    assert by["shadowed"].decisions == ("also-code", "code")
    assert by["may_overlap"].certain is False and by["may_overlap"].decisions == ("regex1", "regex2")
    assert all(c.certain for c in found if c.kind != "may_overlap")


def test_a_label_outside_the_choices_never_matches_and_a_catch_all_shadows() -> None:
    found = analyse(
        [d("typo", bound({"signal": "l", "eq": "zz"}), 2), d("all", None, 1), d("after", bound({"signal": "b", "is": True}), 0)],
        OUTPUTS,
    )
    kinds = [(c.kind, c.decisions) for c in found]
    assert ("never", ("typo",)) in kinds and ("shadowed", ("after", "all")) in kinds
    # a negated test holds on a missing value: "not l = a" can match (l missing) even with every label excluded
    r = bound({"all": [{"not": {"signal": "l", "eq": "a"}}, {"signal": "l", "not_in": ["a", "b", "c"]}]})
    assert satisfiable(formula(d("x", r), OUTPUTS), OUTPUTS).status == "unsat"
    r2 = bound({"all": [{"not": {"signal": "l", "eq": "a"}}, {"not": {"signal": "l", "in": ["b", "c"]}}]})
    c = satisfiable(formula(d("x", r2), OUTPUTS), OUTPUTS)
    assert c.status == "sat" and c.witness["l"] is None


def sigset():
    return build_signals(
        {
            "kw": SimpleNamespace(type="keywords", always=False, params={"sets": {"code": ["python"], "legal": ["contract"]}}),
            "tok": SimpleNamespace(type="tokens", always=False, params={}),
        }
    )


DECISIONS = [
    {"name": "code", "priority": 10, "when": {"signal": "kw.code", "is": True}, "use": {"route": "coder"}},
    {"name": "legal", "priority": 10, "when": {"signal": "kw.legal", "is": True}, "use": {"route": "coder"}},
]


def test_conflicts_are_errors_by_default_and_warnings_when_asked(caplog) -> None:
    specs = parse_decisions(DECISIONS, source="turnout.yaml")
    with pytest.raises(ConfigError) as info:
        DecisionSet(specs, sigset(), routes=["auto", "coder"], models=["m"], source="turnout.yaml")
    err = info.value
    assert err.file == "turnout.yaml" and err.key == "decisions[1]" and "'code' and 'legal'" in str(err)
    assert "decision_conflicts: warn" in (err.fix or "")
    with caplog.at_level(logging.WARNING):
        ds = DecisionSet(specs, sigset(), routes=["auto", "coder"], models=["m"], conflicts="warn", source="turnout.yaml")
    assert [c.kind for c in ds.conflicts] == ["overlap"] and "'code' and 'legal'" in caplog.text


def test_scopes_separate_decisions() -> None:
    specs = parse_decisions([{**DECISIONS[0], "applies_to": ["auto"]}, {**DECISIONS[1], "applies_to": ["coder"]}])
    ds = DecisionSet(specs, sigset(), routes=["auto", "coder"], models=["m"])  # disjoint scopes: no overlap
    assert ds.conflicts == []
    # the default scope is every route: a decision that applies to nothing defined can never match
    with pytest.raises(ConfigError, match="can never match"):
        DecisionSet(parse_decisions(DECISIONS[:1]), sigset(), routes=[], models=["m", "coder"])
