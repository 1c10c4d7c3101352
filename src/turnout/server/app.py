"""Thin ASGI handlers over :class:`~turnout.gateway.Gateway`.

Handlers parse and validate the wire format, call the gateway, and map errors
through the one table in :mod:`turnout.server.errors`. Every response carries
``x-turnout-request-id``, ``x-turnout-route`` and ``x-turnout-model``.

``POST /v1/chat/completions``, the hot path, is a raw ASGI endpoint
(:mod:`turnout.server.chat`, which also implements the streaming commit rule);
a small dispatcher sends it there before Starlette sees the request. Every
other route (the dry run, feedback, models, health, metrics, the OpenAPI
document) and the lifespan are Starlette's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from turnout.errors import InvalidRequestError, MissingDependency, PayloadTooLargeError, TurnoutError, UnknownModelError
from turnout.gateway.pipeline import Gateway
from turnout.server.chat import ChatEndpoint, Receive, Scope, Send, api_key_of, new_request_id
from turnout.server.errors import error_body, status_for
from turnout.server.openapi import openapi_schema
from turnout.server.wire import dumps, parse_chat, parse_feedback

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover
    raise MissingDependency("starlette", "server", "turnout serve") from exc

JSON = "application/json"
CHAT_PATH = "/v1/chat/completions"


def _headers(rid: str, route: str = "-", model: str = "-") -> dict[str, str]:
    return {"x-turnout-request-id": rid, "x-turnout-route": route, "x-turnout-model": model}


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(dumps(body), status_code=status, media_type=JSON, headers=headers)


def _error(exc: BaseException, rid: str, route: str = "-", model: str = "-") -> Response:
    return _json(error_body(exc), status_for(exc), _headers(rid, route, model))


def _api_key(request: Request) -> str | None:
    return api_key_of(request.scope["headers"])


class TurnoutApp:
    """The ASGI app: ``POST /v1/chat/completions`` to :class:`ChatEndpoint`, everything else to Starlette.

    The dispatch is only a shortcut: Starlette routes the chat path to the same
    endpoint, so behaviour is the same with or without it. ``starlette`` is the
    framework app (routes and lifespan), for whoever needs it.
    """

    def __init__(self, chat: ChatEndpoint, starlette: Starlette) -> None:
        self.chat = chat
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH and scope["method"] == "POST":
            await self.chat(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)


def create_app(gateway: Gateway, *, max_body_bytes: int = 1_048_576, start_children: bool = True) -> TurnoutApp:
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

    async def route(request: Request) -> Response:
        rid = new_request_id()
        try:
            req = parse_chat(await read_body(request))
            spec = None
            if gateway.keys is not None:
                spec = gateway.keys.authenticate(_api_key(request))
                gateway.keys.authorize(spec, req.model)
            t0 = time.perf_counter()
            decision = await gateway.route(req, key=spec)
        except TurnoutError as exc:
            return _error(exc, rid)
        body = decision.to_dict()
        body["decision_ms_wall"] = (time.perf_counter() - t0) * 1000.0
        return _json(body, 200, _headers(rid, decision.route, decision.model))

    async def feedback(request: Request) -> Response:
        rid = new_request_id()
        try:
            request_id, score = parse_feedback(await read_body(request))
            if gateway.request_log is None:
                raise InvalidRequestError("the request log is off (server.request_log: null); feedback cannot be stored")
            gateway.request_log.set_feedback(request_id, score)
        except TurnoutError as exc:
            return _error(exc, rid)
        return _json({"request_id": request_id, "score": score, "stored": True}, 200, _headers(rid))

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": gateway.models()}, 200, _headers(new_request_id()))

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"}, 200, _headers(new_request_id()))

    async def readyz(request: Request) -> Response:
        ok = gateway.ready
        return _json({"ready": ok}, 200 if ok else 503, _headers(new_request_id()))

    async def metrics(request: Request) -> Response:
        rid = new_request_id()
        if gateway.metrics is None:
            return _error(UnknownModelError("metrics are off (server.metrics: false)"), rid)
        data, ctype = gateway.metrics.render()
        return Response(data, media_type=ctype, headers=_headers(rid))

    schema = dumps(openapi_schema())

    async def openapi(request: Request) -> Response:
        return Response(schema, media_type=JSON, headers=_headers(new_request_id()))

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

    chat = ChatEndpoint(gateway, max_body_bytes=max_body_bytes)
    starlette = Starlette(
        routes=[
            # the dispatcher answers POSTs before Starlette sees them; this route keeps 405 for other methods
            Route(CHAT_PATH, chat, methods=["POST"]),
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
    return TurnoutApp(chat, starlette)


__all__ = ["TurnoutApp", "create_app"]
