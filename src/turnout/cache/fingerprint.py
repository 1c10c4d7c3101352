"""The context fingerprint: what makes two requests "the same question in the same context".

A cached answer may only be served to a request whose *context* is identical to
the one it was answered in. The anchors' false hits came from keys that held
only the last message (LiteLLM #12234, vLLM semantic-router #36 and #1581): two
conversations that end with "and in French?" are not the same question. So the
fingerprint digests everything except the wording of the last user message:

* the tenant (the API key's name): one key never sees another's answers;
* the route or model the client asked for (``request.model``);
* every message before the last user message, verbatim (system prompts, earlier
  user and assistant turns, tool calls and tool results);
* from the last user message: every part that is not text (an image, a file)
  and every field other than ``content`` (``name``);
* every request parameter except the few in :data:`HARMLESS_PARAMS`. The list
  is an allow-list of what is *known* not to change the answer, so a parameter
  turnout has never heard of changes the fingerprint: temperature, top_p,
  max_tokens / max_completion_tokens, seed, stop, n, presence and frequency
  penalties, logit_bias, logprobs / top_logprobs, response_format, tools,
  tool_choice, parallel_tool_calls, reasoning_effort, modalities, audio ... are
  all included.

The last user message's text is kept apart (:attr:`ContextFingerprint.text`):
the exact lookup compares it normalised (:func:`normalise`), the semantic
lookup compares its embedding. When the conversation does not end with a user
message (it ends with a tool result, or an assistant prefill) the whole
conversation is in the digest and ``text`` is empty: only an exact repeat of
the whole request can hit.

Example::

    req = ChatRequest("auto", [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "What is  the boiling point of water? "}],
                      params={"temperature": 0, "stream": True})
    fp = ContextFingerprint.of(req, tenant="alice")
    fp.text        # 'What is  the boiling point of water? '
    fp.exact_key   # sha256 over the digest and 'What is the boiling point of water?'
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.types import ChatRequest

#: bumped whenever the digest's input changes form, so an old shared store can never answer a new key
FINGERPRINT_VERSION = "turnout-cache/1"

#: request fields known not to change the answer's content. ``stream``/``stream_options``: a cached answer
#: is replayed as a stream when asked (``replay_chunks``). ``user``, ``metadata``, ``store``,
#: ``service_tier``, ``prompt_cache_key``, ``safety_identifier``: accounting, abuse monitoring and
#: provider-side storage. Everything else is in the digest.
HARMLESS_PARAMS: frozenset[str] = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The form the exact lookup compares: Unicode NFKC, runs of whitespace as one space, ends stripped.

    Case and punctuation are kept on purpose: an exact hit skips the look-alike
    guard, so only differences that cannot change meaning are folded.

    >>> normalise("  What is\\n2+2? ")
    'What is 2+2?'
    """
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _canonical(value: Any) -> Any:
    """``value`` with integral floats as ints (``temperature: 0`` and ``0.0`` are one request) and NaN named."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    # not JSON (a request built in code may carry anything): its repr still separates different values
    return f"<{type(value).__name__}:{value!r}>"


def _dumps(value: Any) -> bytes:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def split_last_user(messages: list[dict[str, Any]]) -> tuple[list[Any], str]:
    """The context (messages as they enter the digest) and the last user message's text.

    The last user message contributes its text parts (joined with newlines) to
    the text, and everything else it holds (non-text parts, ``name``) to the
    context. A conversation that does not end with a user message is context
    entirely, with an empty text.
    """
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return list(messages), ""
    last = messages[-1]
    content = last.get("content")
    rest = {k: v for k, v in last.items() if k != "content"}
    if isinstance(content, str):
        return [*messages[:-1], rest], content
    if isinstance(content, list):
        texts: list[str] = []
        others: list[Any] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                others.append(part)
        # the position of the text among the other parts is not kept: "image, question" and "question, image"
        # ask the same thing; text parts alone are the same context as a string content
        if others:
            rest["content_parts"] = others
        return [*messages[:-1], rest], "\n".join(texts)
    rest["content"] = content  # None or malformed: keep it verbatim, no text to compare
    return [*messages[:-1], rest], ""


@dataclass(frozen=True, slots=True)
class ContextFingerprint:
    """A request's cache identity: ``tenant`` + ``digest`` of its context, and the last user ``text``.

    ``exact_key`` identifies the exact question within the context (the digest
    and the normalised text). Build one with :meth:`of`; two requests have the
    same ``digest`` exactly when they differ at most in the wording of their
    last user message and in :data:`HARMLESS_PARAMS`.
    """

    tenant: str
    digest: str
    text: str
    exact_key: str

    @classmethod
    def of(cls, request: ChatRequest, *, tenant: str, route: str | None = None) -> ContextFingerprint:
        """The fingerprint of ``request`` for API key ``tenant``.

        ``route`` overrides the name the client asked for (``request.model``),
        e.g. when an alias resolves to a route; by default it is ``request.model``.
        """
        context, text = split_last_user(request.messages)
        params = {k: v for k, v in request.params.items() if k not in HARMLESS_PARAMS}
        h = hashlib.sha256()
        # length-prefixed fields: no choice of tenant or route name can make two different contexts collide
        for field in (
            FINGERPRINT_VERSION.encode(),
            tenant.encode("utf-8"),
            (route or request.model).encode("utf-8"),
            _dumps(params),
            _dumps(context),
        ):
            h.update(len(field).to_bytes(8, "big"))
            h.update(field)
        digest = h.hexdigest()
        exact = hashlib.sha256(f"{digest}\0{normalise(text)}".encode()).hexdigest()
        return cls(tenant=tenant, digest=digest, text=text, exact_key=exact)


__all__ = ["FINGERPRINT_VERSION", "HARMLESS_PARAMS", "ContextFingerprint", "normalise", "split_last_user"]
