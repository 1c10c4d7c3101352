"""The scripted provider's wire face: a :class:`Script` served over HTTP/1.1 on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from turnout.testing._loopback import LoopbackServer, read_request
from turnout.testing._script import RecordedRequest, Script, Step, prompt_of
from turnout.testing._wire import (
    REASONS,
    anthropic_body,
    anthropic_error,
    anthropic_events,
    chat_body,
    openai_error,
    openai_events,
)
from turnout.types import Usage


class ScriptedServer(LoopbackServer):
    """Serves a :class:`Script` over HTTP on loopback, from a background thread.

    ``protocol`` is ``openai`` (``/v1/chat/completions``, ``/v1/completions``,
    ``/v1/models``) or ``anthropic`` (``/v1/messages``). Use as a context
    manager (sync or async) or call :meth:`start` / :meth:`stop`.
    ``requests`` logs each completion request that reached it (``/v1/models``
    probes are not logged); ``count`` is their number.
    """

    def __init__(
        self,
        script: Script | Step | Sequence[Step] | dict[str, Any] | None = None,
        *,
        protocol: str = "openai",
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = ("scripted",),
    ) -> None:
        if protocol not in ("openai", "anthropic"):
            raise ValueError(f"protocol must be 'openai' or 'anthropic', not {protocol!r}")
        super().__init__(host=host, port=port)
        self.kind = f"scripted-{protocol}"
        self.script = Script.coerce(script)
        self.protocol = protocol
        self.models = list(models)
        self.requests: list[RecordedRequest] = []

    @property
    def count(self) -> int:
        """How many completion requests reached the server."""
        return len(self.requests)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            keep = await self._dispatch(req.method, req.path, req.headers, req.body, writer)
            if not keep or req.headers.get("connection", "").lower() == "close":
                return

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json") -> None:
        writer.write(
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes, writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path in ("/v1/models", "/models"):
            listed = [{"id": m, "object": "model", "owned_by": "turnout-scripted"} for m in self.models]
            self._send(writer, 200, json.dumps({"object": "list", "data": listed}).encode())
            return True
        if method == "GET" and path in ("/health", "/healthz"):
            self._send(writer, 200, b'{"status":"ok"}')
            return True
        routes = ("/v1/messages",) if self.protocol == "anthropic" else ("/v1/chat/completions", "/v1/completions")
        if method != "POST" or path not in routes:
            self._send(writer, 404, json.dumps({"error": {"message": f"no route {method} {path}"}}).encode())
            return True
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(writer, 400, json.dumps(openai_error(400)).encode())
            return True
        messages = body.get("messages") or ([{"role": "user", "content": body.get("prompt", "")}] if "prompt" in body else [])
        step = self.script.next_step(prompt_of(messages), body.get("model"))
        self.requests.append(RecordedRequest(path, body, headers, step))
        if step.fault == "hang":
            await asyncio.Event().wait()  # until the client gives up or the server stops
        if step.latency:
            await asyncio.sleep(step.latency)
        if step.fault == "reset":
            writer.transport.abort()
            return False
        if step.fault == "status":
            err = anthropic_error(step.status) if self.protocol == "anthropic" else openai_error(step.status)
            self._send(writer, step.status, json.dumps(err).encode())
            return True
        model = str(body.get("model") or self.models[0])
        usage = step.usage(messages if isinstance(messages, list) else [])
        if not body.get("stream"):
            if step.fault == "malformed":
                self._send(writer, 200, b'{"id": "x", "choices": [ {not json')
                return True
            if self.protocol == "anthropic":
                payload = anthropic_body(step.text, model, usage, step.tool_calls)
            elif path == "/v1/completions":
                payload = {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "text": step.text, "finish_reason": "stop"}],
                    "usage": usage.to_dict(),
                }
            else:
                payload = chat_body(step.text, model, usage, step.tool_calls)
            data = json.dumps(payload).encode()
            if step.fault == "cut":  # announce the whole body, send half, hang up
                writer.write(
                    f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
                    + data[: len(data) // 2]
                )
                await writer.drain()
                writer.transport.abort()
                return False
            self._send(writer, 200, data)
            return True
        await self._stream(writer, step, body, path, model, usage)
        return True

    async def _stream(
        self, writer: asyncio.StreamWriter, step: Step, body: dict[str, Any], path: str, model: str, usage: Usage
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )

        def emit(text: str) -> None:
            data = text.encode()
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        tokens = step.tokens()
        cut = step.fault == "cut"
        if cut:
            tokens = tokens[: max(1, len(tokens) // 2)]
        events = (
            anthropic_events(step, tokens, model, usage, cut)
            if self.protocol == "anthropic"
            else openai_events(step, tokens, model, usage, cut, body, completions=path == "/v1/completions")
        )
        for i, ev in enumerate(events):
            if step.fault == "malformed" and i == 1:
                ev = 'data: {"choices": [{"delta": {"content": "oops"\n\n'  # broken JSON mid-stream
            if ev is None:  # a pause point between tokens
                if step.slow:
                    await writer.drain()
                    await asyncio.sleep(step.slow)
                continue
            emit(ev)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


__all__ = ["ScriptedServer"]
