"""The OpenAI wire schema: validate request bodies into turnout types.

Hand-written checks rather than a pydantic model: the hot path validates a
few fields and passes every other field through untouched in
``ChatRequest.params``. ``turnout.server.openapi`` describes the same rules.
"""

from __future__ import annotations

import json
from typing import Any

from turnout.errors import InvalidRequestError
from turnout.types import ChatRequest

try:  # orjson is about 3x faster on the bodies we parse and write; optional (the 'server' extra)
    import orjson

    def loads(data: bytes) -> Any:
        return orjson.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _DecodeError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised when orjson is absent

    def loads(data: bytes) -> Any:
        return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _DecodeError = ValueError

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
#: typed optional fields: name -> (accepted types, min, max)
_NUMERIC: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "temperature": ((int, float), 0.0, 2.0),
    "top_p": ((int, float), 0.0, 1.0),
    "max_tokens": ((int,), 1, None),
    "max_completion_tokens": ((int,), 1, None),
    "n": ((int,), 1, 1),
}


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequestError."""
    try:
        data = loads(body)
    except (_DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def parse_chat(body: bytes) -> ChatRequest:
    """Validate an OpenAI chat-completions body; unknown fields go to ``params`` verbatim."""
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
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}", param=f"messages[{i}].role")
        content = m.get("content")
        if content is None and role != "assistant":
            raise InvalidRequestError(f"messages[{i}].content is required", param=f"messages[{i}].content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(f"messages[{i}].content must be a string or an array of parts", param=f"messages[{i}].content")
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise InvalidRequestError(f"messages[{i}].content parts must be objects", param=f"messages[{i}].content")
    stream = data.pop("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", param="stream")
    so = data.get("stream_options")
    if so is not None and (not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool)):
        raise InvalidRequestError("'stream_options' must be an object like {\"include_usage\": true}", param="stream_options")
    for name, (types_, lo, hi) in _NUMERIC.items():
        v = data.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, types_) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if hi is not None else f" >= {lo}"
            raise InvalidRequestError(f"'{name}' must be a {'integer' if types_ == (int,) else 'number'}{rng}", param=name)
    return ChatRequest(model=model, messages=messages, stream=stream, params=data)


def parse_feedback(body: bytes) -> tuple[str, float]:
    """``{"request_id": str, "score": number in [0, 1]}``."""
    data = parse_json(body)
    rid, score = data.get("request_id"), data.get("score")
    if not isinstance(rid, str) or not rid:
        raise InvalidRequestError("'request_id' is required (the x-turnout-request-id of an answer)", param="request_id")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise InvalidRequestError("'score' must be a number in [0, 1]", param="score")
    return rid, float(score)


__all__ = ["dumps", "loads", "parse_chat", "parse_feedback", "parse_json"]
