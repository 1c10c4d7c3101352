"""The ``openai`` protocol: OpenAI itself, vLLM, llama.cpp's server, Ollama, LiteLLM.

Requests are forwarded verbatim (``messages`` plus every other OpenAI field
in ``ChatRequest.params``) with ``model`` replaced by the concrete upstream
name. Answers come back already in OpenAI form, so only their shape is checked.

Streaming parses server-sent events properly and always ends with a chunk that
carries both ``finish_reason`` and ``usage``: the backend asks for
``stream_options.include_usage`` and, when the provider sends no usage chunk
anyway (llama.cpp's server does not), it counts the tokens itself. The count
is approximate: one token per content event (exact for llama.cpp, which emits
one token per event) and about four characters per token for the prompt.

Usage is validated (:class:`~turnout.backends._http.UsageCheck`): a count that
is negative, over 10**9, fractional, a string or a boolean is replaced by the
same estimate, the body's ``usage`` is rewritten to the numbers turnout
accounted, and the backend logs one warning the first time. A JSON body with
``NaN`` or ``1e400`` is not JSON and raises BackendProtocolError; so do choices,
deltas, contents or finish reasons of the wrong type. Events after ``[DONE]``
are never read.

Completion-only models (base models without a chat template, such as the
Gemma 3 270M base GGUF, which returns empty chats) are served by setting
``completion_template``: the chat is rendered into one prompt, sent to
``/v1/completions``, and the answer is translated back into
``chat.completion`` / ``chat.completion.chunk`` form (log-probabilities too: chat's
``logprobs: true, top_logprobs: k`` is sent as the completions API's ``logprobs: k``
and the answer's per-token lists come back in chat form). Tools, a tool choice or a
``response_format`` cannot be rendered into a prompt: such a request raises
:class:`~turnout.errors.UnsupportedRequestError` (not sent; the chain tries the
next model), never an answer that silently ignored them.

Quirk absorbed elsewhere: llama.cpp's server answers an *unknown* model name
with 200 and whatever model it has loaded, so a typo in the config is not
caught by the provider; configure one backend per llama.cpp server.

Example::

    async with OpenAIBackend("local", "http://127.0.0.1:8080/v1") as b:
        resp = await b.complete(ChatRequest(model="auto", messages=msgs), model="smollm2")
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
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
from turnout.errors import BackendProtocolError, BackendStatusError, UnsupportedRequestError
from turnout.fastjson import dumps
from turnout.tokens import estimate_prompt_tokens, estimate_tokens
from turnout.types import ChatRequest, ChatResponse, StreamChunk

#: a plain question/answer frame that base models continue sensibly
QA_TEMPLATE = "{system}{history}Question: {prompt}\nAnswer:"
#: where a base model answering QA_TEMPLATE should stop
QA_STOP = ("\nQuestion:", "\n\n\n")

#: chat-only fields a /v1/completions endpoint would reject
_CHAT_ONLY = frozenset({"tools", "tool_choice", "parallel_tool_calls", "response_format", "functions", "function_call"})


def _asks_for(field: str, value: Any) -> bool:
    """Whether chat-only ``field`` = ``value`` asks for something a plain completion would not do."""
    if value in (None, [], {}, False):
        return False
    if field == "tool_choice":
        return bool(value != "none")
    if field == "response_format":
        return not (isinstance(value, dict) and value.get("type") == "text")
    # parallel_tool_calls only means something with tools, which are checked themselves
    return field != "parallel_tool_calls"


def render_prompt(template: str, messages: list[dict[str, Any]]) -> str:
    """Render chat ``messages`` into one completion prompt.

    ``template`` may use ``{system}`` (system messages, each followed by a
    blank line), ``{history}`` (earlier turns as ``Role: text`` lines) and
    ``{prompt}`` (the last user message).
    """
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        content = content or ""
        if m.get("role") in ("system", "developer"):
            system.append(content)
        else:
            turns.append((str(m.get("role", "user")), content))
    prompt = ""
    if turns and turns[-1][0] == "user":
        prompt = turns.pop()[1]
    history = "".join(f"{role.capitalize()}: {text}\n" for role, text in turns)
    return template.format(system="".join(s + "\n\n" for s in system), history=history, prompt=prompt)


def _text_of(content: Any) -> str | None:
    """The text of a message's ``content``: a string, null, or (as some providers send) a list of text parts;
    None for anything else."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return None


