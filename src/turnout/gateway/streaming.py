"""A streamed answer after its commit: chunks out, filters applied, the request paid for however it ends.

:class:`StreamSession` is what :meth:`Gateway.chat_stream` returns once the stream is *committed*: a live
stream whose model has produced its first chunk, or a whole answer that was chosen without streaming (a
cache hit, a cascade's accepted step, a fan-out's vote) and is now replayed as chunks, so every answer
streams alike. Iterate it once:

* response filters (``stream_filter`` of the response stages, e.g. PII redaction) transform the text of
  each chunk; what a filter holds back goes out before the finish chunk;
* a failure after the commit is raised from the iterator (the server ends the SSE stream with an
  OpenAI-format error event and ``data: [DONE]``); its endpoint's breaker counts it;
* however the stream ends — finished, failed, or left by its client (iteration stopped, :meth:`aclose`) —
  the half-open probe the endpoint may have granted is settled or released (never left taken), the
  endpoint is freed, what was generated is paid for (usage when the backend sent it, else tokens
  estimated from the text) and the request is logged, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from turnout.errors import BackendError, BackendTimeoutError
from turnout.gateway.calls import OpenStream, close_quietly, price_attempt, sane_usage
from turnout.gateway.chain import Attempt
from turnout.gateway.context import RequestContext
from turnout.gateway.stages import StreamFilter
from turnout.types import ChatResponse, Decision, StreamChunk, Usage

if TYPE_CHECKING:
    from turnout.gateway.parts import GatewayParts

#: called once when the stream is over: (status, error or None, the assembled answer or None)
Finish = Callable[[str, BaseException | None, ChatResponse | None], Coroutine[Any, Any, None]]


def assembled(
    chunks_text: str, last: dict[str, Any] | None, finish_reason: str | None, usage: Usage | None, model: str
) -> ChatResponse:
    """A streamed answer as the ``chat.completion`` it amounts to (for completion hooks such as the cache)."""
    body: dict[str, Any] = {
        "id": (last or {}).get("id") or "chatcmpl-stream",
        "object": "chat.completion",
        "created": (last or {}).get("created") or int(time.time()),
        "model": (last or {}).get("model") or model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": chunks_text}, "finish_reason": finish_reason or "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage.to_dict()
    return ChatResponse(body=body, usage=usage)


def _with_text(chunk: StreamChunk, text: str) -> StreamChunk:
    """``chunk`` with its delta's content replaced by ``text`` (a copy: the original is the backend's)."""
    body = dict(chunk.body)
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = dict(choices[0])
        delta = dict(choice.get("delta") or {})
        delta["content"] = text
        choice["delta"] = delta
        body["choices"] = [choice, *choices[1:]]
    return StreamChunk(body=body, text=text, finish_reason=chunk.finish_reason, usage=chunk.usage)


class StreamSession:
    """A committed stream: the decision, the model serving it, and its chunks (see the module docstring).

    ``usage`` is set once the stream has ended well; ``attempts`` are the request's calls;
    ``headers`` the response headers the stages added.
    """

    def __init__(
        self,
        gateway: GatewayParts,
        ctx: RequestContext,
        *,
        live: OpenStream | None = None,
        replay: list[StreamChunk] | None = None,
        finish: Finish,
        filters: list[StreamFilter] | None = None,
    ) -> None:
        assert (live is None) != (replay is None), "a session streams a live answer or replays one"
        self.gateway = gateway
        self.ctx = ctx
        # the pipeline decides (or a stage answers, with its own decision) before any session is made
        assert ctx.decision is not None, "a stream session is made only once the request has its decision"
        self.decision: Decision = ctx.decision
        self.model = ctx.model
        self.request_id = ctx.request_id
        self.attempts: list[Attempt] = ctx.attempts
        self.headers = ctx.response_headers
        self.usage: Usage | None = None
        self._live = live
        self._replay = replay
        self._finish = finish
        self._filters = filters or []
        self._done = False
        self._texts: list[str] = []  # the text the client was sent (filtered): what the log and the hooks keep
        # content events the upstream sent (unfiltered; one is about one token), counted as they arrive: the first
        # was generated before the commit, so it is paid for even when the client leaves before reading it
        self._pieces = 1 if live is not None and live.first.text else 0

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._iterate()

    def _filter(self, chunk: StreamChunk) -> StreamChunk:
        if not self._filters:
            return chunk
        text = chunk.text
        for f in self._filters:
            text = f.feed(text) if text else text
        if chunk.finish_reason:  # the end: what the filters held back goes out with the finish chunk
            text += self._flush()
        return chunk if text == chunk.text else _with_text(chunk, text)

    def _flush(self) -> str:
        """What the filters held back, each one's rest passed through the filters after it ("" when nothing is)."""
        text = ""
        for i, f in enumerate(self._filters):
            rest = f.flush()
            for g in self._filters[i + 1 :]:
                rest = g.feed(rest) if rest else rest
            text += rest
        return text

    async def _iterate(self) -> AsyncIterator[StreamChunk]:
        if self._replay is not None:
            async for replayed in self._replayed():
                yield replayed
            return
        live = self._live
        assert live is not None
        ctx, t = self.ctx, live.target
        texts = self._texts
        usage: Usage | None = None
        last_body: dict[str, Any] | None = None
        finish_reason: str | None = None
        deadline = asyncio.get_running_loop().time() + t.timeouts.total - ctx.elapsed_s
        try:
            chunk: StreamChunk | None = live.first
            while chunk is not None:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                last_body = chunk.body
                out = self._filter(chunk)
                if out.text:
                    texts.append(out.text)
                yield out
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await live.upstream.__anext__()
                    if chunk.text:
                        self._pieces += 1
                except StopAsyncIteration:
                    chunk = None
                except TimeoutError:
                    raise BackendTimeoutError(
                        f"stream not finished within {t.timeouts.total}s",
                        backend=live.endpoint.backend.name,
                        model=t.name,
                        phase="total",
                    ) from None
            rest = self._flush() if self._filters else ""
            if rest:  # held back since the finish chunk, or the stream had none: it still goes out
                texts.append(rest)
                yield StreamChunk(body=_rest_body(last_body, rest, t.name), text=rest)
        except BackendError as exc:
            # committed, then failed upstream: the breaker counts it; what was generated is paid for
            self._done = True
            live.endpoint.breaker.record_failure()
            live.attempt.error = exc
            self._charge(usage)
            if self.gateway.metrics is not None:
                self.gateway.metrics.inc_error(exc.kind)
            ctx.response_text = "".join(texts)
            await self._finish("error", exc, None)
            raise
        except Exception as exc:  # a bug (a response filter's, say), not a hang-up: an error, paid for and logged
            self._done = True
            live.endpoint.breaker.release()  # not the endpoint's failure
            await close_quietly(live.upstream)
            self._charge(usage)
            ctx.response_text = "".join(texts)
            await self._finish("error", exc, None)
            raise
        except BaseException as exc:  # client gone (GeneratorExit / CancelledError): close upstream, pay, log
            if not self._done:
                self._done = True
                live.endpoint.breaker.release()  # neither success nor failure: a half-open probe must not stay taken
                await close_quietly(live.upstream)
                self._charge(usage)
                ctx.response_text = "".join(texts)
                await self._finish("cancelled", exc, None)
            raise
        self._done = True
        live.endpoint.breaker.record_success()
        self.usage = self._charge(usage)
        text = "".join(texts)
        ctx.response_text = text
        await self._finish("ok", None, assembled(text, last_body, finish_reason, self.usage, t.name))

    def _charge(self, usage: Usage | None) -> Usage:
        """Pay for what the live stream generated and free its endpoint."""
        live = self._live
        assert live is not None
        live.chain.stream_ended(live.ttft_s)
        # llama.cpp sends no usage when streaming: one content event is about one token
        got = sane_usage(usage, self.ctx.request, None)
        if usage is None or got is not usage:
            got = Usage(got.prompt_tokens, self._pieces)
        price_attempt(live.attempt, live.target, got)
        self.ctx.usage = got
        return got

    async def _replayed(self) -> AsyncIterator[StreamChunk]:
        assert self._replay is not None
        try:
            for chunk in self._replay:
                out = self._filter(chunk)
                if out.text:
                    self._texts.append(out.text)
                yield out
        except BaseException as exc:
            if not self._done:
                self._done = True
                await self._finish("cancelled", exc, None)
            raise
        self._done = True
        self.usage = self.ctx.usage
        await self._finish("ok", None, None)

    async def aclose(self) -> None:
        """Stop early: close the upstream stream, pay for what was generated, log as cancelled. Idempotent."""
        await self._end("cancelled", asyncio.CancelledError("client closed the stream"))

    async def fail(self, exc: Exception) -> None:
        """End the stream before it was read because of a bug (``exc``, a stage's): close the upstream stream, pay
        for what was generated, log the request as an error. Idempotent."""
        await self._end("error", exc)

    async def _end(self, status: str, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        if self._live is not None:
            self._live.endpoint.breaker.release()  # neither the endpoint's success nor its failure
            await close_quietly(self._live.upstream)
            self._charge(None)
            self.ctx.response_text = "".join(self._texts)
        await self._finish(status, exc, None)


def _rest_body(last: dict[str, Any] | None, text: str, model: str) -> dict[str, Any]:
    """A content chunk carrying ``text``, in the id of the stream's last chunk."""
    last = last or {}
    return {
        "id": last.get("id") or "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": last.get("created") or int(time.time()),
        "model": last.get("model") or model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


__all__ = ["StreamSession", "assembled"]
