"""The ``anthropic`` protocol: Anthropic's Messages API behind the OpenAI chat shape.

Requests are translated chat → messages: system (and developer) turns become
the top-level ``system``; ``tool`` turns become ``tool_result`` blocks of a
user turn; assistant ``tool_calls`` become ``tool_use`` blocks; consecutive
turns of one role are merged (the API wants them alternating); ``stop`` →
``stop_sequences``; OpenAI ``tools``/``tool_choice`` → Anthropic's;
``max_tokens`` is required there, so :data:`DEFAULT_MAX_TOKENS` fills it in;
``parallel_tool_calls: false`` → ``disable_parallel_tool_use``; images
(``image_url``, data or http URLs) → ``image`` blocks, also inside tool
results; a PDF ``file`` part → a ``document`` block. Content with no
Anthropic equivalent raises :class:`~turnout.errors.UnsupportedRequestError`
(not sent, not retried: the next model of the chain may take it).
Fields Anthropic has no equivalent for (``n``, ``logprobs``,
``presence_penalty``, ...) are dropped.

Answers are translated back into ``chat.completion`` form, and streams
(``message_start`` → ``content_block_*`` → ``message_delta`` with usage →
``message_stop``) into ``chat.completion.chunk`` s whose last one carries
``finish_reason`` and ``usage``. Errors map as for every backend: a 529
``overloaded_error`` or 429 is retryable, a 400 is not; an ``error`` event in
the middle of a stream becomes a BackendStatusError with the status its type
implies. Token counts are validated as the openai backend does
(:class:`~turnout.backends._http.UsageCheck`): an insane one is replaced by an
estimate from the text, with one warning per backend.

Example::

    async with AnthropicBackend("claude", api_key=os.environ["ANTHROPIC_API_KEY"]) as b:
        resp = await b.complete(req, model="claude-3-5-haiku-latest")
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from turnout.backends._h1 import Limits
from turnout.backends._http import (
    Deadlines,
    UsageCheck,
    WireResponse,
    fetch_body,
    iter_sse,
    loads,
    make_transport,
    open_stream,
    translate,
)
from turnout.backends.base import Backend, Timeouts
from turnout.errors import BackendProtocolError, BackendStatusError, InvalidRequestError, UnsupportedRequestError
from turnout.fastjson import dumps
from turnout.tokens import estimate_prompt_tokens, estimate_tokens, estimate_tokens_from_chars
from turnout.types import ChatRequest, ChatResponse, StreamChunk, Usage

API_VERSION = "2023-06-01"
#: Anthropic requires max_tokens; used when the request sets neither max_tokens nor max_completion_tokens
DEFAULT_MAX_TOKENS = 1024

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
#: error ``type`` of an Anthropic error event -> the HTTP status it stands for
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _source(url: str, what: str) -> dict[str, Any]:
    """An Anthropic ``source`` for a ``data:`` URL (base64 only) or an http(s) URL."""
    if url.startswith("data:"):
        media, sep, data = url[5:].partition(";base64,")
        if not sep or not media or not data:
            raise InvalidRequestError(f"{what}: a data: URL must be 'data:<media type>;base64,<data>' to be sent to Anthropic")
        return {"type": "base64", "media_type": media, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise InvalidRequestError(f"{what}: {url[:40]!r} is neither a data: URL nor an http(s) URL")


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content (a string or parts) as Anthropic content blocks.

    Text and images (``image_url`` as ``{"url": ...}`` or, as some clients send
    it, a bare string) translate; a PDF sent as a ``file`` part with
    ``file_data`` becomes a ``document`` block. Anything else (audio, OpenAI
    ``file_id`` references) has no Anthropic equivalent and raises
    InvalidRequestError rather than being dropped without a word.
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            out.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image if isinstance(image, str) else (image or {}).get("url", "")
            out.append({"type": "image", "source": _source(url, f"content part {i} (image_url)")})
        elif kind == "file" and isinstance(part.get("file"), dict) and part["file"].get("file_data"):
            out.append({"type": "document", "source": _source(part["file"]["file_data"], f"content part {i} (file)")})
        else:
            raise InvalidRequestError(
                f"content part {i} of type {kind!r} cannot be sent to Anthropic (text, image_url and file with file_data can)"
            )
    return out


def to_messages_request(request: ChatRequest, model: str) -> dict[str, Any]:
    """Translate an OpenAI chat request into an Anthropic Messages request body."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return  # Anthropic rejects empty content; an empty turn says nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in request.messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _blocks(m.get("content")) if b["type"] == "text")
        elif role == "tool":
            content = m.get("content")
            if isinstance(content, list):
                blocks = _blocks(content)
                # text-only results stay a plain string; images a tool returned go with it as blocks
                result: Any = "".join(b["text"] for b in blocks) if all(b["type"] == "text" for b in blocks) else blocks
            else:
                result = content or ""
            add("user", [{"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": result}])
        elif role == "assistant":
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = {"_raw": fn.get("arguments")}
                blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""), "input": args})
            add("assistant", blocks)
        else:
            add("user", _blocks(m.get("content")))

    p = request.params
    body: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": p.get("max_tokens") or p.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        if p.get(key) is not None:
            body[key] = p[key]
    stop = p.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if p.get("user"):
        body["metadata"] = {"user_id": str(p["user"])}
    if p.get("tools"):
        body["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in p["tools"]
            if isinstance(t, dict) and t.get("type") == "function"
        ]
    choice = p.get("tool_choice")
    if choice == "auto":
        body["tool_choice"] = {"type": "auto"}
    elif choice == "required":
        body["tool_choice"] = {"type": "any"}
    elif choice == "none":
        body["tool_choice"] = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        body["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    if p.get("parallel_tool_calls") is False and body.get("tools") and body.get("tool_choice", {}).get("type") != "none":
        # OpenAI says it per request; Anthropic says it inside tool_choice (auto unless one was given)
        body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
    return body


#: cached input is billed as input: counted in the prompt
_PROMPT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_COMPLETION_KEYS = ("output_tokens",)


def _none() -> int:
    return 0


def _usage(
    u: Any, check: UsageCheck | None = None, prompt: Callable[[], int] = _none, completion: Callable[[], int] = _none
) -> Usage:
    """The usage an Anthropic ``usage`` object reports, insane or missing counts replaced by the estimates
    ``prompt()`` / ``completion()`` (called only when needed)."""
    check = check or UsageCheck("anthropic")
    usage, _ = check.usage(u, prompt, completion, prompt_keys=_PROMPT_KEYS, completion_keys=_COMPLETION_KEYS)
    return usage


def to_chat_completion(msg: dict[str, Any], usage: Usage | None = None) -> dict[str, Any]:
    """Translate an Anthropic ``message`` into an OpenAI ``chat.completion`` body (``usage`` when already checked)."""
    text = "".join(b.get("text", "") for b in msg["content"] if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id", ""),
            "type": "function",
            "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in msg["content"]
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": msg.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": _STOP_REASONS.get(msg.get("stop_reason") or "", "stop")}],
        "usage": (usage or _usage(msg.get("usage"))).to_dict(),
    }


