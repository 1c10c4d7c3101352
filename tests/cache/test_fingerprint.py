"""The context fingerprint: everything but the last message's wording changes it; harmless fields do not."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.cache import HARMLESS_PARAMS, ContextFingerprint, normalise
from turnout.types import ChatRequest

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
QUESTION = {"role": "user", "content": "What is the boiling point of water?"}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def fp(
    messages: list[dict[str, Any]] | None = None,
    *,
    model: str = "auto",
    tenant: str = "alice",
    route: str | None = None,
    **params: Any,
) -> ContextFingerprint:
    req = ChatRequest(model, messages if messages is not None else [SYSTEM, QUESTION], params=dict(params))
    return ContextFingerprint.of(req, tenant=tenant, route=route)


BASE = fp()


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(fp([{"role": "system", "content": "You are a pirate."}, QUESTION]), id="system prompt"),
        pytest.param(fp([QUESTION]), id="no system prompt"),
        pytest.param(
            fp([SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, QUESTION]),
            id="earlier turns",
        ),
        pytest.param(
            fp([SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey!"}, QUESTION]),
            id="earlier assistant wording",
        ),
        pytest.param(fp(tenant="bob"), id="tenant"),
        pytest.param(fp(model="gpt-4o"), id="model asked for"),
        pytest.param(fp(route="auto-cheap"), id="route override"),
        pytest.param(fp(temperature=0.7), id="temperature"),
        pytest.param(fp(top_p=0.5), id="top_p"),
        pytest.param(fp(max_tokens=16), id="max_tokens"),
        pytest.param(fp(max_completion_tokens=16), id="max_completion_tokens"),
        pytest.param(fp(seed=7), id="seed"),
        pytest.param(fp(stop=["\n"]), id="stop"),
        pytest.param(fp(n=1), id="n"),
        pytest.param(fp(response_format={"type": "json_object"}), id="response_format"),
        pytest.param(fp(tools=TOOLS), id="tools"),
        pytest.param(fp(tools=TOOLS, tool_choice="required"), id="tool_choice"),
        pytest.param(fp(logprobs=True), id="logprobs"),
        pytest.param(fp(presence_penalty=0.5), id="presence_penalty"),
        pytest.param(fp(logit_bias={"50256": -100}), id="logit_bias"),
        pytest.param(fp(some_future_field="x"), id="unknown field (not known to be harmless)"),
        pytest.param(fp([SYSTEM, {"role": "user", "name": "carol", "content": QUESTION["content"]}]), id="last message name"),
        pytest.param(
            fp(
                [
                    SYSTEM,
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": QUESTION["content"]},
                            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        ],
                    },
                ]
            ),
            id="image in the last message",
        ),
    ],
)
def test_context_changes_the_digest(changed: ContextFingerprint) -> None:
    assert changed.digest != BASE.digest
    assert changed.exact_key != BASE.exact_key


def test_tool_definitions_are_compared_in_full() -> None:
    other_tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "required": ["q"]}}}]
    assert fp(tools=TOOLS).digest != fp(tools=other_tools).digest


@pytest.mark.parametrize("param", sorted(HARMLESS_PARAMS))
def test_harmless_params_do_not_change_it(param: str) -> None:
    value: Any = {"include_usage": True} if param == "stream_options" else "x"
    assert fp(**{param: value}) == BASE


def test_stream_is_harmless_and_numbers_are_canonical() -> None:
    assert fp(stream=True) == BASE
    assert fp(temperature=0) == fp(temperature=0.0)
    assert fp(temperature=1) == fp(temperature=1.0)
    assert fp(temperature=0.1) != fp(temperature=0.2)
    # key order of a parameter object does not matter, its values do
    assert fp(response_format={"type": "json_schema", "json_schema": {"name": "a", "strict": True}}) == fp(
        response_format={"json_schema": {"strict": True, "name": "a"}, "type": "json_schema"}
    )


def test_last_message_wording_changes_only_the_exact_key() -> None:
    other = fp([SYSTEM, {"role": "user", "content": "At what temperature does water boil?"}])
    assert other.digest == BASE.digest
    assert other.exact_key != BASE.exact_key
    assert other.text == "At what temperature does water boil?"


def test_exact_key_folds_whitespace_but_not_case() -> None:
    spaced = fp([SYSTEM, {"role": "user", "content": "  What is the\nboiling point of  water? "}])
    assert spaced.exact_key == BASE.exact_key
    assert spaced.text != BASE.text  # the text is kept as asked
    upper = fp([SYSTEM, {"role": "user", "content": "WHAT IS THE BOILING POINT OF WATER?"}])
    assert upper.exact_key != BASE.exact_key
    assert normalise("a\u00a0b\t c ") == "a b c"  # NFKC turns the no-break space into a space


def test_text_parts_of_the_last_message_are_its_text() -> None:
    parts = fp(
        [
            SYSTEM,
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the boiling"}, {"type": "text", "text": "point of water?"}],
            },
        ]
    )
    assert parts.text == "What is the boiling\npoint of water?"
    assert parts.digest == BASE.digest  # text parts alone: the same context as a string content


def test_conversation_not_ending_with_a_user_message_is_all_context() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
    }
    a = fp([SYSTEM, QUESTION, call, {"role": "tool", "tool_call_id": "c1", "content": "100 C"}], tools=TOOLS)
    b = fp([SYSTEM, QUESTION, call, {"role": "tool", "tool_call_id": "c1", "content": "212 F"}], tools=TOOLS)
    assert a.text == "" and b.text == ""
    assert a.digest != b.digest


def test_names_cannot_collide_across_fields() -> None:
    # length-prefixed fields: moving characters between tenant and route gives another digest
    assert fp(tenant="ab", model="c").digest != fp(tenant="a", model="bc").digest


def test_stable_across_calls_and_not_json_values_do_not_crash() -> None:
    assert fp() == fp()
    odd = fp(temperature=float("nan"), extra={1, 2})
    assert len(odd.digest) == 64
