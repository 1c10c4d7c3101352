"""The OpenAI wire schema: validate request bodies into turnout types.

Hand-written checks rather than a pydantic model: the hot path validates the
fields a request carries and passes every field through untouched in
``ChatRequest.params``. A typed OpenAI field with a wrong type or value is a
400 naming its ``param`` here, before anything is routed or sent upstream (an
upstream would otherwise reject it after a model was chosen, or, worse,
ignore it); fields turnout does not know are forwarded unchecked.
``turnout.server.openapi`` describes the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turnout.errors import InvalidRequestError
from turnout.fastjson import DecodeError, dumps, loads
from turnout.types import ChatRequest

#: the deepest JSON nesting a body may have: what is parsed must also be writable upstream (orjson writes at most
#: 255 levels), with room for the few levels the gateway wraps it in
MAX_JSON_DEPTH = 128

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
#: content part types of the chat API (``refusal`` only in assistant turns); the backends translate these
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
#: the longest request id feedback accepts (turnout's own are 32 hex characters)
MAX_REQUEST_ID = 128
_INT64 = 2**63

#: a check raises InvalidRequestError for a bad value of the field it is registered under (None is never checked)
Check = Callable[[str, Any], None]


def _show(value: Any) -> str:
    """``repr(value)``, cut short: an error message must not echo a whole payload back."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ranged(lo: float, hi: float | None, *, integer: bool = False) -> Check:
    """A number (an integer if ``integer``) in ``[lo, hi]`` (``>= lo`` when ``hi`` is None)."""
    is_ok = _is_int if integer else _is_number
    what = ("an integer" if integer else "a number") + (f" in [{lo:g}, {hi:g}]" if hi is not None else f" >= {lo:g}")

    def check(name: str, v: Any) -> None:
        if not is_ok(v) or not lo <= v or (hi is not None and not v <= hi):  # written so that NaN fails too
            raise InvalidRequestError(f"'{name}' must be {what}, got {_show(v)}", param=name)

    return check


def _typed(kind: type, what: str) -> Check:
    def check(name: str, v: Any) -> None:
        if not isinstance(v, kind):
            raise InvalidRequestError(f"'{name}' must be {what}, got {_show(v)}", param=name)

    return check


def _n(name: str, v: Any) -> None:
    if not _is_int(v) or v != 1:
        raise InvalidRequestError(f"'n' must be 1 (turnout answers with one choice), got {_show(v)}", param=name)


def _seed(name: str, v: Any) -> None:
    if not _is_int(v) or not -_INT64 <= v < _INT64:
        raise InvalidRequestError(f"'seed' must be an integer (64-bit), got {_show(v)}", param=name)


def _stop(name: str, v: Any) -> None:
    if isinstance(v, str) or (isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)):
        return
    raise InvalidRequestError(f"'stop' must be a string or an array of up to 4 strings, got {_show(v)}", param=name)


def _stream_options(name: str, v: Any) -> None:
    if not isinstance(v, dict) or not isinstance(v.get("include_usage", False), bool):
        raise InvalidRequestError("'stream_options' must be an object like {\"include_usage\": true}", param=name)


def _named(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("name"), str) and bool(obj["name"])


