import json
import math

import numpy as np
import pytest

from turnout.errors import DataError, RoutingError
from turnout.routing import answers
from turnout.routing.acceptance import (
    AcceptanceSignal,
    AllOf,
    AnswerView,
    available,
    create_signal,
    judge,
    register_signal,
    signal_names,
)

MC = 'Which is a metal?\nA) wood\nB) iron\nC) glass\nPrint only a single choice from "A" or "B" or "C".\nAnswer:'
# RouterBench stores prompts as the repr of a list: its line breaks are the two characters \n
MC_ESCAPED = "['Q1?\\nA) x\\nB) y\\nAnswer:\\nA\\n\\nWhich is a metal?\\nA) wood\\nB) iron\\nC) glass\\nAnswer:']"
CODE_ASK = "Write a python function to add two numbers."


def view(answer, prompt=MC, **kw):
    return AnswerView(prompt=prompt, answer=answer, model="m", **kw)


def test_offered_choices_take_the_last_question_and_read_escaped_line_breaks():
    assert answers.offered_choices(MC) == {"A": "wood", "B": "iron", "C": "glass"}
    assert answers.offered_choices(MC_ESCAPED) == {"A": "wood", "B": "iron", "C": "glass"}
    assert answers.offered_choices("What is 2+2?") == {}


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("B", "B"),
        ("B\n", "B"),
        ("(B)", "B"),
        ("B) iron", "B"),
        ("b.", None),
        ("The answer is B.", "B"),
        ("iron", "B"),
        ("Iro", "B"),
        ("I do not have enough context", None),
        ("D", None),
        ("", None),
        ("A dog is not a metal", None),
    ],
)
def test_extract_choice(answer, expected):
    assert answers.extract_choice(answer, answers.offered_choices(MC)) == expected


def test_code_is_read_from_fences_and_tags_and_checked_as_python():
    py = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n```python\n>>> add(1, 2)\n3\n```"
    js = "```javascript\nfunction add(a, b) { return a + b; }\n```"
    tagged = "[PYTHON]\ndef add(a, b):\n    return a+b\n[/PYTHON]"
    assert answers.python_code(py) == "def add(a, b):\n    return a + b"  # the REPL example is not the solution
    assert answers.python_code(js) is None and answers.code_blocks(js)[0][0] == "javascript"
    assert answers.parses_as_python(answers.python_code(tagged))
    # layout and comments do not make two programs different
    a = answers.normalized_code("def f(x):\n    # double\n    return x*2\n")
    assert a == answers.normalized_code("def f(x):  return x * 2")


def test_comparable_keys_by_kind_of_answer():
    assert answers.comparable(MC, "B) iron") == answers.comparable(MC, "iron") == "choice:B"
    assert answers.comparable("How many?", "The total is 1,000.") == "number:1000"
    assert answers.comparable("Capital of France?", "Paris.") == "text:paris"
    assert answers.comparable("Explain it.", "word " * 40) is None  # long prose has no key


def test_needs_decide_what_is_asked():
    v = view("B")
    assert available(v) == frozenset()
    assert judge(create_signal("logprob_mean"), v) is None  # no log-probs: not asked, escalates
    assert judge(create_signal("agreement"), v) is None
    full = view("B", token_logprobs=[-0.1, -0.2], top2_margins=[2.0], others=("B",), response_format={"type": "text"})
    assert available(full) == frozenset({"logprobs", "top2_margins", "others", "response_format"})


def test_logprob_signals():
    v = view("B", token_logprobs=[math.log(0.9), math.log(0.5)], top2_margins=[0.0, 100.0])
    assert judge(create_signal("logprob_mean"), v) == pytest.approx(math.sqrt(0.45))
    assert judge(create_signal("logprob_min"), v) == pytest.approx(0.5)
    assert judge(create_signal("margin"), v) == pytest.approx(0.5)  # a tie (0) and a sure token (1)


def test_agreement_share_and_prose():
    sig = create_signal("agreement")
    assert judge(sig, view("B", others=("iron", "(B)", "A", "C"))) == 0.5
    assert judge(sig, view("I cannot tell", others=("B",))) is None
    code = "```python\ndef f(x):\n    return x*2\n```"
    same = "def f(x):\n    # twice\n    return x * 2\n"
    assert judge(sig, view(code, prompt=CODE_ASK, others=(same,))) == 1.0


