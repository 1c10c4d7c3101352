"""Thin ASGI handlers over :class:`~turnout.gateway.Gateway` (Starlette).

Handlers parse and validate the wire format, call the gateway, and map errors
through the one table in :mod:`turnout.server.errors`. Every response carries
``x-turnout-request-id``, ``x-turnout-route`` and ``x-turnout-model``.
Streaming follows the gateway's commit rule: failures before the first chunk
become an ordinary JSON error (after transparent fallbacks); failures after it
end the SSE stream with an OpenAI error event and ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from turnout.errors import InvalidRequestError, MissingDependency, PayloadTooLargeError, TurnoutError, UnknownModelError
from turnout.gateway.pipeline import Gateway, StreamSession
from turnout.server.errors import error_body, status_for
from turnout.server.openapi import openapi_schema
from turnout.server.wire import dumps, parse_chat, parse_feedback

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover
    raise MissingDependency("starlette", "server", "turnout serve") from exc

JSON = "application/json"


def _headers(rid: str, route: str = "-", model: str = "-") -> dict[str, str]:
    return {"x-turnout-request-id": rid, "x-turnout-route": route, "x-turnout-model": model}


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(dumps(body), status_code=status, media_type=JSON, headers=headers)


def _error(exc: BaseException, rid: str, route: str = "-", model: str = "-") -> Response:
    return _json(error_body(exc), status_for(exc), _headers(rid, route, model))


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def create_app(gateway: Gateway, *, max_body_bytes: int = 1_048_576, start_children: bool = True) -> Starlette:
    """The ASGI app. The lifespan starts the gateway's children and closes the gateway on shutdown."""
    gateway.status_for = status_for

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {max_body_bytes} (server.max_body_bytes)")
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > max_body_bytes:
                raise PayloadTooLargeError(f"request body exceeds the limit of {max_body_bytes} bytes (server.max_body_bytes)")
            chunks.append(part)
        return b"".join(chunks)

    async def chat(request: Request) -> Response:
        rid = uuid.uuid4().hex
        try:
            req = parse_chat(await read_body(request))
        except TurnoutError as exc:
            await gateway.record_rejected(rid, exc)
            return _error(exc, rid)
        key = _api_key(request)
        if not req.stream:
            try:
                resp, decision, attempts = await gateway.chat(req, api_key=key, request_id=rid)
            except TurnoutError as exc:
                return _error(exc, rid, route=_route_label(gateway, req.model))
            # the model that answered: the last attempt (the chosen one, or a fallback)
            return _json(resp.body, 200, _headers(rid, decision.route, attempts[-1].model))
        try:
            session = await gateway.chat_stream(req, api_key=key, request_id=rid)
        except TurnoutError as exc:
            return _error(exc, rid, route=_route_label(gateway, req.model))
        include_usage = bool((req.params.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _sse(session, include_usage), media_type="text/event-stream",
            headers={**_headers(rid, session.decision.route, session.model), "cache-control": "no-cache"},
        )

    async def route(request: Request) -> Response:
        rid = uuid.uuid4().hex
        try:
            req = parse_chat(await read_body(request))
            if gateway.keys is not None:
                spec = gateway.keys.authenticate(_api_key(request))
                gateway.keys.authorize(spec, req.model)
            t0 = time.perf_counter()
            decision = await gateway.route(req)
        except TurnoutError as exc:
            return _error(exc, rid)
        body = decision.to_dict()
        body["decision_ms_wall"] = (time.perf_counter() - t0) * 1000.0
        return _json(body, 200, _headers(rid, decision.route, decision.model))

    async def feedback(request: Request) -> Response:
        rid = uuid.uuid4().hex
        try:
            request_id, score = parse_feedback(await read_body(request))
            if gateway.request_log is None:
                raise InvalidRequestError("the request log is off (server.request_log: null); feedback cannot be stored")
            gateway.request_log.set_feedback(request_id, score)
        except TurnoutError as exc:
            return _error(exc, rid)
        return _json({"request_id": request_id, "score": score, "stored": True}, 200, _headers(rid))

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": gateway.models()}, 200, _headers(uuid.uuid4().hex))

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"}, 200, _headers(uuid.uuid4().hex))

    async def readyz(request: Request) -> Response:
        ok = gateway.ready
        return _json({"ready": ok}, 200 if ok else 503, _headers(uuid.uuid4().hex))

    async def metrics(request: Request) -> Response:
        rid = uuid.uuid4().hex
        if gateway.metrics is None:
            return _error(UnknownModelError("metrics are off (server.metrics: false)"), rid)
        data, ctype = gateway.metrics.render()
        return Response(data, media_type=ctype, headers=_headers(rid))

    schema = dumps(openapi_schema())

    async def openapi(request: Request) -> Response:
        return Response(schema, media_type=JSON, headers=_headers(uuid.uuid4().hex))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start_children:
            await gateway.start()
        else:
            gateway.ready = True
        try:
            yield
        finally:
            await gateway.aclose()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/route", route, methods=["POST"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _route_label(gateway: Gateway, model: str) -> str:
    return model if model in gateway.routes else ("passthrough" if model in gateway.targets else "-")


async def _sse(session: StreamSession, include_usage: bool) -> AsyncIterator[bytes]:
    sent_usage = False
    try:
        async for chunk in session:
            if chunk.usage is not None and not chunk.body.get("choices"):
                # a usage-only chunk: the client gets it only if it asked (stream_options.include_usage)
                if not include_usage:
                    continue
                sent_usage = True
            yield b"data: " + dumps(chunk.body) + b"\n\n"
        if include_usage and not sent_usage and session.usage is not None:
            yield b"data: " + dumps({"id": session.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                                     "model": session.model, "choices": [], "usage": session.usage.to_dict()}) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except TurnoutError as exc:
        # committed stream failed mid-way: say so in-band, never truncate silently
        yield b"data: " + dumps(error_body(exc)) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await session.aclose()


__all__ = ["create_app"]