class AnthropicBackend(Backend):
    """Anthropic's Messages API, spoken as OpenAI chat completions.

    ``base_url`` is the API root without ``/v1`` (as Anthropic documents it).
    """

    protocol = "anthropic"

    def __init__(
        self,
        name: str,
        base_url: str = "https://api.anthropic.com",
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        max_connections: int = 256,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self._usage = UsageCheck(name)
        hdrs = {"content-type": "application/json", "anthropic-version": API_VERSION, **(headers or {})}
        if api_key:
            hdrs["x-api-key"] = api_key
        self._transport = make_transport(self.base_url, hdrs, client=client, max_connections=max_connections, limits=self.limits)

    def _request(self, request: ChatRequest, model: str, stream: bool) -> bytes:
        try:
            body = to_messages_request(request, model)
        except InvalidRequestError as exc:
            # this provider cannot take the request; another in the chain may (not retried, not sent)
            raise UnsupportedRequestError(str(exc), backend=self.name, model=model) from exc
        if stream:
            body["stream"] = True
        return dumps(body)

    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        """Send one Messages request; return the answer as a ``chat.completion``."""
        t = timeouts or self.timeouts
        raw = await fetch_body(self._transport, "/v1/messages", self._request(request, model, False), self.name, model, t)
        msg = loads(raw, self.name, model, "the response body")
        blocks = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
            raise BackendProtocolError(
                f"answer is not a Messages object (got {str(msg)[:160]!r})", backend=self.name, model=model
            )
        text = "".join(t for b in blocks if b.get("type") == "text" and isinstance(t := b.get("text"), str))
        usage = _usage(
            msg.get("usage"), self._usage, lambda: estimate_prompt_tokens(request.messages), lambda: estimate_tokens(text)
        )
        try:
            body = to_chat_completion(msg, usage)
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # a block of the wrong shape
            raise BackendProtocolError(
                f"malformed Messages answer ({e!r}): {str(msg)[:160]!r}", backend=self.name, model=model
            ) from e
        return ChatResponse(body=body, usage=usage)

    async def stream(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> AsyncIterator[StreamChunk]:
        """Yield ``chat.completion.chunk`` s translated from Anthropic's stream events."""
        t = timeouts or self.timeouts
        dl = Deadlines(t)
        body = self._request(request, model, True)
        async with open_stream(self._transport, "/v1/messages", body, self.name, model, dl) as resp:
            async for chunk in self._chunks(resp, request, model, dl):
                yield chunk

    async def _chunks(self, resp: WireResponse, request: ChatRequest, model: str, dl: Deadlines) -> AsyncIterator[StreamChunk]:
        events = iter_sse(resp.iter_lines(), self.limits.event)
        cid, upstream_model, created = "", model, int(time.time())
        usage: Usage | None = None  # until message_start reports it
        n_text = 0  # characters of text streamed, for an output estimate

        def prompt_estimate() -> int:
            return estimate_prompt_tokens(request.messages)

        def output_estimate() -> int:
            return estimate_tokens_from_chars(n_text)

        stop_reason: str | None = None
        tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": upstream_model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        while True:
            with translate(self.name, model, dl):
                async with asyncio.timeout_at(dl.next_event()):
                    try:
                        ev = await anext(events)
                    except StopAsyncIteration:
                        break
            obj = loads(ev.data, self.name, model, f"a '{ev.event}' stream event")
            kind = obj.get("type", ev.event) if isinstance(obj, dict) else None
            if kind == "error":
                err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
                raise BackendStatusError(
                    str(err.get("message", "stream error")),
                    backend=self.name,
                    model=model,
                    status=_ERROR_STATUS.get(str(err.get("type", "")), 500),
                    body=ev.data[:4096],
                )
            try:
                if kind == "message_start":
                    msg = obj["message"]
                    cid, upstream_model = msg.get("id", ""), msg.get("model", model)
                    usage = _usage(msg.get("usage"), self._usage, prompt_estimate)
                    dl.got_first()
                    yield StreamChunk(body=chunk({"role": "assistant", "content": ""}))
                elif kind == "content_block_start":
                    block = obj["content_block"]
                    if block.get("type") == "tool_use":
                        idx = tool_index.setdefault(obj["index"], len(tool_index))
                        call = {
                            "index": idx,
                            "id": block.get("id", ""),
                            "type": "function",
                            "function": {"name": block.get("name", ""), "arguments": ""},
                        }
                        yield StreamChunk(body=chunk({"tool_calls": [call]}))
                elif kind == "content_block_delta":
                    delta = obj["delta"]
                    if delta.get("type") == "text_delta":
                        if not isinstance(delta["text"], str):
                            raise TypeError("text_delta.text is not a string")
                        n_text += len(delta["text"])
                        yield StreamChunk(body=chunk({"content": delta["text"]}), text=delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        idx = tool_index.get(obj["index"], 0)
                        piece = {"index": idx, "function": {"arguments": delta.get("partial_json", "")}}
                        yield StreamChunk(body=chunk({"tool_calls": [piece]}))
                elif kind == "message_delta":
                    stop_reason = (obj.get("delta") or {}).get("stop_reason") or stop_reason
                    raw = obj.get("usage") or {}
                    if raw.get("output_tokens") is not None:
                        out, _ = self._usage.count(raw, _COMPLETION_KEYS, output_estimate)
                        usage = Usage(usage.prompt_tokens if usage is not None else prompt_estimate(), out)
                elif kind == "message_stop":
                    finish = _STOP_REASONS.get(stop_reason if isinstance(stop_reason, str) else "", "stop")
                    body = chunk({}, finish)
                    if usage is None:  # no message_start
                        usage = Usage(prompt_estimate(), 0)
                    body["usage"] = usage.to_dict()
                    yield StreamChunk(body=body, finish_reason=finish, usage=usage)
                    return
                # ping, content_block_stop and unknown future events carry nothing to forward
            except (KeyError, TypeError, AttributeError) as e:
                raise BackendProtocolError(
                    f"malformed '{kind}' event ({e!r}): {ev.data[:120]!r}", backend=self.name, model=model
                ) from e
        raise BackendProtocolError("stream ended before message_stop (cut mid-way)", backend=self.name, model=model)

    async def aclose(self) -> None:
        """Close the connection pool if this backend created it (a caller's httpx client stays open)."""
        await self._transport.aclose()


__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicBackend", "to_chat_completion", "to_messages_request"]
