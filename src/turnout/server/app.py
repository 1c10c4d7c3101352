"""Thin ASGI handlers over :class:`~turnout.gateway.Gateway`.

Handlers parse and validate the wire format, call the gateway, and map errors
through the one table in :mod:`turnout.server.errors`. Every response carries
``x-turnout-request-id``, ``x-turnout-route`` and ``x-turnout-model``: errors,
a ``404`` for an unknown path and a ``405`` for a wrong method included, each
an OpenAI-format body ``{"error": {"message", "type", "param", "code"}}``; a bug
(any exception that is not a TurnoutError) is logged with its traceback and
answered ``500`` in the same form, never a bare text page.

``POST /v1/chat/completions``, the hot path, is a raw ASGI endpoint
(:mod:`turnout.server.chat`, which also implements the streaming commit rule);
a small dispatcher sends it there before Starlette sees the request. Every
other route (the dry run, feedback, models, health, metrics, the OpenAPI
document) and the lifespan are Starlette's.

``POST /v1/feedback`` authenticates like a chat request when keys are
configured, and scores only a request in the request log made with the same
key: any other id (unknown, another key's, a completion's ``chatcmpl-`` id,
which turnout does not log) is a ``404``. The gateway stores the score (and
comment) and, when a bandit route decided the request, learns from it
(:mod:`turnout.gateway.feedback`); the answer says whether it did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from turnout.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    MissingDependency,
    NotFoundError,
    PayloadTooLargeError,
    TurnoutError,
    UnknownModelError,
)
from turnout.gateway.keys import shown_name
from turnout.gateway.pipeline import Gateway
from turnout.server.chat import (
    ChatEndpoint,
    Receive,
    Scope,
    Send,
    api_key_of,
    logged_status,
    new_request_id,
    request_metadata,
)
from turnout.server.errors import error_body, status_for
from turnout.server.openapi import openapi_schema
from turnout.server.wire import dumps, parse_chat, parse_feedback_body

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover
    raise MissingDependency("starlette", "server", "turnout serve") from exc

log = logging.getLogger(__name__)

JSON = "application/json"
CHAT_PATH = "/v1/chat/completions"

#: a Starlette handler given the request id its answer carries; it raises TurnoutErrors, :func:`_endpoint` answers them
Handler = Callable[[Request, str], Awaitable[Response]]


def _headers(rid: str, route: str = "-", model: str = "-") -> dict[str, str]:
    return {"x-turnout-request-id": rid, "x-turnout-route": route, "x-turnout-model": model}


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(dumps(body), status_code=status, media_type=JSON, headers=headers)


def _error(exc: BaseException, rid: str, route: str = "-", model: str = "-") -> Response:
    headers = _headers(rid, route, model)
    if isinstance(exc, MethodNotAllowedError) and exc.allow:
        headers["allow"] = exc.allow
    return _json(error_body(exc), status_for(exc), headers)


def _api_key(request: Request) -> str | None:
    return api_key_of(request.scope["headers"])


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of ``handler``: a TurnoutError answered through the table, a bug as an OpenAI 500."""

    async def endpoint(request: Request) -> Response:
        rid = new_request_id()
        try:
            return await handler(request, rid)
        except TurnoutError as exc:
            return _error(exc, rid)
        except ClientDisconnect:  # nobody reads this answer; not a bug worth a traceback
            return _error(InvalidRequestError("the client disconnected before sending the whole body"), rid)
        except Exception as exc:
            log.exception("internal error answering request %s (%s %s)", rid, request.method, request.url.path)
            return _error(exc, rid)

    return endpoint


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


