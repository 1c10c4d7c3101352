"""Hand-written OpenAPI 3 schema matching the validation in :mod:`turnout.server.wire`.

Schemathesis fuzzes the server against this document; keep the two in step.
"""

from __future__ import annotations

from typing import Any

from turnout.server.wire import MAX_REQUEST_ID, PART_TYPES, RESPONSE_FORMATS, ROLES, TOOL_CHOICES

_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": list(PART_TYPES)},
        "text": {"type": "string"},
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _PART}]},
    },
}
_FUNCTION_NAME: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}},
}
_TOOL = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "function": {**_FUNCTION_NAME, "properties": {**_FUNCTION_NAME["properties"], "parameters": {"type": "object"}}},
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
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": {
            "oneOf": [
                {"type": "string", "enum": list(TOOL_CHOICES)},
                {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {"type": {"type": "string", "enum": ["function"]}, "function": _FUNCTION_NAME},
                },
            ]
        },
        "response_format": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string", "enum": list(RESPONSE_FORMATS)}, "json_schema": _FUNCTION_NAME},
        },
        "logprobs": {"type": "boolean"},
        # only with "logprobs": true
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "logit_bias": {"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
        "user": {"type": "string"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _post(summary: str, schema: dict[str, Any], ok: dict[str, Any], codes: tuple[int, ...]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": ok, **_errors(*codes)},
        }
    }


def _get(summary: str, ctype: str = "application/json", codes: tuple[int, ...] = ()) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "ok", "content": {ctype: {"schema": {}}}}, **_errors(*codes)},
        }
    }


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``GET /openapi.json``."""
    chat_ok = {
        "description": "a chat.completion, or an SSE stream of chunks when stream is true",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "turnout", "version": "0.1.0", "description": "OpenAI-compatible routing gateway"},
        "paths": {
            "/v1/chat/completions": _post(
                "chat completion through a route or a model", _CHAT, chat_ok, (400, 401, 403, 404, 413, 429, 502, 503, 504)
            ),
            "/v1/route": _post(
                "dry run: the routing decision, calling no model",
                _CHAT,
                {"description": "decision", "content": {"application/json": {"schema": {"type": "object"}}}},
                (400, 401, 404, 413),
            ),
            "/v1/feedback": _post(
                "attach a score to a logged request",
                {
                    "type": "object",
                    "required": ["request_id", "score"],
                    "properties": {
                        "request_id": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
                {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}},
                (400, 401, 404, 413),
            ),
            "/v1/models": _get("routes and models"),
            "/v1/models/{model_id}": {
                "get": {
                    **_get("one route or model", codes=(404,))["get"],
                    "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                }
            },
            "/healthz": _get("liveness"),
            "/readyz": _get("readiness", codes=(503,)),
            "/metrics": _get("Prometheus metrics", "text/plain", codes=(404,)),
        },
    }


__all__ = ["openapi_schema"]