def _tools(name: str, v: Any) -> None:
    if not isinstance(v, list):
        raise InvalidRequestError('\'tools\' must be an array of {"type": "function", "function": {"name": ...}}', param=name)
    for i, tool in enumerate(v):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        if tool.get("type") != "function":
            raise InvalidRequestError(f"{where}.type must be 'function', got {_show(tool.get('type'))}", param=f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequestError(f"{where}.function must be an object with a 'name'", param=f"{where}.function")
        if not _named(fn):
            raise InvalidRequestError(f"{where}.function.name must be a non-empty string", param=f"{where}.function.name")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise InvalidRequestError(
                f"{where}.function.parameters must be a JSON Schema object", param=f"{where}.function.parameters"
            )


def _tool_choice(name: str, v: Any) -> None:
    if isinstance(v, str) and v in TOOL_CHOICES:
        return
    if isinstance(v, dict) and v.get("type") == "function" and _named(v.get("function")):
        return
    raise InvalidRequestError(
        "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}, "
        f"got {_show(v)}",
        param=name,
    )


def _response_format(name: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise InvalidRequestError('\'response_format\' must be an object like {"type": "json_object"}', param=name)
    kind = v.get("type")
    if not isinstance(kind, str) or kind not in RESPONSE_FORMATS:
        raise InvalidRequestError(
            f"'response_format.type' must be one of {', '.join(RESPONSE_FORMATS)}, got {_show(kind)}", param=f"{name}.type"
        )
    if kind == "json_schema" and not _named(v.get("json_schema")):
        raise InvalidRequestError(
            "'response_format.json_schema' must be an object with a 'name' (and its 'schema')", param=f"{name}.json_schema"
        )


def _logit_bias(name: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise InvalidRequestError("'logit_bias' must be an object mapping token ids to numbers in [-100, 100]", param=name)
    for token, bias in v.items():
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise InvalidRequestError(
                f"'logit_bias' of token {_show(token)} must be a number in [-100, 100], got {_show(bias)}", param=name
            )


#: the typed optional fields, checked when a request carries them
CHECKS: dict[str, Check] = {
    "temperature": _ranged(0.0, 2.0),
    "top_p": _ranged(0.0, 1.0),
    "max_tokens": _ranged(1, None, integer=True),
    "max_completion_tokens": _ranged(1, None, integer=True),
    "n": _n,
    "presence_penalty": _ranged(-2.0, 2.0),
    "frequency_penalty": _ranged(-2.0, 2.0),
    "seed": _seed,
    "stop": _stop,
    "stream_options": _stream_options,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "logprobs": _typed(bool, "a boolean"),
    "top_logprobs": _ranged(0, 20, integer=True),
    "logit_bias": _logit_bias,
    "user": _typed(str, "a string"),
}


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequestError (malformed, not an object, or nested too deep)."""
    try:
        data = loads(body)
    except (DecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"request body must be a JSON object, got {type(data).__name__}")
    depth = json_depth(data, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        # parsed fine, but it could not be written to a backend (orjson stops at 255 levels): refuse it now
        raise InvalidRequestError(
            f"request body is nested more than {MAX_JSON_DEPTH} levels deep; no OpenAI field needs that (flatten the structure)"
        )
    return data


def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of a parsed JSON value (a scalar is 0), counted up to ``limit + 1`` at most.

    Iterative, so a hostile document cannot exhaust the Python stack; stops as soon as the limit is passed.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children if isinstance(child, (dict, list)))
    return deepest


def _check_parts(i: int, content: list[Any]) -> None:
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequestError(f'{where} must be an object like {{"type": "text", "text": ...}}', param=where)
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in PART_TYPES:
            raise InvalidRequestError(
                f"{where}.type must be one of {', '.join(PART_TYPES)}, got {_show(kind)}", param=f"{where}.type"
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"{where}.text must be a string, got {_show(part.get('text'))}", param=f"{where}.text")


def parse_chat(body: bytes) -> ChatRequest:
    """Validate an OpenAI chat-completions body; every other field goes to ``params`` verbatim."""
    data = parse_json(body)
    model = data.pop("model", None)
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required: a route (e.g. 'auto') or a model name", param="model")
    messages = data.pop("messages", None)
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array of {role, content}", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {sorted(ROLES)}, got {_show(role)}", param=f"messages[{i}].role"
            )
        content = m.get("content")
        if isinstance(content, str):
            pass
        elif isinstance(content, list):
            _check_parts(i, content)
        elif content is None:
            if role != "assistant":
                raise InvalidRequestError(f"messages[{i}].content is required", param=f"messages[{i}].content")
        else:
            raise InvalidRequestError(
                f"messages[{i}].content must be a string or an array of parts", param=f"messages[{i}].content"
            )
    stream = data.pop("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", param="stream")
    for name, value in data.items():  # a request carries few fields: look each up, rather than every check
        check = CHECKS.get(name)
        if check is not None and value is not None:
            check(name, value)
    if data.get("top_logprobs") is not None and data.get("logprobs") is not True:
        raise InvalidRequestError("'top_logprobs' needs \"logprobs\": true", param="top_logprobs")
    return ChatRequest(model=model, messages=messages, stream=stream, params=data)


#: the longest feedback comment kept (longer ones are refused, not cut: the client should know)
MAX_COMMENT_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Feedback:
    """A validated ``POST /v1/feedback`` body."""

    request_id: str
    score: float
    comment: str | None = None


def parse_feedback(body: bytes) -> tuple[str, float]:
    """``(request_id, score)`` of a feedback body (see :func:`parse_feedback_body`)."""
    fb = parse_feedback_body(body)
    return fb.request_id, fb.score


def parse_feedback_body(body: bytes) -> Feedback:
    """``{"request_id": str, "score": number in [0, 1], "comment"?: str}``."""
    data = parse_json(body)
    rid, score, comment = data.get("request_id"), data.get("score"), data.get("comment")
    if not isinstance(rid, str) or not rid:
        raise InvalidRequestError("'request_id' is required (the x-turnout-request-id header of an answer)", param="request_id")
    if len(rid) > MAX_REQUEST_ID:
        raise InvalidRequestError(
            f"'request_id' is {len(rid)} characters; a request id has at most {MAX_REQUEST_ID} "
            "(send the x-turnout-request-id header of an answer)",
            param="request_id",
        )
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise InvalidRequestError("'score' must be a number in [0, 1]", param="score")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise InvalidRequestError(f"'comment' must be a string of at most {MAX_COMMENT_CHARS} characters", param="comment")
    return Feedback(rid, float(score), comment)


__all__ = [
    "CHECKS",
    "MAX_COMMENT_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_REQUEST_ID",
    "PART_TYPES",
    "RESPONSE_FORMATS",
    "ROLES",
    "TOOL_CHOICES",
    "Feedback",
    "dumps",
    "json_depth",
    "loads",
    "parse_chat",
    "parse_feedback",
    "parse_feedback_body",
    "parse_json",
]