def test_structural_signals():
    choice = create_signal("choice")
    assert judge(choice, view("B")) == 1.0 and judge(choice, view("I do not know")) == 0.0
    assert judge(choice, view("Paris", prompt="Capital of France?")) is None
    code = create_signal("code_parses")
    assert judge(code, view("```python\ndef f(:\n```", prompt=CODE_ASK)) == 0.0
    assert judge(code, view("```js\nfunction f() {}\n```", prompt=CODE_ASK)) == 0.0
    assert judge(code, view("Sorry, I can't.", prompt=CODE_ASK)) == 0.0  # code asked for, none given
    assert judge(code, view("```python\ndef f(x):\n    return x\n```", prompt=CODE_ASK)) == 1.0
    assert judge(code, view("Paris", prompt="Capital of France?")) is None


def test_json_schema_signal():
    sig = create_signal("json_schema")
    schema = {
        "type": "json_schema",
        "json_schema": {
            "schema": {
                "type": "object",
                "required": ["name", "age"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
            }
        },
    }
    ok = json.dumps({"name": "Ada", "age": 36})
    assert judge(sig, view(ok, response_format=schema)) == 1.0
    assert judge(sig, view("```json\n" + ok + "\n```", response_format=schema)) == 1.0
    assert judge(sig, view(json.dumps({"name": "Ada"}), response_format=schema)) == 0.0
    assert judge(sig, view(json.dumps({"name": "Ada", "age": -1}), response_format=schema)) == 0.0
    assert judge(sig, view(json.dumps({"name": "Ada", "age": 3, "x": 1}), response_format=schema)) == 0.0
    assert judge(sig, view("not json", response_format={"type": "json_object"})) == 0.0
    assert judge(sig, view("[1]", response_format={"type": "json_object"})) == 0.0
    assert judge(sig, view("hi", response_format={"type": "text"})) is None


def test_all_of_takes_the_lowest_that_can_judge():
    sig = AllOf((create_signal("choice"), create_signal("logprob_min")))
    assert judge(sig, view("B", token_logprobs=[math.log(0.3)])) == pytest.approx(0.3)
    assert judge(sig, view("B")) == 1.0  # log-probs absent: only the choice judges
    assert judge(sig, view("Paris", prompt="Capital?")) is None


def test_registry_names_and_plugins():
    assert {"logprob_mean", "logprob_min", "margin", "agreement", "verifier", "json_schema", "choice", "code_parses"} <= set(
        signal_names()
    )
    with pytest.raises(RoutingError, match="unknown acceptance signal 'nope'.*choose one of"):
        create_signal("nope")

    class Always:
        name, needs = "always_test", frozenset()

        def confidence(self, view):
            return 0.7

    register_signal("always_test", Always)
    sig = create_signal("always_test")
    assert isinstance(sig, AcceptanceSignal) and judge(sig, view("x")) == 0.7
    with pytest.raises(RoutingError, match="already registered"):
        register_signal("always_test", lambda: Always())


def _views(n, rng):
    """Two-option questions; model 'good' is right 90%, 'bad' 50%; agreeing with 'good' is what tells."""
    prompt = "Pick one.\nA) yes\nB) no\nAnswer:"
    views, labels = [], []
    for _ in range(n):
        truth = rng.choice(["A", "B"])
        good = truth if rng.random() < 0.9 else ("B" if truth == "A" else "A")
        bad = truth if rng.random() < 0.5 else ("B" if truth == "A" else "A")
        views.append(AnswerView(prompt, bad, "bad", others=(good,), others_models=("good",)))
        labels.append(float(bad == truth))
    return views, np.array(labels)


def test_verifier_learns_whose_agreement_counts_and_round_trips(tmp_path):
    pytest.importorskip("sklearn")
    from turnout.evaluation.metrics import auc
    from turnout.routing.verifier import Verifier, VerifierFeatures, VerifierSignal, load_verifier, save_verifier

    rng = np.random.default_rng(0)
    views, y = _views(600, rng)
    v = Verifier.fit(VerifierFeatures(("good", "bad")), views, y)
    test_views, ty = _views(300, rng)
    p = v.predict_views(test_views)
    assert auc(ty > 0.5, p) > 0.85  # agreeing with the 90% model: right 90% of the time, disagreeing: 10%
    assert 0.0 < v.report["cv_brier"] < 0.2
    path = save_verifier(v, tmp_path / "v.npz", meta={"table": "toy"})
    v2, meta = load_verifier(path)
    assert meta["table"] == "toy" and meta["models"] == ["good", "bad"]
    assert np.allclose(v2.predict_views(test_views), p)
    sig = create_signal("verifier", artifact=str(path))
    assert isinstance(sig, VerifierSignal)
    assert judge(sig, test_views[0]) == pytest.approx(p[0])


def test_verifier_artifact_errors(tmp_path):
    from turnout.routing.verifier import load_verifier

    with pytest.raises(DataError, match="not found"):
        load_verifier(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a turnout verifier artifact"):
        load_verifier(bad)
