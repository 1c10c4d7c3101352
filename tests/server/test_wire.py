"""The wire schema's checks, without a server: every typed OpenAI field is a 400 naming its param."""

from __future__ import annotations

import json
from typing import Any

import pytest

from turnout.errors import InvalidRequestError
from turnout.server.wire import parse_chat, parse_feedback

MSG = [{"role": "user", "content": "hi"}]


def _chat(**fields: Any) -> bytes:
    return json.dumps({"model": "auto", "messages": MSG, **fields}).encode()


def _parts(*parts: Any) -> bytes:
    return json.dumps({"model": "auto", "messages": [{"role": "user", "content": list(parts)}]}).encode()


BAD_FIELDS = [
    ({"seed": "42"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": ["get_weather"]}, "tools[0]"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": 7}}]}, "tools[0].function.name"),
    (
        {"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {}}]},
        "tools[1].function.name",
    ),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "object"}}]}, "tools[0].function.parameters"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": 1}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": ""}}}, "tool_choice"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": 1}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),  # only with logprobs
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
    ({"presence_penalty": 10}, "presence_penalty"),
    ({"presence_penalty": "high"}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"logit_bias": {"50256": 101}}, "logit_bias"),
    ({"logit_bias": {"50256": "-100"}}, "logit_bias"),
    ({"user": 42}, "user"),
    ({"user": {"id": "u1"}}, "user"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_FIELDS)
def test_a_typed_field_with_a_wrong_type_or_value_is_rejected_naming_its_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_chat(_chat(**fields))
    assert err.value.param == param and err.value.kind == "invalid_request_error"


GOOD_FIELDS = [
    {"seed": 42},
    {"seed": -1},
    {"seed": None},
    {"stop": "\n"},
    {"stop": []},
    {"stop": ["a", "b", "c", "d"]},
    {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]},
    {"tool_choice": "none"},
    {"tool_choice": "auto"},
    {"tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"response_format": {"type": "text"}},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}},
    {"logprobs": True},
    {"logprobs": False},
    {"logprobs": True, "top_logprobs": 0},
    {"logprobs": True, "top_logprobs": 20},
    {"presence_penalty": -2},
    {"presence_penalty": 2.0},
    {"frequency_penalty": 0.5},
    {"logit_bias": {"50256": -100, "13": 100, "7": 0.5}},
    {"logit_bias": {}},
    {"user": "user-1234"},
    {"some_future_field": {"anything": [1, "x"]}},  # unknown fields are forwarded unchecked
]


@pytest.mark.parametrize("fields", GOOD_FIELDS)
def test_valid_fields_pass_through_verbatim_in_params(fields: dict[str, Any]) -> None:
    req = parse_chat(_chat(**fields))
    assert req.params == fields


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        (({"type": "text", "text": 5},), "messages[0].content[0].text"),
        (({"type": "text", "text": None},), "messages[0].content[0].text"),
        (({"type": "text", "text": ["a"]},), "messages[0].content[0].text"),
        (({"type": "text"},), "messages[0].content[0].text"),
        (({"type": "text", "text": "ok"}, {"type": "video", "video": "x"}), "messages[0].content[1].type"),
        (({"text": "no type"},), "messages[0].content[0].type"),
        (({"type": ["text"], "text": "x"},), "messages[0].content[0].type"),
        (("just a string",), "messages[0].content[0]"),
    ],
)
def test_a_bad_content_part_is_rejected_naming_the_part(parts: tuple[Any, ...], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_chat(_parts(*parts))
    assert err.value.param == param


def test_content_parts_of_every_known_type_are_accepted() -> None:
    req = parse_chat(
        _parts(
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA"}},
        )
    )
    assert req.prompt_text() == "look"


def test_an_unhashable_role_is_a_400_not_a_crash() -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_chat(json.dumps({"model": "auto", "messages": [{"role": ["user"], "content": "x"}]}).encode())
    assert err.value.param == "messages[0].role"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": 0}, "'max_tokens' must be an integer >= 1"),
        ({"max_completion_tokens": "8"}, "'max_completion_tokens' must be an integer >= 1"),
        ({"top_logprobs": 30, "logprobs": True}, "'top_logprobs' must be an integer in [0, 20]"),
        ({"temperature": 3}, "'temperature' must be a number in [0, 2]"),
        ({"n": 2}, "'n' must be 1"),
    ],
)
def test_messages_read_as_english(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_chat(_chat(**fields))
    assert str(err.value).startswith(message)
    assert "a integer" not in str(err.value)


def test_nan_is_not_in_any_range() -> None:
    # orjson refuses NaN outright; the stdlib fallback parses it, and NaN compares false with every bound
    from turnout.server import wire

    for name in ("temperature", "top_p", "presence_penalty"):
        with pytest.raises(InvalidRequestError):
            wire.CHECKS[name](name, float("nan"))


def test_feedback_request_id_is_capped() -> None:
    assert parse_feedback(json.dumps({"request_id": "a" * 128, "score": 1}).encode()) == ("a" * 128, 1.0)
    with pytest.raises(InvalidRequestError) as err:
        parse_feedback(json.dumps({"request_id": "a" * 200, "score": 1}).encode())
    assert err.value.param == "request_id" and "x-turnout-request-id" in str(err.value)
