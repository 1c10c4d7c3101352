"""Heuristic request signals: keywords, regular expressions, lengths, roles, request fields, key, metadata, structure."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from turnout.errors import ConfigError
from turnout.signals.base import BuildContext, StaticView
from turnout.signals.registry import SignalSet, build_signal, build_signals, signal_types
from turnout.types import ChatRequest


def values(sig_type: str, text: str, params: dict | None = None, **view_kw) -> dict:
    sig = build_signal("s", sig_type, params or {})
    return sig.extract(StaticView.of(text, **view_kw))


def test_keywords_match_on_word_boundaries_and_phrases() -> None:
    sets = {"code": ["python", "stack trace", "c++", "#include"], "legal": ["contract"]}
    sig = build_signal("kw", "keywords", {"sets": sets})
    assert sig.outputs["kw"].type == "labels" and sig.outputs["kw"].choices == {"code", "legal"}
    assert sig.outputs["kw.code"].member_of == ("kw", "code")

    def hit(text: str) -> set[str]:
        return set(sig.extract(StaticView.of(text))["kw"])

    assert hit("My PYTHON script fails") == {"code"}  # case-insensitive by default
    assert hit("pythonic ideas") == set()  # a word boundary: not inside a longer word
    assert hit("a stack\n  trace from prod") == {"code"}  # a phrase's spaces match any white space
    assert hit("I write C++, mostly") == {"code"}  # punctuation keywords work
    assert hit("the contract, and #include <stdio.h>") == {"code", "legal"}
    assert hit("contractor fees") == set()
    out = sig.extract(StaticView.of("contract"))
    assert out["kw.legal"] is True and out["kw.code"] is False


def test_keyword_case_rules_per_set() -> None:
    sig = build_signal(
        "kw",
        "keywords",
        {"sets": {"acro": {"words": ["IT"], "case_sensitive": True}, "sub": {"words": ["cat"], "whole_words": False}}},
    )
    assert sig.extract(StaticView.of("call IT support"))["kw.acro"] is True
    assert sig.extract(StaticView.of("is it done?"))["kw.acro"] is False
    assert sig.extract(StaticView.of("concatenate"))["kw.sub"] is True


def test_keywords_read_the_view_asked_for() -> None:
    sig = build_signal("kw", "keywords", {"sets": {"x": ["pirate"]}, "text": "system"})
    assert sig.extract(StaticView.of("hello", system="talk like a pirate"))["kw.x"] is True
    assert sig.extract(StaticView.of("pirate", system="be nice"))["kw.x"] is False


def test_regex_signal_and_a_pattern_that_does_not_compile() -> None:
    sig = build_signal(
        "rx", "regex", {"patterns": {"ticket": r"\bTCK-\d{4,}\b", "loud": {"pattern": "urgent", "case_sensitive": False}}}
    )
    out = sig.extract(StaticView.of("URGENT: see TCK-12345"))
    assert out["rx"] == frozenset({"ticket", "loud"})
    assert sig.extract(StaticView.of("tck-12345"))["rx.ticket"] is False  # case as written
    with pytest.raises(ConfigError) as info:
        build_signal("rx", "regex", {"patterns": {"bad": "(unclosed"}}, build=BuildContext(source="turnout.yaml"))
    err = info.value
    assert err.file == "turnout.yaml" and err.key == "signals.rx.params.patterns.bad"
    assert "does not compile" in str(err) and "position" in str(err) and "escape" in (err.fix or "")


def test_build_errors_name_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        build_signal("kw", "keyword", {})
    assert info.value.key == "signals.kw.type" and "keywords" in (info.value.fix or "")
    with pytest.raises(ConfigError) as info:
        build_signal("kw", "keywords", {"sets": {"a": ["x"]}, "case": True})
    assert info.value.key == "signals.kw.params.case" and "case_sensitive" in (info.value.fix or "")
    with pytest.raises(ConfigError) as info:
        build_signal("kw", "keywords", {"sets": {"a": []}})
    assert info.value.key == "signals.kw.params.sets.a"
    with pytest.raises(ConfigError) as info:
        build_signal("Bad.Name", "tokens", {})
    assert "valid signal name" in str(info.value)
    with pytest.raises(ConfigError, match="text view"):
        build_signal("kw", "keywords", {"sets": {"a": ["x"]}, "text": "everything"})
    assert {"keywords", "regex", "language", "domain", "jailbreak", "score"} <= set(signal_types())


def test_tokens_conversation_and_request_fields() -> None:
    req = ChatRequest(
        "auto",
        [
            {"role": "system", "content": "s" * 400},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "x" * 40}, {"type": "image_url", "image_url": {"url": "data:,"}}],
            },
        ],
        stream=True,
        params={
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_schema", "json_schema": {}},
            "max_tokens": 300,
        },
    )
    view = StaticView(req)
    t = build_signal("tok", "tokens", {}).extract(view)
    assert t["tok.system"] == 100 and t["tok.last"] == 10 and t["tok"] > 110
    c = build_signal("conv", "conversation", {}).extract(view)
    assert c["conv"] == 2 and c["conv.messages"] == 5 and c["conv.tool_results"] is True
    assert c["conv.roles"] == frozenset({"system", "user", "assistant", "tool"})
    r = build_signal("req", "request", {}).extract(view)
    assert r == {
        "req.images": True,
        "req.tools": True,
        "req.response_format": "json_schema",
        "req.json": True,
        "req.stream": True,
        "req.model": "auto",
        "req.max_tokens": 300,
    }
    plain = build_signal("req", "request", {}).extract(StaticView.of("hi"))
    assert plain["req.images"] is False and plain["req.response_format"] == "none" and plain["req.max_tokens"] is None


def test_key_and_metadata_signals() -> None:
    key = SimpleNamespace(name="alice", team="research", tags=("beta", "eu"))
    k = build_signal("key", "key", {}).extract(StaticView.of("hi", key=key))
    assert k == {"key": "alice", "key.team": "research", "key.tags": frozenset({"beta", "eu"})}
    anon = build_signal("key", "key", {}).extract(StaticView.of("hi"))
    assert anon["key"] == "anonymous" and anon["key.team"] is None and anon["key.tags"] == frozenset()
    meta = build_signal("meta", "metadata", {"headers": {"tier": "X-Tier"}})
    m = meta.extract(StaticView.of("hi", headers={"x-turnout-tags": "Beta, mobile ,", "x-tier": " gold "}))
    assert m == {"meta.tags": frozenset({"beta", "mobile"}), "meta.tier": "gold"}
    assert meta.extract(StaticView.of("hi"))["meta.tier"] is None
    with pytest.raises(ConfigError, match="x-"):
        build_signal("meta", "metadata", {"headers": {"tier": "authorization"}})


#: hand-labelled prompts: (text, code, math, json)
STRUCTURE_PROBES = [
    ("```python\nprint(1)\n```", True, False, False),
    ("def add(a, b):\n    return a + b", True, False, False),
    ("#include <stdio.h>\nint main() {\n  return 0;\n}", True, False, False),
    ("SELECT name FROM users WHERE id = 3;\nDELETE FROM logs;", True, False, False),
    ("$ pip install turnout\n$ git status", True, False, False),
    ("What is the capital of France?", False, False, False),
    ("Write a poem about the sea; make it short.", False, False, False),
    ("Solve x^2 + 3x - 4 = 0", False, True, False),
    ("Compute \\int_0^1 x dx and \\frac{1}{2}", False, True, False),
    ("What is 17 * (3 + 4)?", False, True, False),
    ("Is √2 ≤ 1.5?", False, True, False),
    ("I have 3 cats and 2 dogs.", False, False, False),
    ('Parse this: {"name": "Ada", "age": 36}', False, False, True),
    ("```json\n[1, 2, 3]\n```", True, False, True),
    ("Use braces {like this} in prose", False, False, False),
    ("An empty object {} is not much", False, False, False),
]


@pytest.mark.parametrize(("text", "code", "math", "json_"), STRUCTURE_PROBES)
def test_structure_on_labelled_probes(text: str, code: bool, math: bool, json_: bool) -> None:
    out = build_signal("st", "structure", {}).extract(StaticView.of(text))
    assert (out["st.code"], out["st.math"], out["st.json"]) == (code, math, json_)


def test_signal_set_plans_only_what_rules_read() -> None:
    settings = {
        "kw": SimpleNamespace(type="keywords", always=False, params={"sets": {"a": ["x"]}}),
        "tok": SimpleNamespace(type="tokens", always=True, params={}),
        "st": SimpleNamespace(type="structure", always=False, params={}),
    }
    sigs = build_signals(settings)
    plan = sigs.plan(["kw.a"])
    assert sorted(plan.names) == ["kw", "tok"]  # st: no rule reads it; tok: always
    found = asyncio.run(sigs.extract(StaticView.of("x"), plan))
    assert found.values["kw.a"] is True and "tok" in found.values and "st.code" not in found.values
    assert sigs.plan([]).names == ["tok"]


def test_a_failing_signal_leaves_its_outputs_missing() -> None:
    class Broken(build_signal("t", "tokens", {}).__class__):
        def extract(self, view):  # type: ignore[override]
            raise RuntimeError("boom")

    sigs = SignalSet({"t": Broken("t"), "kw": build_signal("kw", "keywords", {"sets": {"a": ["x"]}})})
    found = asyncio.run(sigs.extract(StaticView.of("x"), sigs.plan(["t", "kw.a"])))
    assert found.failed == {"t": "RuntimeError: boom"} and "t" not in found.values and found.values["kw.a"] is True
