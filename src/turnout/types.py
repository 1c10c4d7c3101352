"""Typed requests, responses and decisions shared by every room.

These are plain dataclasses (cheap to build on the hot path). The OpenAI wire
schema, with its validation, lives in ``turnout.server.wire``; the gateway and
backends work with these types only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    """Token counts of one answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ChatRequest:
    """One chat-completion request, already validated.

    ``model`` is what the client asked for: a route name (``auto``) or a
    concrete model. ``params`` holds every other OpenAI field verbatim
    (temperature, max_tokens, tools, stream_options, ...) so that backends of
    the ``openai`` protocol can forward them untouched.
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def prompt_text(self) -> str:
        """The text a router looks at: the user turns, latest last.

        Never raises, whatever the messages hold: the server validates wire
        requests, but a request built in code may carry anything, and the
        request log calls this for every request it records. What is not text
        (an image part, a malformed message or part) contributes nothing.
        """
        parts: list[str] = []
        for m in self.messages:
            if not isinstance(m, dict) or m.get("role") != "user":
                continue
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: keep the text ones
                parts.extend(p["text"] for p in content
                             if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
        return "\n".join(parts)


@dataclass(slots=True)
class ChatResponse:
    """A complete (non-streamed) answer in OpenAI ``chat.completion`` form.

    ``body`` is the full response body as the client will see it (the backend
    has already translated its provider's format); ``usage`` is parsed from it.
    """

    body: dict[str, Any]
    usage: Usage | None = None

    @property
    def content(self) -> str | None:
        try:
            return self.body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError):
            return None


@dataclass(slots=True)
class StreamChunk:
    """One ``chat.completion.chunk`` of a streamed answer.

    ``text`` is the delta's content (for token counting when the provider sends
    no usage); ``usage`` is set on the chunk that carries usage, if any.
    """

    body: dict[str, Any]
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class Candidate:
    """One model the policy considered, with its scores and why it was excluded."""

    model: str
    quality: float
    cost: float
    utility: float
    excluded: str | None = None


@dataclass(slots=True)
class Decision:
    """What the policy chose and why.

    ``model`` is the chosen model; ``fallbacks`` the ordered models to try after
    it; ``candidates`` every model considered (excluded ones carry the reason);
    ``lam`` the cost weight in force (utility = quality - lam * cost).
    """

    route: str
    model: str
    candidates: list[Candidate]
    lam: float
    router: str
    fallbacks: list[str] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["Candidate", "ChatRequest", "ChatResponse", "Decision", "StreamChunk", "Usage"]
