"""The rule language: parsing (errors with keys), binding to signal outputs (types), evaluation with explanations."""

from __future__ import annotations

import pytest

from turnout.errors import ConfigError
from turnout.signals.base import Output
from turnout.signals.rules import bind, describe, evaluate, explain_text, parse_rule, referenced

OUTPUTS = {
    "lang": Output("label", optional=True),
    "tokens": Output("number", lo=0),
    "kw": Output("labels", choices=frozenset({"code", "legal"})),
    "kw.code": Output("bool", member_of=("kw", "code")),
    "jb.score": Output("number", lo=0, hi=1),
}


def rule(raw: dict, where: str = "decisions[0].when"):
    return bind(parse_rule(raw, where=where, source="rules.yaml"), OUTPUTS, source="rules.yaml")


def test_leaves_of_every_type() -> None:
    vals = {"lang": "fr", "tokens": 2500, "kw": frozenset({"code"}), "kw.code": True, "jb.score": 0.7}
    cases = [
        ({"signal": "lang", "in": ["fr", "de"]}, True),
        ({"signal": "lang", "not_in": ["fr"]}, False),
        ({"signal": "lang", "eq": "fr"}, True),
        ({"signal": "lang", "matches": "^f"}, True),
        ({"signal": "tokens", "gt": 2000}, True),
        ({"signal": "tokens", "gte": 100, "lt": 2000}, False),
        ({"signal": "tokens", "in": [2500, 3]}, True),
        ({"signal": "kw.code", "is": True}, True),
        ({"signal": "kw.code", "ne": True}, False),
        ({"signal": "kw", "contains": "code"}, True),
        ({"signal": "kw", "in": ["legal", "code"]}, True),
        ({"signal": "kw", "not_in": ["legal"]}, True),
        ({"signal": "kw", "all_of": ["legal", "code"]}, False),
        ({"signal": "jb.score", "gte": 0.5}, True),
    ]
    for raw, want in cases:
        assert evaluate(rule(raw), vals)[0] is want, raw


def test_composites_and_missing_values() -> None:
    r = rule({"all": [{"signal": "lang", "in": ["fr"]}, {"not": {"signal": "kw.code", "is": True}}]})
    assert evaluate(r, {"lang": "fr", "kw.code": False})[0] is True
    assert evaluate(r, {"lang": "fr", "kw.code": True})[0] is False
    # a leaf on a missing value is false; its negation is true
    assert evaluate(rule({"signal": "lang", "ne": "en"}), {"lang": None})[0] is False
    assert evaluate(rule({"not": {"signal": "lang", "eq": "en"}}), {})[0] is True
    # not: [a, b] means none of them
    none_of = rule({"not": [{"signal": "lang", "eq": "fr"}, {"signal": "tokens", "gt": 10}]})
    assert evaluate(none_of, {"lang": "de", "tokens": 5})[0] is True
    assert evaluate(none_of, {"lang": "de", "tokens": 50})[0] is False
    any_ = rule({"any": [{"signal": "lang", "eq": "fr"}, {"signal": "tokens", "gt": 10}]})
    assert evaluate(any_, {"lang": "de", "tokens": 50})[0] is True
    assert evaluate(None, {})[0] is True
    assert referenced(any_) == {"lang", "tokens"}
    assert describe(any_) == "lang = fr or tokens > 10"


def test_explanation_names_every_leaf_with_the_value_it_saw() -> None:
    r = rule({"all": [{"signal": "lang", "in": ["fr", "de"]}, {"signal": "tokens", "gt": 2000}]})
    ok, trace = evaluate(r, {"lang": "fr", "tokens": 15})
    assert ok is False
    assert trace["all"][0] == {"test": "lang in [de, fr]", "value": "fr", "matched": True}
    assert trace["all"][1] == {"test": "tokens > 2000", "value": 15, "matched": False}
    assert explain_text(trace) == "lang in [de, fr] (lang = fr): yes; tokens > 2000 (tokens = 15): no"
    _, t2 = evaluate(rule({"signal": "kw", "contains": "code"}), {"kw": frozenset({"legal", "code"})})
    assert t2["value"] == ["code", "legal"]  # JSON-able
    _, t3 = evaluate(rule({"signal": "lang", "eq": "fr"}), {})
    assert "lang = missing" in explain_text(t3)


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ("lang", "decisions[0].when", "must be a mapping"),
        ({"signal": "lang"}, "decisions[0].when", "no test"),
        ({"signal": "lang", "equals": "fr"}, "decisions[0].when.equals", "unknown test"),
        ({"sgnal": "lang", "eq": "fr"}, "decisions[0].when", "needs 'signal'"),
        ({"all": {"signal": "lang", "eq": "fr"}}, "decisions[0].when.all", "takes a list"),
        ({"all": []}, "decisions[0].when.all", "empty list"),
        ({"all": [{"signal": "lang", "eq": "fr"}], "any": []}, "decisions[0].when", "cannot be combined"),
        ({"signal": "lang", "in": "fr"}, "decisions[0].when.in", "non-empty list"),
        ({"signal": "lang", "matches": "(fr"}, "decisions[0].when.matches", "does not compile"),
        (
            {"any": [{"signal": "lang", "eq": "fr"}, {"signal": "Lang", "eq": "x"}]},
            "decisions[0].when.any[1].signal",
            "not a signal output name",
        ),
    ],
)
def test_parse_errors_name_the_key(raw, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule(raw, where="decisions[0].when", source="rules.yaml")
    assert info.value.key == key and words in str(info.value) and info.value.file == "rules.yaml"
    assert info.value.fix


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"signal": "lnag", "eq": "fr"}, "decisions[0].when.signal", "'lang'"),
        ({"signal": "kw.cod", "is": True}, "decisions[0].when.signal", "kw.code"),
        ({"signal": "tokens", "gt": "many"}, "decisions[0].when", "needs a number"),
        ({"signal": "tokens", "contains": 3}, "decisions[0].when", "has no test"),
        ({"signal": "kw.code", "is": "yes"}, "decisions[0].when", "true or false"),
        ({"signal": "lang", "eq": False}, "decisions[0].when", "quote"),
        ({"signal": "tokens", "gte": 1, "lt": "x"}, "decisions[0].when.lt", "needs a number"),
    ],
)
def test_bind_errors_name_the_key_and_the_fix(raw, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        rule(raw)
    err = info.value
    assert err.key == key and (words in str(err) or words in (err.fix or "")), (str(err), err.fix)
