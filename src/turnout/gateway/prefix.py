"""The prefix key of a chat request: cumulative, message-aligned block hashes the balancers place it by.

:func:`prefix_key` cuts each message into blocks of ``block_chars`` characters (no block straddles two
messages) and hashes them cumulatively, so two prompts share block ``i``'s hash exactly when they share
the first ``i + 1`` blocks; ``anchor_blocks`` marks the end of the conversation root (the leading system
messages plus the first user message), which :mod:`turnout.gateway.balance`'s rings place a request by.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.errors import ConfigError
from turnout.tokens import CHARS_PER_TOKEN

#: characters per prefix block: ~128 tokens at ~4 characters a token
DEFAULT_BLOCK_CHARS = 512


@dataclass(frozen=True, slots=True)
class BalanceKey:
    """Per request, computed once by the gateway with :func:`prefix_key`.

    ``prefix_blocks`` are cumulative hashes of the whole prompt in message-aligned blocks;
    ``anchor_blocks`` how many of them cover the conversation root (system prompt + first user
    message), whose last hash places the request on the hash rings (0: use the last block).
    """

    prefix_blocks: tuple[int, ...]
    prompt_tokens: int
    session_id: str | None = None
    anchor_blocks: int = 0

    @property
    def affinity_hash(self) -> int | None:
        """The hash the rings use, or None for an empty prompt (then only load counts)."""
        if not self.prefix_blocks:
            return None
        n = self.anchor_blocks if 0 < self.anchor_blocks <= len(self.prefix_blocks) else len(self.prefix_blocks)
        return self.prefix_blocks[n - 1]


def _message_text(message: Mapping[str, Any] | Any) -> str:
    """One message as text for hashing: role, name, content (text parts; other parts as sorted JSON), tool calls."""
    if not isinstance(message, Mapping):
        return str(message)
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(
            p["text"] if isinstance(p, Mapping) and isinstance(p.get("text"), str) else json.dumps(p, sort_keys=True, default=str)
            for p in content
        )
    else:
        text = "" if content is None else json.dumps(content, sort_keys=True, default=str)
    extra = ""
    for field in ("name", "tool_call_id"):
        if message.get(field) is not None:
            extra += f"\x1f{field}={message[field]}"
    if message.get("tool_calls"):
        extra += "\x1f" + json.dumps(message["tool_calls"], sort_keys=True, default=str)
    # separators keep "user: ab" + "c" apart from "user: a" + "bc" across message boundaries
    return f"\x1e{message.get('role', '')}{extra}\x1f{text}"


def prefix_key(
    messages: Sequence[Mapping[str, Any]],
    *,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    session_id: str | None = None,
    chars_per_token: float = CHARS_PER_TOKEN,
) -> BalanceKey:
    """The :class:`BalanceKey` of a chat request: cumulative, message-aligned block hashes of its prompt.

    Hashes are BLAKE2b (not Python's salted ``hash``), so every gateway replica, in any process,
    maps a prompt to the same endpoints. Cost: a couple of microseconds per block.

    Example::

        k1 = prefix_key([{"role": "system", "content": sp}, {"role": "user", "content": "hi"}])
        k2 = prefix_key([{"role": "system", "content": sp}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}])
        assert k1.affinity_hash == k2.affinity_hash and k2.prefix_blocks[:len(k1.prefix_blocks)] == k1.prefix_blocks
    """
    if block_chars < 1:
        raise ConfigError(
            f"block_chars must be at least 1, got {block_chars}", fix="use a block of a few hundred characters (default 512)"
        )
    h = hashlib.blake2b(digest_size=8, person=b"turnout-prefix")
    blocks: list[int] = []
    anchor = 0
    chars = 0
    rooted = False  # the first user message has been hashed
    for message in messages:
        text = _message_text(message)
        chars += len(text)
        for start in range(0, len(text), block_chars):
            h.update(text[start : start + block_chars].encode("utf-8", "surrogatepass"))
            blocks.append(int.from_bytes(h.copy().digest(), "little"))
        if not rooted:
            anchor = len(blocks)
            rooted = isinstance(message, Mapping) and message.get("role") == "user"
    return BalanceKey(tuple(blocks), math.ceil(chars / chars_per_token), session_id, anchor)


__all__ = ["CHARS_PER_TOKEN", "DEFAULT_BLOCK_CHARS", "BalanceKey", "prefix_key"]
