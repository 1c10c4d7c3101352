"""What may be cached: which requests look the cache up, which answers are stored.

A cache that does not lie stores only answers that the same request would
plausibly get again, and serves them only to requests that asked for one
answer. The rules, each with the reason a skipped request or answer is logged
with:

Requests (:meth:`CachePolicy.request_reason`; a skipped request neither looks
up nor stores):

* ``n`` > 1: several samples were asked for; one cached answer is not that.
* an explicit ``temperature`` above ``max_temperature`` (default 1.0): the
  client asked for variety. A request *without* a temperature is cached: it
  did not ask for sampling, and a route that opted into the cache accepts one
  answer per question. Set ``max_temperature`` to 0 to cache only greedy
  requests, or None to lift the bound.

Answers (:meth:`CachePolicy.answer_reason`):

* exactly one choice, whose ``finish_reason`` is in ``finish_reasons``
  (default ``stop`` only: a ``length`` answer was cut off by ``max_tokens``,
  and a ``content_filter`` one is not an answer);
* a text ``content`` (not None) and no ``function_call``;
* no ``tool_calls`` unless ``cache_tool_calls`` (off by default: a tool call
  is an action the client will take, and its call ids would be replayed).
  The tools and tool choice are always in the fingerprint, so turning it on
  never serves a call made for other tools;
* at most ``max_answer_chars`` characters of content (default 32,000), which
  bounds the memory an entry can take.

Example::

    policy = CachePolicy()
    policy.request_reason(ChatRequest("auto", msgs, params={"temperature": 1.5}))
    # 'temperature 1.5 is above the cache bound 1'
    policy.answer_reason(body)   # None: cacheable
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnout.types import ChatRequest


@dataclass(frozen=True)
class CachePolicy:
    """The rules above, as settings. Stateless; one per cache."""

    max_temperature: float | None = 1.0
    finish_reasons: frozenset[str] = field(default_factory=lambda: frozenset({"stop"}))
    cache_tool_calls: bool = False
    max_answer_chars: int | None = 32_000

    def __post_init__(self) -> None:
        if self.max_temperature is not None and self.max_temperature < 0:
            raise ValueError(f"max_temperature must be >= 0 or None, got {self.max_temperature}")
        if self.max_answer_chars is not None and self.max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be >= 1 or None, got {self.max_answer_chars}")
        if not isinstance(self.finish_reasons, frozenset):  # accept any collection (a YAML list), keep it hashable
            object.__setattr__(self, "finish_reasons", frozenset(str(v) for v in self.finish_reasons))

    def request_reason(self, request: ChatRequest) -> str | None:
        """Why ``request`` must bypass the cache, or None when it may look up and store."""
        n = request.params.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            return f"n={n} asks for several answers"
        temperature = request.params.get("temperature")
        if (
            self.max_temperature is not None
            and isinstance(temperature, (int, float))
            and not isinstance(temperature, bool)
            and temperature > self.max_temperature
        ):
            return f"temperature {temperature:g} is above the cache bound {self.max_temperature:g}"
        return None

    def answer_reason(self, body: Any) -> str | None:
        """Why the ``chat.completion`` ``body`` must not be stored, or None when it may."""
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return "the answer does not have exactly one choice"
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish not in self.finish_reasons:
            return f"finish_reason {finish!r} is not cached (cached: {', '.join(sorted(self.finish_reasons))})"
        message = choice.get("message")
        if not isinstance(message, dict):
            return "the answer has no message"
        if message.get("tool_calls") and not self.cache_tool_calls:
            return "tool calls are not cached (cache_tool_calls is off)"
        if message.get("function_call"):
            return "legacy function calls are not cached"
        content = message.get("content")
        if not isinstance(content, str) and not message.get("tool_calls"):
            return "the answer has no text content"
        if self.max_answer_chars is not None and isinstance(content, str) and len(content) > self.max_answer_chars:
            return f"the answer's {len(content)} characters exceed max_answer_chars {self.max_answer_chars}"
        return None


__all__ = ["CachePolicy"]
