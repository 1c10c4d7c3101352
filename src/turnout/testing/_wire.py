"""What the scripted provider says on the wire: OpenAI and Anthropic bodies, stream events and errors.

Shared by both faces of :mod:`turnout.testing.scripted` (the in-process
backend builds the same bodies the wire server sends) and by
:mod:`turnout.testing.hostile`, and kept apart so that the fakes' behaviour
(scripts, faults, timing) reads on its own. It imports the script model
(:mod:`turnout.testing._script`), which imports nothing of the fakes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from turnout.testing._script import Step
from turnout.types import Usage


def chat_body(text: str, model: str, usage: Usage, tool_calls: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in tool_calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": usage.to_dict(),
    }


def pieces(arguments: str) -> list[str]:
    # providers stream a call's arguments in fragments that are not valid JSON on their own
    third = max(1, len(arguments) // 3)
    return [arguments[i : i + third] for i in range(0, len(arguments), third)] or [""]


def tool_call_deltas(calls: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """OpenAI stream deltas for ``calls``: id and name first, then the arguments in pieces."""
    out: list[dict[str, Any]] = []
    for i, c in enumerate(calls):
        call = {"index": i, "id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": ""}}
        out.append({"tool_calls": [call]})
        out += [{"tool_calls": [{"index": i, "function": {"arguments": piece}}]} for piece in pieces(c["arguments"])]
    return out


def delta_body(cid: str, model: str, delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def chunk_body(cid: str, model: str, text: str, finish: str | None, *, first: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": text}
    if first:
        delta["role"] = "assistant"
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta if not finish else {}, "finish_reason": finish}],
    }


def openai_error(status: int) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    return {"error": {"message": f"scripted {status} failure", "type": kind, "param": None, "code": status}}


def anthropic_error(status: int) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error", 529: "overloaded_error"}.get(
        status, "api_error"
    )
    return {"type": "error", "error": {"type": kind, "message": f"scripted {status} failure"}}


REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


def openai_events(
    step: Step, tokens: list[str], model: str, usage: Usage, cut: bool, body: dict[str, Any], *, completions: bool
) -> Any:
    cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())

    def chunk(text: str, finish: str | None, first: bool = False) -> str:
        if completions:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            }
        else:
            obj = chunk_body(cid, model, text, finish, first=first)
        return f"data: {json.dumps(obj)}\n\n"

    yield ": scripted keep-alive comment\n\n"
    for i, tok in enumerate(tokens):
        if i:
            yield None
        yield chunk(tok, None, first=i == 0)
    if cut:
        return
    if not completions:
        for delta in tool_call_deltas(step.tool_calls):
            yield f"data: {json.dumps(delta_body(cid, model, delta))}\n\n"
    yield chunk("", step.finish)
    if step.stream_usage and (body.get("stream_options") or {}).get("include_usage"):
        last = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage.to_dict(),
        }
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"


def anthropic_body(text: str, model: str, usage: Usage, tool_calls: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not tool_calls else []
    content += [
        {"type": "tool_use", "id": c["id"], "name": c["name"], "input": json.loads(c["arguments"] or "{}")} for c in tool_calls
    ]
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    }


def anthropic_events(step: Step, tokens: list[str], model: str, usage: Usage, cut: bool) -> Any:
    def ev(name: str, obj: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(obj)}\n\n"

    msg = anthropic_body("", model, Usage(usage.prompt_tokens, 1))
    msg["content"] = []
    msg["stop_reason"] = None
    yield ev("message_start", {"type": "message_start", "message": msg})
    yield ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    yield ev("ping", {"type": "ping"})
    for i, tok in enumerate(tokens):
        if i:
            yield None
        yield ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}})
    if cut:
        return
    yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    for i, c in enumerate(step.tool_calls, start=1):
        yield ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": i,
                "content_block": {"type": "tool_use", "id": c["id"], "name": c["name"], "input": {}},
            },
        )
        for piece in pieces(c["arguments"]):
            yield None
            yield ev(
                "content_block_delta",
                {"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": piece}},
            )
        yield ev("content_block_stop", {"type": "content_block_stop", "index": i})
    stop = "tool_use" if step.tool_calls else "end_turn"
    yield ev(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage.completion_tokens},
        },
    )
    yield ev("message_stop", {"type": "message_stop"})


__all__ = [
    "REASONS",
    "anthropic_body",
    "anthropic_error",
    "anthropic_events",
    "chat_body",
    "chunk_body",
    "delta_body",
    "openai_error",
    "openai_events",
    "pieces",
    "tool_call_deltas",
]