def chat_logprobs(lp: Any, top: int | None) -> dict[str, Any] | None:
    """A completion's ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``: one dict per token) in chat
    form: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}``, with
    at most ``top`` alternatives per token, best first. None when there is nothing well-formed to translate.
    """
    if not isinstance(lp, dict):
        return None
    tokens, logprobs, tops = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(logprobs, list) or len(tokens) != len(logprobs):
        return None
    if not isinstance(tops, list) or len(tops) != len(tokens):
        tops = [None] * len(tokens)
    content = []
    for token, logprob, alts in zip(tokens, logprobs, tops):
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
            return None
        ranked = (
            sorted(((t, v) for t, v in alts.items() if isinstance(t, str) and isinstance(v, (int, float))), key=lambda tv: -tv[1])
            if isinstance(alts, dict)
            else []
        )
        content.append(
            {
                "token": token,
                "logprob": float(logprob),
                "bytes": None,
                "top_logprobs": [{"token": t, "logprob": float(v), "bytes": None} for t, v in ranked[: top or 0]],
            }
        )
    return {"content": content}


class OpenAIBackend(Backend):
    """A provider endpoint speaking OpenAI's chat-completions protocol.

    ``base_url`` includes the API prefix (``http://host:8000/v1``). The backend
    owns one HTTP/1.1 keep-alive pool of up to ``max_connections`` connections
    (turnout's own client, :mod:`turnout.backends._client`) unless ``client``
    (an ``httpx.AsyncClient``: proxies, HTTP/2, a mock transport) is given, in
    which case the caller keeps ownership and :meth:`aclose` leaves it open.
    ``limits`` bounds what one answer may make it hold (:class:`Limits`).
    """

    protocol = "openai"

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        completion_template: str | None = None,
        completion_stop: Sequence[str] = QA_STOP,
        max_connections: int = 256,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.completion_template = completion_template
        self.completion_stop = list(completion_stop)
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self._usage = UsageCheck(name)
        hdrs = {"content-type": "application/json", **(headers or {})}
        if api_key:
            hdrs.setdefault("Authorization", f"Bearer {api_key}")
        self._transport = make_transport(self.base_url, hdrs, client=client, max_connections=max_connections, limits=self.limits)

    # -- request building ---------------------------------------------------

    def _request(self, request: ChatRequest, model: str, stream: bool) -> tuple[str, bytes]:
        """The path (relative to ``base_url``) and JSON body of one upstream request."""
        params = dict(request.params)
        params.pop("stream", None)
        if self.completion_template is not None:
            asked = [k for k in _CHAT_ONLY if _asks_for(k, params.get(k))]
            if asked:  # a completion prompt cannot carry them: say so (the chain tries another model), never drop them
                raise UnsupportedRequestError(
                    f"{', '.join(asked)} cannot be served by a completion-only model (its chat is rendered into one prompt)",
                    backend=self.name,
                    model=model,
                )
            for k in _CHAT_ONLY:
                params.pop(k, None)
            # chat's logprobs (a flag) + top_logprobs (a count) are one count in the completions API
            top = params.pop("top_logprobs", None)
            if params.pop("logprobs", None) is True:
                params["logprobs"] = max(top, 1) if isinstance(top, int) and not isinstance(top, bool) else 1
            payload: dict[str, Any] = {
                "model": model,
                "prompt": render_prompt(self.completion_template, request.messages),
                **params,
            }
            if "stop" not in payload and self.completion_stop:
                payload["stop"] = self.completion_stop
            path = "/completions"
        else:
            payload = {"model": model, "messages": request.messages, **params}
            path = "/chat/completions"
        payload["model"] = model  # params must not override the concrete upstream name
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {**(params.get("stream_options") or {}), "include_usage": True}
        return path, dumps(payload)

    # -- non-streaming ------------------------------------------------------

    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        """POST the request and return the whole answer as a ``chat.completion``."""
        t = timeouts or self.timeouts
        path, payload = self._request(request, model, False)
        raw = await fetch_body(self._transport, path, payload, self.name, model, t)
        body = loads(raw, self.name, model, "the response body")
        if self.completion_template is not None:
            body = self._chat_from_completion(body, model, request.asked_top_logprobs())
        text = self._check_chat(body, model)
        raw_usage = body.get("usage")
        usage, valid = self._usage.usage(
            raw_usage, lambda: estimate_prompt_tokens(request.messages), lambda: estimate_tokens(text)
        )
        if not valid:  # the client sees the numbers turnout accounted (details the provider sent are kept)
            body["usage"] = {**(raw_usage if isinstance(raw_usage, dict) else {}), **usage.to_dict()}
        return ChatResponse(body=body, usage=usage)

    def _check_chat(self, body: Any, model: str) -> str:
        """The answer's text, once ``body`` is known to be a chat completion with a message whose content is text."""
        if isinstance(body, dict) and "error" in body and "choices" not in body:
            raise BackendStatusError(str(body["error"]), backend=self.name, model=model, status=502, body=str(body)[:4096])
        try:
            message = body["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            message = None
        if not isinstance(body, dict) or not isinstance(message, dict):
            raise BackendProtocolError(
                f"answer has no choices[0].message (got {str(body)[:160]!r})", backend=self.name, model=model
            )
        text = _text_of(message.get("content"))
        if text is None:
            raise BackendProtocolError(
                f"choices[0].message.content is neither text nor null: {str(message.get('content'))[:80]!r}",
                backend=self.name,
                model=model,
            )
        return text

    def _chat_from_completion(self, body: Any, model: str, top: int | None = None) -> Any:
        try:
            choice = body["choices"][0]
            text = choice["text"]
        except (KeyError, IndexError, TypeError):
            if isinstance(body, dict) and "error" in body:
                return body  # _check_chat reports it
            text = None
        if not isinstance(text, str):
            raise BackendProtocolError(
                f"completion has no choices[0].text (got {str(body)[:160]!r})", backend=self.name, model=model
            ) from None
        return {
            "id": body.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": body.get("created") or int(time.time()),
            "model": body.get("model") or model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": choice.get("finish_reason") or "stop",
                    **({"logprobs": chat_logprobs(choice.get("logprobs"), top)} if top is not None else {}),
                }
            ],
            **({"usage": body["usage"]} if isinstance(body.get("usage"), dict) else {}),
        }

    # -- streaming ----------------------------------------------------------

    async def stream(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> AsyncIterator[StreamChunk]:
        """Yield ``chat.completion.chunk`` chunks; the last carries ``finish_reason`` and ``usage``."""
        t = timeouts or self.timeouts
        dl = Deadlines(t)
        path, payload = self._request(request, model, True)
        async with open_stream(self._transport, path, payload, self.name, model, dl) as resp:
            async for chunk in self._chunks(resp, request, model, dl):
                yield chunk

    async def _chunks(self, resp: WireResponse, request: ChatRequest, model: str, dl: Deadlines) -> AsyncIterator[StreamChunk]:
        events = iter_sse(resp.iter_lines(), self.limits.event)
        held: StreamChunk | None = None  # the finish chunk, held back until usage is known
        raw_usage: Any = None  # the last usage the provider reported
        n_events = 0
        done = False
        top = request.asked_top_logprobs()  # the log-probabilities asked for, the same for every event
        while True:
            # Each read runs under the next event's deadline (first token, then idle, within total); the yield
            # happens outside it, because a timeout scope must never span a yield of an async generator.
            with translate(self.name, model, dl):
                async with asyncio.timeout_at(dl.next_event()):
                    try:
                        ev = await anext(events)
                    except StopAsyncIteration:
                        break
            if ev.data.strip() == "[DONE]":
                done = True
                break
            obj = loads(ev.data, self.name, model, "a stream event")
            if not isinstance(obj, dict):
                raise BackendProtocolError(f"stream event is not an object: {ev.data[:120]!r}", backend=self.name, model=model)
            if "error" in obj and "choices" not in obj:
                err = obj["error"]
                code = err.get("code") if isinstance(err, dict) else None
                raise BackendStatusError(
                    str(err.get("message", err) if isinstance(err, dict) else err),
                    backend=self.name,
                    model=model,
                    status=code if isinstance(code, int) and code >= 400 else 502,
                    body=ev.data[:4096],
                )
            if self.completion_template is not None:
                obj = self._chunk_from_completion(obj, model, top)
            choices = obj.get("choices")
            if not isinstance(choices, list):
                raise BackendProtocolError(f"stream event has no choices list: {ev.data[:120]!r}", backend=self.name, model=model)
            if obj.get("usage") is not None:
                raw_usage = obj["usage"]
                if choices:  # a per-chunk count (vLLM's continuous usage) is passed on only once checked, at the end
                    del obj["usage"]
            if not choices:  # the usage-only chunk that include_usage adds at the end
                continue
            choice = choices[0] if isinstance(choices[0], dict) else None
            delta = {} if choice is None else choice.get("delta") or {}
            text = delta.get("content") or "" if isinstance(delta, dict) else None
            finish = None if choice is None else choice.get("finish_reason")
            if choice is None or not isinstance(text, str) or not isinstance(finish, str | None):
                raise BackendProtocolError(
                    f"stream event with a choice, delta, content or finish_reason of the wrong type: {ev.data[:120]!r}",
                    backend=self.name,
                    model=model,
                )
            if text:
                n_events += 1
            chunk = StreamChunk(body=obj, text=text, finish_reason=finish)
            dl.got_first()
            if held is not None:  # an event after the finish chunk: release it as it was
                yield held
                held = None
            if finish:
                held = chunk
            else:
                yield chunk
        if held is None:
            raise BackendProtocolError(
                "stream ended before a finish_reason" + ("" if done else " and without [DONE] (cut mid-way)"),
                backend=self.name,
                model=model,
            )
        # Counts the provider did not send, or sent insane, are estimated: one token per content event
        # (llama.cpp sends one token per event), and the prompt from its text.
        template = self.completion_template
        usage, _ = self._usage.usage(
            raw_usage,
            lambda: (
                estimate_tokens(render_prompt(template, request.messages))
                if template is not None
                else estimate_prompt_tokens(request.messages)
            ),
            lambda: n_events,
        )
        held.usage = usage
        held.body["usage"] = usage.to_dict()
        yield held

    def _chunk_from_completion(self, obj: dict[str, Any], model: str, top: int | None = None) -> dict[str, Any]:
        choices = obj.get("choices")
        out_choices: list[dict[str, Any]] = []
        if isinstance(choices, list):
            for c in choices[:1]:
                if not isinstance(c, dict) or not isinstance(c.get("text", ""), str):
                    raise BackendProtocolError(
                        f"completion chunk has no text: {str(obj)[:120]!r}", backend=self.name, model=model
                    )
                out_choices.append(
                    {
                        "index": 0,
                        "delta": {"content": c.get("text") or ""},
                        "finish_reason": c.get("finish_reason"),
                        **({"logprobs": chat_logprobs(c.get("logprobs"), top)} if top is not None else {}),
                    }
                )
        else:
            return obj  # the caller reports the missing choices list
        out = {
            "id": obj.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": obj.get("created") or int(time.time()),
            "model": obj.get("model") or model,
            "choices": out_choices,
        }
        if "usage" in obj:
            out["usage"] = obj["usage"]
        return out

    async def aclose(self) -> None:
        """Close the connection pool if this backend created it (a caller's httpx client stays open)."""
        await self._transport.aclose()


__all__ = ["QA_STOP", "QA_TEMPLATE", "OpenAIBackend", "chat_logprobs", "render_prompt"]
