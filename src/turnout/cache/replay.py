"""A cached answer as a stream, and a streamed answer as a body to cache.

The cache stores the final non-streamed ``chat.completion`` body. A client
that asked for ``stream: true`` must get a cached answer the way it gets a live
one (vLLM semantic-router #913: a hit broke the SSE stream), so
:func:`replay_chunks` cuts the body into ``chat.completion.chunk`` bodies in
the form turnout's backends produce: a first chunk with the assistant role,
content deltas whose concatenation is the cached content exactly, and a last
chunk with an empty delta and the ``finish_reason`` (carrying ``usage``, as a
backend's finish chunk does; the server moves it into its own usage chunk when
the client asked for one). :func:`assemble_body` is the inverse, for storing
an answer that was streamed live.

Example::

    chunks = replay_chunks(body, chunk_chars=24)
    "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == body["choices"][0]["message"]["content"]
    assemble_body(chunks)["choices"][0]["message"] == body["choices"][0]["message"]   # for a text answer
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any


def _pieces(text: str, chunk_chars: int) -> list[str]:
    """``text`` in pieces of at most ``chunk_chars``, cut after a space where one falls in the second half."""
    out: list[str] = []
    i = 0
    while i < len(text):
        end = min(len(text), i + chunk_chars)
        if end < len(text):
            cut = text.rfind(" ", i + chunk_chars // 2, end)
            if cut >= 0:
                end = cut + 1  # the space stays with the word before it, as tokenizers emit it
        out.append(text[i:end])
        i = end
    return out


def replay_chunks(
    body: dict[str, Any], *, chunk_chars: int = 24, id: str | None = None, created: int | None = None
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` bodies that stream ``body`` (a one-choice ``chat.completion``).

    ``id`` and ``created`` default to the body's own; the gateway passes a fresh
    id per request. Tool calls (when a policy caches them) are replayed as one
    delta each with their whole arguments; a ``refusal`` as one delta.
    ``logprobs`` are not replayed. Raises ``ValueError`` for a body that is not
    a one-choice completion.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0].get("message"), dict):
        raise ValueError("replay_chunks needs a chat.completion body with exactly one choice and its message")
    choice, message = choices[0], choices[0]["message"]
    head = {
        "id": id or body.get("id") or "chatcmpl-cached",
        "object": "chat.completion.chunk",
        "created": created if created is not None else body.get("created", int(time.time())),
        "model": body.get("model", ""),
    }
    if body.get("system_fingerprint") is not None:
        head["system_fingerprint"] = body["system_fingerprint"]
    index = choice.get("index", 0)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    content = message.get("content")
    # as providers do: the role first, with an empty content (null when the answer is a tool call)
    chunks = [chunk({"role": message.get("role", "assistant"), "content": "" if isinstance(content, str) else None})]
    if isinstance(content, str):
        chunks += [chunk({"content": piece}) for piece in _pieces(content, chunk_chars)]
    if isinstance(message.get("refusal"), str):
        chunks.append(chunk({"refusal": message["refusal"]}))
    for i, call in enumerate(message.get("tool_calls") or []):
        chunks.append(chunk({"tool_calls": [{"index": i, **copy.deepcopy(call)}]}))
    last = chunk({}, choice.get("finish_reason") or "stop")
    if isinstance(body.get("usage"), dict):
        last["usage"] = dict(body["usage"])
    chunks.append(last)
    return chunks


def assemble_body(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` body a stream of ``chat.completion.chunk`` bodies amounts to (choice 0).

    Content and refusal deltas are concatenated, tool-call deltas merged by
    index (their ``arguments`` fragments joined), ``usage`` taken from any
    chunk that carries it, ``id``/``created``/``model`` from the first chunk.
    """
    head: dict[str, Any] = {}
    role = "assistant"
    content: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage: dict[str, Any] | None = None
    for c in chunks:
        if not head:
            head = {k: c[k] for k in ("id", "created", "model", "system_fingerprint") if k in c}
        if isinstance(c.get("usage"), dict):
            usage = c["usage"]
        for ch in c.get("choices") or []:
            if ch.get("index", 0) != 0:
                continue
            delta = ch.get("delta") or {}
            role = delta.get("role") or role
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusal.append(delta["refusal"])
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(tc.get("index", len(calls)), {"function": {"name": "", "arguments": ""}})
                for k in ("id", "type"):
                    if tc.get(k):
                        slot[k] = tc[k]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = ch.get("finish_reason") or finish
    text = "".join(content)
    # a tool call with no text has null content, as in a non-streamed answer
    message: dict[str, Any] = {"role": role, "content": text if text or not calls else None}
    if refusal:
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    body: dict[str, Any] = {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


__all__ = ["assemble_body", "replay_chunks"]
