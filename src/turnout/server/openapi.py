"""Hand-written OpenAPI 3 schema matching the validation in :mod:`turnout.server.wire`.

Schemathesis fuzzes the server against this document; keep the two in step.
"""

from __future__ import annotations

from typing import Any

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "developer", "function"]},
        "content": {"type": "string"},
    },
}
_CHAT = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _post(summary: str, schema: dict[str, Any], ok: dict[str, Any], codes: tuple[int, ...]) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                     "responses": {"200": ok, **_errors(*codes)}}}


def _get(summary: str, ctype: str = "application/json", codes: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "ok", "content": {ctype: {"schema": {}}}}, **_errors(*codes)}}}


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``GET /openapi.json``."""
    chat_ok = {"description": "a chat.completion, or an SSE stream of chunks when stream is true",
               "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "turnout", "version": "0.1.0", "description": "OpenAI-compatible routing gateway"},
        "paths": {
            "/v1/chat/completions": _post("chat completion through a route or a model", _CHAT, chat_ok, (400, 401, 403, 404, 413, 429, 502, 503, 504)),
            "/v1/route": _post("dry run: the routing decision, calling no model", _CHAT,
                               {"description": "decision", "content": {"application/json": {"schema": {"type": "object"}}}}, (400, 401, 404, 413)),
            "/v1/feedback": _post("attach a score to a logged request",
                                  {"type": "object", "required": ["request_id", "score"], "properties": {
                                      "request_id": {"type": "string", "minLength": 1}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
                                  {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}}, (400, 413)),
            "/v1/models": _get("routes and models"),
            "/healthz": _get("liveness"),
            "/readyz": _get("readiness", codes=(503,)),
            "/metrics": _get("Prometheus metrics", "text/plain", codes=(404,)),
        },
    }


__all__ = ["openapi_schema"]
