"""``POST /v1/chat/completions`` as a raw ASGI endpoint: the one hot path, without a framework.

Why not a Starlette route like the others: Starlette's request and response
objects, its exception middlewares and its router cost about 80 µs per
request (profiled with py-spy at concurrency 1), a tenth of the gateway's
whole added-latency budget of 1 ms. This endpoint reads ``scope``/``receive``
and calls ``send`` directly and keeps everything the Starlette handler did:

* OpenAI-format error bodies with the status from the one table in
  :mod:`turnout.server.errors`, ``413`` before parsing a body that is too large;
* the ``x-turnout-request-id``, ``x-turnout-route`` and ``x-turnout-model``
  headers on every answer, errors included;
* the streaming commit rule (the gateway returns a stream only once a model
  has produced its first chunk; a later failure ends the SSE stream with an
  OpenAI error event and ``data: [DONE]``);
* usage in a stream as OpenAI sends it: only when the client asked
  (``stream_options.include_usage``), once, in a last chunk of its own with
  ``choices: []`` and the id of the other chunks;
* the request log's ``http_status`` is the status the client received
  (:func:`logged_status`): ``200`` for a stream that failed or was left after
  its first chunk, none for a client that hung up before anything was sent;
* a client that disconnects cancels the upstream request, mid-stream or while
  waiting for a whole (non-streamed) answer: the endpoint listens for
  ``http.disconnect`` meanwhile, because uvicorn (ASGI spec 2.3) silently
  drops writes to a closed connection instead of raising, and a non-streamed
  request would otherwise run to its end (and on to fallbacks) for nobody;
* a bug (any exception that is not a TurnoutError) is logged with its
  traceback and answered ``500`` in OpenAI form, never a bare text page.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from turnout.errors import PayloadTooLargeError, TurnoutError
from turnout.gateway.context import RequestContext
from turnout.gateway.pipeline import Gateway, StreamSession
from turnout.server.errors import error_body, error_headers, status_for
from turnout.server.wire import dumps, parse_chat
from turnout.types import ChatRequest, ChatResponse

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_SSE = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))


def new_request_id() -> str:
    """32 hex characters from the OS's CSPRNG (what ``uuid4().hex`` gives, at a quarter of the cost)."""
    return os.urandom(16).hex()


def turnout_headers(
    rid: str, route: str = "-", model: str = "-", extra: dict[str, str] | None = None
) -> list[tuple[bytes, bytes]]:
    """The three ``x-turnout-*`` headers every answer carries, then ``extra`` (what the pipeline's stages added)."""
    out = [
        (b"x-turnout-request-id", rid.encode()),
        (b"x-turnout-route", route.encode("latin-1", "replace")),
        (b"x-turnout-model", model.encode("latin-1", "replace")),
    ]
    if extra:
        out += [(k.lower().encode("latin-1", "replace"), _header_value(v)) for k, v in extra.items()]
    return out


def _header_value(value: str) -> bytes:
    # a stage's header value must not break the response: no control characters, bounded length
    return "".join(c if c >= " " and c != "\x7f" else " " for c in str(value))[:1024].encode("latin-1", "replace")


#: request headers handed to the pipeline as metadata (signals read tags, balancers the session id)
_METADATA_PREFIX = b"x-"
_NOT_METADATA = frozenset({b"x-api-key"})


