"""The one token estimate, used wherever a count is needed before (or without) a tokenizer.

Routing prices a candidate before it answers, the context-window check runs before any model is
called, and a provider that sends no usage (llama.cpp's server when streaming) still has to be
paid for: each needs a token count without the model's tokenizer. About four characters per
token is right for English BPE vocabularies to within roughly ±30% on prose.

>>> estimate_tokens("a" * 400)
100
>>> estimate_prompt_tokens([{"role": "user", "content": "hello"}])
6
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

#: characters per token of English prose in BPE vocabularies
CHARS_PER_TOKEN = 4
#: tokens of chat framing per message (role markers, separators)
MESSAGE_OVERHEAD_TOKENS = 4
#: the most tokens one count of one answer may be; beyond it a provider's figure is not believed
MAX_SANE_TOKENS = 10**9


def sane_count(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a believable token count: an integer (not a boolean) from 0 to :data:`MAX_SANE_TOKENS`."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SANE_TOKENS


def estimate_tokens_from_chars(n: int) -> int:
    """Approximate token count of ``n`` characters of text: one token per :data:`CHARS_PER_TOKEN`, rounded up."""
    return -(-n // CHARS_PER_TOKEN)


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text`` (0 for the empty string)."""
    return estimate_tokens_from_chars(len(text))


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message: its string content, or its text parts joined by spaces."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Approximate prompt tokens of a chat: every message's text plus a few tokens of framing each."""
    return sum(estimate_tokens(message_text(m)) + MESSAGE_OVERHEAD_TOKENS for m in messages if isinstance(m, Mapping))


__all__ = ["CHARS_PER_TOKEN", "MESSAGE_OVERHEAD_TOKENS", "estimate_prompt_tokens", "estimate_tokens", "message_text"]