def create_app(
    gateway: Gateway,
    *,
    max_body_bytes: int = 1_048_576,
    start_children: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TurnoutApp:
    """The ASGI app. The lifespan starts the gateway's children and closes the gateway on shutdown.

    ``progress`` is told of each start-up step (``turnout serve`` prints them); a step that fails is reported
    in one line there before the server gives up.
    """
    gateway.status_for = logged_status  # logged rows carry the status the client received

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

    async def route(request: Request, rid: str) -> Response:
        req = parse_chat(await read_body(request))
        spec = None
        if gateway.keys is not None:
            spec = gateway.keys.authenticate(_api_key(request))
            gateway.keys.authorize(spec, req.model)
        t0 = time.perf_counter()
        decision = await gateway.route(req, key=spec, headers=request_metadata(request.scope["headers"]))
        body = decision.to_dict()
        body["decision_ms_wall"] = (time.perf_counter() - t0) * 1000.0
        return _json(body, 200, _headers(rid, decision.route, decision.model))

    async def feedback(request: Request, rid: str) -> Response:
        fb = parse_feedback_body(await read_body(request))
        # the same checks, in the same order, as a chat request: the body, then the key; the gateway then finds
        # the key's own logged request (404 otherwise), stores the score and lets a learning route learn from it
        spec = gateway.keys.authenticate(_api_key(request)) if gateway.keys is not None else None
        result = await gateway.feedback(fb.request_id, fb.score, fb.comment, key=spec)
        return _json(result.to_dict(), 200, _headers(rid))

    def listed(request: Request) -> list[dict[str, Any]]:
        # with keys configured, the fleet (models, backends, prices) is shown only to a key, and only what it may use
        spec = gateway.keys.authenticate(_api_key(request)) if gateway.keys is not None else None
        return gateway.models(spec)

    async def models(request: Request, rid: str) -> Response:
        return _json({"object": "list", "data": listed(request)}, 200, _headers(rid))

    async def model(request: Request, rid: str) -> Response:
        name = request.path_params["model_id"]
        items = listed(request)
        for item in items:
            if item["id"] == name:
                return _json(item, 200, _headers(rid))
        raise UnknownModelError(
            f"no route or model named {shown_name(name)!r}; available: {', '.join(i['id'] for i in items)}", param="model"
        )

    async def healthz(request: Request, rid: str) -> Response:
        return _json({"status": "ok"}, 200, _headers(rid))

    async def readyz(request: Request, rid: str) -> Response:
        ok = gateway.ready
        body: dict[str, Any] = {"ready": ok}
        if gateway.unreachable:  # ready all the same: those models fail over until their backend answers
            body["unreachable_backends"] = dict(gateway.unreachable)
        return _json(body, 200 if ok else 503, _headers(rid))

    async def metrics(request: Request, rid: str) -> Response:
        if gateway.metrics is None:
            raise NotFoundError("metrics are off (server.metrics: false); set server.metrics: true to serve them")
        data, ctype = gateway.metrics.render()
        return Response(data, media_type=ctype, headers=_headers(rid))

    schema = dumps(openapi_schema())

    async def openapi(request: Request, rid: str) -> Response:
        return Response(schema, media_type=JSON, headers=_headers(rid))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start_children:
            try:
                await gateway.start(progress)
            except TurnoutError as exc:
                if progress is not None:
                    progress("start-up failed: " + " ".join(str(exc).split())[:300])
                await gateway.aclose()
                raise
        else:
            gateway.ready = True
        try:
            yield
        finally:
            await gateway.aclose()

    chat = ChatEndpoint(gateway, max_body_bytes=max_body_bytes)
    routes = [
        # the dispatcher answers POSTs before Starlette sees them; this route keeps 405 for other methods
        Route(CHAT_PATH, chat, methods=["POST"]),
        Route("/v1/route", _endpoint(route), methods=["POST"]),
        Route("/v1/feedback", _endpoint(feedback), methods=["POST"]),
        Route("/v1/models", _endpoint(models), methods=["GET"]),
        # model ids may hold slashes (org/model), as in OpenAI's own
        Route("/v1/models/{model_id:path}", _endpoint(model), methods=["GET"]),
        Route("/healthz", _endpoint(healthz), methods=["GET"]),
        Route("/readyz", _endpoint(readyz), methods=["GET"]),
        Route("/metrics", _endpoint(metrics), methods=["GET"]),
        Route("/openapi.json", _endpoint(openapi), methods=["GET"]),
    ]
    served = ", ".join(f"{m} {r.path.replace(':path', '')}" for r in routes for m in sorted((r.methods or set()) - {"HEAD"}))

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's router raises these for a path no route matches and for a method a route does not take
        assert isinstance(exc, HTTPException)
        err: TurnoutError
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = MethodNotAllowedError(f"{where} is not allowed: this endpoint takes {allow}", allow=allow)
        elif exc.status_code == 404:
            err = NotFoundError(f"no endpoint {where}; turnout serves {served}")
        else:  # pragma: no cover - no route of ours makes Starlette raise anything else
            err = InvalidRequestError(f"{where}: {exc.detail}")
        return _error(err, new_request_id())

    async def internal_error(request: Request, exc: Exception) -> Response:
        # the last resort behind _endpoint (a bug in Starlette's own machinery): Starlette re-raises the error
        # after this answer, so the server logs its traceback
        return _error(exc, new_request_id())

    starlette = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: internal_error}
    )
    return TurnoutApp(chat, starlette)


__all__ = ["TurnoutApp", "create_app"]
