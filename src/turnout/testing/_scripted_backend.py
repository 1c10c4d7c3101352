"""The scripted provider's in-process face: a :class:`~turnout.backends.base.Backend` with no sockets."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from turnout.backends.base import Backend, Timeouts
from turnout.errors import (
    BackendConnectionError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)
from turnout.testing._script import RecordedRequest, Script, Step
from turnout.testing._wire import chat_body, chunk_body, delta_body, openai_error, tool_call_deltas
from turnout.types import ChatRequest, ChatResponse, StreamChunk


class ScriptedBackend(Backend):
    """An in-process :class:`Backend` answering from a :class:`Script`.

    Faults raise what a real backend raises for them: ``status`` →
    BackendStatusError, ``reset`` → BackendConnectionError, ``malformed`` and a
    streamed ``cut`` → BackendProtocolError, ``hang``/long ``latency`` →
    BackendTimeoutError of the phase that expired. ``requests`` logs every call;
    ``cancelled`` counts the calls the caller cancelled (or, for a stream,
    closed) before they had answered in full, by a timeout of its own or
    because its client hung up.
    """

    protocol = "scripted"

    def __init__(
        self,
        name: str = "scripted",
        script: Script | Step | Sequence[Step] | dict[str, Any] | None = None,
        *,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.name = name
        self.script = Script.coerce(script)
        self.timeouts = timeouts or Timeouts()
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.closed = False

    @property
    def count(self) -> int:
        """How many attempts reached this backend."""
        return len(self.requests)

    def _begin(self, request: ChatRequest, model: str) -> Step:
        step = self.script.next_step(request.prompt_text(), model)
        body = {"model": model, "messages": request.messages, **request.params}
        self.requests.append(RecordedRequest("/v1/chat/completions", body, {}, step))
        return step

    async def _wait_first(self, step: Step, t: Timeouts, model: str) -> None:
        delay = float("inf") if step.fault == "hang" else step.latency
        limit = min(t.first_token, t.total)
        if delay > limit:
            await asyncio.sleep(limit)
            phase = "first_token" if t.first_token < t.total else "total"
            raise BackendTimeoutError(f"no first token within {limit:g}s", backend=self.name, model=model, phase=phase)
        await asyncio.sleep(delay)
        if step.fault == "status":
            raise BackendStatusError(
                "scripted failure", backend=self.name, model=model, status=step.status, body=json.dumps(openai_error(step.status))
            )
        if step.fault == "reset":
            raise BackendConnectionError("connection reset by scripted backend", backend=self.name, model=model)
        if step.fault == "malformed":
            raise BackendProtocolError("invalid JSON in the response body (scripted)", backend=self.name, model=model)

    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        t = timeouts or self.timeouts
        step = self._begin(request, model)
        try:
            await self._wait_first(step, t, model)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if step.fault == "cut":
            raise BackendConnectionError("body cut short (scripted)", backend=self.name, model=model)
        usage = step.usage(request.messages)
        return ChatResponse(body=chat_body(step.text, model, usage, step.tool_calls), usage=usage)

    async def stream(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> AsyncIterator[StreamChunk]:
        t = timeouts or self.timeouts
        step = self._begin(request, model)
        try:
            started = time.monotonic()
            await self._wait_first(step, t, model)
            tokens = step.tokens()
            if step.fault == "cut":
                tokens = tokens[: max(1, len(tokens) // 2)]
            cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
            for i, tok in enumerate(tokens):
                if i and step.slow:
                    if time.monotonic() - started + step.slow > t.total:
                        raise BackendTimeoutError(
                            f"no complete answer within {t.total:g}s", backend=self.name, model=model, phase="total"
                        )
                    await asyncio.sleep(step.slow)
                yield StreamChunk(body=chunk_body(cid, model, tok, None), text=tok)
            if step.fault == "cut":
                raise BackendProtocolError(
                    "stream ended before a finish_reason and without [DONE] (scripted cut)", backend=self.name, model=model
                )
            for delta in tool_call_deltas(step.tool_calls):
                yield StreamChunk(body=delta_body(cid, model, delta))
            usage = step.usage(request.messages)
            body = chunk_body(cid, model, "", step.finish)
            body["usage"] = usage.to_dict()
            yield StreamChunk(body=body, text="", finish_reason=step.finish, usage=usage)
        except (asyncio.CancelledError, GeneratorExit):  # the caller left before the end
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        self.closed = True


__all__ = ["ScriptedBackend"]
