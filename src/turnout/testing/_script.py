"""The script model of the scripted provider: what to answer (:class:`Step`), when (:class:`Rule`), in what order.

Shared by both faces of :mod:`turnout.testing.scripted` (the in-process
backend and the loopback server) and by the wire bodies in
:mod:`turnout.testing._wire`; it imports neither, so nothing here is circular.
The fields are described in :mod:`turnout.testing.scripted`'s docstring.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from turnout.tokens import estimate_prompt_tokens
from turnout.types import ChatRequest, Usage

FAULTS = frozenset({"status", "reset", "cut", "malformed", "hang"})
_TOKEN = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Step:
    """How to answer one request (see the module docstring for each field)."""

    text: str = "Hello from the scripted backend."
    latency: float = 0.0
    slow: float = 0.0
    fault: str | None = None
    status: int = 500
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream_usage: bool = True
    tool_calls: tuple[dict[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; use one of {sorted(FAULTS)} or None")
        calls = tuple(dict(c) for c in self.tool_calls)
        for c in calls:
            if set(c) != {"id", "name", "arguments"}:
                raise ValueError(f"a scripted tool call needs exactly id, name and arguments (JSON text), got {sorted(c)}")
        object.__setattr__(self, "tool_calls", calls)  # a list from JSON becomes an immutable tuple

    @property
    def finish(self) -> str:
        """The OpenAI finish_reason of this answer."""
        return "tool_calls" if self.tool_calls else "stop"

    def tokens(self) -> list[str]:
        return _TOKEN.findall(self.text) or [""]

    def usage(self, messages: list[dict[str, Any]]) -> Usage:
        return Usage(
            self.prompt_tokens if self.prompt_tokens is not None else estimate_prompt_tokens(messages),
            self.completion_tokens if self.completion_tokens is not None else len(_TOKEN.findall(self.text)),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown step field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Rule:
    """Answer with ``step`` whenever ``match`` (a regex) is in the prompt and ``model`` (if set) matches."""

    match: str = ""
    step: Step = field(default_factory=Step)
    model: str | None = None


@dataclass
class RecordedRequest:
    """One request that reached the scripted provider, as received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    step: Step


class Script:
    """Rules, then a queue of one-shot steps, then a default step. Thread-safe."""

    def __init__(self, default: Step | None = None, *, queue: Sequence[Step] = (), rules: Sequence[Rule] = ()) -> None:
        self.default = default or Step()
        self.queue = list(queue)
        self.rules = list(rules)
        self._lock = threading.Lock()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Script:
        """Build from the JSON form shown in the module docstring."""
        rules = []
        for r in d.get("rules", []):
            rules.append(Rule(match=r.get("match", ""), model=r.get("model"), step=Step.from_dict(r.get("step", {}))))
        return cls(
            Step.from_dict(d.get("default", {})),
            queue=[Step.from_dict(s) for s in d.get("queue", [])],
            rules=rules,
        )

    @classmethod
    def coerce(cls, script: Script | Step | Sequence[Step] | dict[str, Any] | None) -> Script:
        """Accept a Script, one Step (the default), a list of Steps (a queue) or the JSON dict."""
        if script is None:
            return cls()
        if isinstance(script, Script):
            return script
        if isinstance(script, Step):
            return cls(script)
        if isinstance(script, dict):
            return cls.from_dict(script)
        return cls(queue=list(script))

    def next_step(self, prompt: str, model: str | None) -> Step:
        for rule in self.rules:
            if (rule.model is None or rule.model == model) and re.search(rule.match, prompt):
                return rule.step
        with self._lock:
            if self.queue:
                return self.queue.pop(0)
        return self.default


def prompt_of(messages: Any) -> str:
    """The text a rule's ``match`` is searched in: the user turns of ``messages`` (anything else gives "")."""
    if not isinstance(messages, list):
        return ""
    return ChatRequest(model="", messages=[m for m in messages if isinstance(m, dict)]).prompt_text()


__all__ = ["FAULTS", "RecordedRequest", "Rule", "Script", "Step", "prompt_of"]