def request_metadata(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``x-*`` request headers (never the API key) as a dict of lower-case names, values cut to 1 KB."""
    return {
        name.decode("latin-1"): value[:1024].decode("latin-1")
        for name, value in headers
        if name.startswith(_METADATA_PREFIX) and name not in _NOT_METADATA
    }


def answer_headers(ctx: Any) -> dict[str, str]:
    """The response headers that explain how a request was served: its plan, rule and answer source, and
    whatever its stages added."""
    out: dict[str, str] = {}
    d = ctx.decision
    if d is not None and d.plan is not None and d.plan.kind not in ("single", "answer"):
        out["x-turnout-plan"] = d.plan.kind
        calls = [a for a in ctx.attempts if a.ok]
        if calls:
            out["x-turnout-calls"] = ",".join(f"{a.model}:{a.status}" for a in calls)
    if ctx.rule:
        out["x-turnout-rule"] = ctx.rule
    if ctx.answered_by != "model":
        out["x-turnout-answered-by"] = ctx.answered_by
    out.update(ctx.response_headers)
    return out


def api_key_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of ``Authorization``, else ``x-api-key`` (the Anthropic clients' header)."""
    x_api_key = None
    for name, value in headers:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
        elif name == b"x-api-key":
            x_api_key = value.decode("latin-1")
    return x_api_key


class _Exchange:
    """What the client of one chat request has been sent so far, for its request-log row."""

    __slots__ = ("hung_up", "sent")

    def __init__(self) -> None:
        self.sent: int | None = None  # the status of the response start, once it is sent
        self.hung_up = False  # the client left before its answer


#: the exchange of the chat request being served; the gateway logs (through :func:`logged_status`) in its context
_EXCHANGE: ContextVar[_Exchange | None] = ContextVar("turnout_chat_exchange", default=None)


def logged_status(exc: BaseException | None) -> int | None:
    """The HTTP status the client of the request being logged received: the gateway's ``status_for``.

    The gateway logs a request where it ends, knowing its error but not what
    went out on the wire. A stream's status line goes out with its first
    chunk: a failure or a hang-up after it is logged ``200``, what the client
    got (the error is in the row's ``status`` and ``error_kind``). A client that
    hung up before anything was sent received no status: None. Otherwise (and
    outside a chat request) the status of the error table.
    """
    exchange = _EXCHANGE.get()
    if exchange is not None:
        if exchange.sent is not None:
            return exchange.sent
        if exchange.hung_up:
            return None
    return status_for(exc)


class ChatEndpoint:
    """The ASGI callable for ``POST /v1/chat/completions`` over one :class:`Gateway`."""

    def __init__(self, gateway: Gateway, *, max_body_bytes: int) -> None:
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _Exchange()
        token = _EXCHANGE.set(exchange)
        try:
            await self._serve(scope, receive, send, exchange)
        finally:
            _EXCHANGE.reset(token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, exchange: _Exchange) -> None:
        rid = new_request_id()

        async def respond(
            status: int, body: Any, route: str = "-", model: str = "-", extra: dict[str, str] | None = None
        ) -> None:
            data = dumps(body)
            exchange.sent = status
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [_JSON, (b"content-length", b"%d" % len(data)), *turnout_headers(rid, route, model, extra)],
                }
            )
            await send({"type": "http.response.body", "body": data})

        gw = self.gateway
        try:
            try:
                req = parse_chat(await self._read_body(scope, receive))
            except TurnoutError as exc:
                await gw.record_rejected(rid, exc)
                await respond(status_for(exc), error_body(exc))
                return
            except Exception as exc:  # a bug in the validation: logged like any request, then answered below
                await gw.record_rejected(rid, exc)
                raise
            key = api_key_of(scope["headers"])
            meta = request_metadata(scope["headers"])
            if not req.stream:
                outcome = await self._complete(req, key, rid, meta, receive, exchange)
                if outcome is None:
                    return  # the client hung up: the upstream call was cancelled (and logged as such); nobody to answer
                if isinstance(outcome, TurnoutError):
                    await respond(
                        status_for(outcome), error_body(outcome), route=route_label(gw, req.model), extra=error_headers(outcome)
                    )
                    return
                resp, ctx = outcome
                assert ctx.decision is not None
                await respond(200, resp.body, ctx.decision.route, ctx.model or "-", answer_headers(ctx))
                return
            try:
                session = await gw.chat_stream(req, api_key=key, request_id=rid, headers=meta)
            except TurnoutError as exc:
                await respond(status_for(exc), error_body(exc), route=route_label(gw, req.model), extra=error_headers(exc))
                return
            await self._stream(
                session, bool((req.params.get("stream_options") or {}).get("include_usage")), receive, send, rid, exchange
            )
        except Exception as exc:  # a bug in turnout: say so in OpenAI form, with the traceback in the server log
            log.exception("internal error answering request %s", rid)
            if exchange.sent is None:
                await respond(500, error_body(exc))
            else:
                raise

    async def _complete(
        self, req: ChatRequest, key: str | None, rid: str, meta: dict[str, str], receive: Receive, exchange: _Exchange
    ) -> tuple[ChatResponse, RequestContext] | TurnoutError | None:
        """The gateway's whole answer, or its TurnoutError; None when the client hung up first.

        A hang-up cancels the gateway call wherever it is (routing, the upstream
        request, a retry's backoff): the gateway logs and counts the request as
        cancelled (``client_disconnect``), exactly as for a stream, and the
        cancellation is not a backend failure, so no fallback is tried.
        """
        async with _CancelOnDisconnect(receive, exchange):
            try:
                return await self.gateway.serve_chat(req, api_key=key, request_id=rid, headers=meta)
            except TurnoutError as exc:
                return exc
        return None  # only reached when the hang-up's cancellation was absorbed

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise PayloadTooLargeError(
                        f"request body is {value.decode()} bytes; the limit is {limit} (server.max_body_bytes)"
                    )
                break
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes (server.max_body_bytes)")
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes (server.max_body_bytes)")
            chunks.append(part)
        return b"".join(chunks)

    async def _stream(
        self, session: StreamSession, include_usage: bool, receive: Receive, send: Send, rid: str, exchange: _Exchange
    ) -> None:
        exchange.sent = 200  # from here on the client has its status line, whatever happens to the stream
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_SSE, *turnout_headers(rid, session.decision.route, session.model, answer_headers(session.ctx))],
            }
        )

        async def pump() -> None:
            events = sse_events(session, include_usage)
            try:
                async for data in events:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            finally:
                await events.aclose()  # also when cancelled between two events: closes the upstream stream
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        streaming = asyncio.create_task(pump())
        watcher = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait((streaming, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not streaming.done():
                streaming.cancel()  # the client is gone (or we are cancelled): stop the upstream stream
            watcher.cancel()
            try:
                await streaming
            except asyncio.CancelledError:
                if not watcher.done() or watcher.cancelled():
                    raise  # cancelled from outside, not by a disconnect
            await session.aclose()


async def _until_disconnect(receive: Receive) -> None:
    """Return when the client hangs up (the body has been read: nothing else is left to receive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


#: a non-streamed request starts listening for a hang-up only once it has run this long (seconds)
HANGUP_GRACE_S = 0.05


class _CancelOnDisconnect:
    """``async with`` block that an ``http.disconnect`` cancels, as :func:`asyncio.timeout` does on expiry.

    A watcher task waits on ``receive()`` (the body has been read, so the next
    message can only be the disconnect) and cancels the task inside the block.
    The block's own suspension points are the only places the watcher can run,
    so the cancellation always lands inside it; on exit that cancellation is
    absorbed (``uncancel``), while one from outside (server shutdown) still
    propagates.

    The watcher is started only after :data:`HANGUP_GRACE_S`: a watcher task for
    every request added about 13 µs to the endpoint's in-process cost (this timer
    about 5 µs), and a request answered within the grace has nothing left worth
    cancelling; a slow one, the kind worth cancelling, notices a hang-up at most
    that much later.
    """

    __slots__ = ("_exchange", "_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive, exchange: _Exchange) -> None:
        self._receive = receive
        self._exchange = exchange
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False

    async def __aenter__(self) -> _CancelOnDisconnect:
        task = asyncio.current_task()
        assert task is not None, "a request is always served in a task"
        self._task = task
        self._timer = asyncio.get_running_loop().call_later(HANGUP_GRACE_S, self._listen)
        return self

    def _listen(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        await _until_disconnect(self._receive)
        self.gone = True
        self._exchange.hung_up = True  # before the cancellation: the gateway logs the request as it unwinds
        self._task.cancel()

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if not self.gone:
            return False
        # ours to absorb only if nothing else asked to cancel the request meanwhile
        return self._task.uncancel() == 0 and typ is asyncio.CancelledError


def route_label(gateway: Gateway, model: str) -> str:
    """The ``x-turnout-route`` of a request that failed before it had a decision."""
    return model if model in gateway.routes else ("passthrough" if model in gateway.targets else "-")


async def sse_events(session: StreamSession, include_usage: bool) -> AsyncGenerator[bytes, None]:
    """The SSE byte frames of a committed stream, ending with ``data: [DONE]`` whatever happens.

    Usage goes out as OpenAI sends it: only if the client asked
    (``include_usage``), once, in a last chunk of its own with ``choices: []``
    and the ``id``, ``created`` and ``model`` of the chunks before it. Backends
    put usage on their finish chunk (the gateway needs it there), so it is
    taken off the chunks that carry choices, and a usage-only chunk is not
    forwarded: the usage sent is the one the gateway accounted
    (``session.usage``).
    """
    last: dict[str, Any] | None = None
    try:
        async for chunk in session:
            body = chunk.body
            if "usage" in body:
                if not body.get("choices"):
                    continue  # a usage-only chunk: its usage goes in the one usage chunk at the end
                body = {k: v for k, v in body.items() if k != "usage"}  # a copy: the chunk is the backend's
            last = body
            yield b"data: " + dumps(body) + b"\n\n"
        if include_usage and session.usage is not None:
            yield b"data: " + dumps(_usage_chunk(last or {}, session)) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except TurnoutError as exc:
        # committed stream failed mid-way: say so in-band, never truncate silently
        yield b"data: " + dumps(error_body(exc)) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # a bug after the commit (a response filter's, say): the status line is out, say it in-band
        log.exception("internal error in the committed stream of request %s", session.request_id)
        yield b"data: " + dumps(error_body(exc)) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await session.aclose()


def _usage_chunk(last: dict[str, Any], session: StreamSession) -> dict[str, Any]:
    """The final ``choices: []`` chunk carrying the stream's usage, in the stream's own id."""
    assert session.usage is not None
    return {
        "id": last.get("id") or f"chatcmpl-{session.request_id}",
        "object": "chat.completion.chunk",
        "created": last.get("created") or int(time.time()),
        "model": last.get("model") or session.model,
        "choices": [],
        "usage": session.usage.to_dict(),
    }


__all__ = [
    "ChatEndpoint",
    "answer_headers",
    "api_key_of",
    "logged_status",
    "new_request_id",
    "request_metadata",
    "route_label",
    "sse_events",
    "turnout_headers",
]
