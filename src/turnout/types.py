"""Typed requests, responses and decisions shared by every room.

These are plain dataclasses (cheap to build on the hot path). The OpenAI wire
schema, with its validation, lives in ``turnout.server.wire``; the gateway and
backends work with these types only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from turnout.tokens import message_text


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
                parts.extend(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                )
        return "\n".join(parts)

    def last_user_text(self) -> str:
        """The text of the last user message ("" when there is none)."""
        for m in reversed(self.messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return message_text(m)
        return ""

    def system_text(self) -> str:
        """The system (and developer) messages, joined by blank lines."""
        return "\n\n".join(
            message_text(m) for m in self.messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
        )

    def conversation_text(self) -> str:
        """Every message as ``role: text`` lines, in order: the whole conversation."""
        return "\n".join(f"{m.get('role', '')}: {message_text(m)}" for m in self.messages if isinstance(m, dict))

    def asked_max_tokens(self) -> int | None:
        """The most tokens the client lets one answer generate (``max_completion_tokens``, else ``max_tokens``),
        None when it set no positive integer bound."""
        asked = self.params.get("max_completion_tokens") or self.params.get("max_tokens")
        return asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None

    def asked_top_logprobs(self) -> int | None:
        """The ``top_logprobs`` the client asked for (0 when only ``logprobs: true``), None when it asked for no
        log-probabilities at all."""
        if self.params.get("logprobs") is not True:
            return None
        top = self.params.get("top_logprobs")
        return top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 0


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
            content: str | None = self.body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError):
            return None
        return content


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


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input and output tokens.

    >>> Price(2.5, 10.0).cost(1000, 500)
    0.0075
    """

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(slots=True)
class Candidate:
    """One model the policy considered, with its scores and why it was excluded."""

    model: str
    quality: float
    cost: float
    utility: float
    excluded: str | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """One structured reason of a decision: a short ``kind``, a human sentence, and the figures behind it.

    ``kind`` is a fixed word a program can filter on (``policy``, ``excluded``, ``budget``, ``passthrough``,
    ``fallback_skipped``, ``breaker_open``, ``rule``, ``guard``, ``cache``, ``redirect``, ``signal``, ``plan``);
    ``detail`` is what a person reads; ``data`` holds the numbers and names as JSON values.

    >>> Reason("excluded", "excluded big: not allowed", {"model": "big"}).detail
    'excluded big: not allowed'
    """

    kind: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail


#: plan kinds turnout's own executors serve; a plugin may register others
PLAN_SINGLE = "single"
PLAN_CASCADE = "cascade"
PLAN_FANOUT = "fanout"


@dataclass(slots=True)
class PlanStep:
    """One step of a plan: a model, the models tried after it on *failure*, and (cascades) its acceptance check.

    ``accept`` names an acceptance signal (``turnout.routing.acceptance``) and ``threshold`` the confidence
    under which the step's answer is rejected and the next step runs. Both are None for a single model or a
    fan-out member, and for a cascade's last step (its answer is always kept).
    """

    model: str
    fallbacks: list[str] = field(default_factory=list)
    accept: str | None = None
    threshold: float | None = None


@dataclass(slots=True)
class Plan:
    """What the gateway will call for one request.

    * ``single``: ``steps[0]``'s model, then its fallbacks on error (today's chain);
    * ``cascade``: the steps in order (cheap first); the next step runs only when the previous
      answer's acceptance confidence is below its threshold; every call is paid for;
    * ``fanout``: every step's model in parallel, one answer produced by ``aggregator``.

    ``params`` carries kind-specific settings (a fan-out's vote rule, a cascade's ``max_calls``).
    """

    kind: str
    steps: list[PlanStep]
    aggregator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def single(cls, model: str, fallbacks: list[str] | None = None) -> Plan:
        """Today's plan: one model with its ordered fallbacks."""
        return cls(PLAN_SINGLE, [PlanStep(model, list(fallbacks or []))])

    @property
    def models(self) -> list[str]:
        """Every model the plan may call, each once, in order (fallbacks included)."""
        seen: list[str] = []
        for step in self.steps:
            for m in (step.model, *step.fallbacks):
                if m not in seen:
                    seen.append(m)
        return seen


@dataclass(slots=True)
class Decision:
    """What was decided for one request, and why.

    ``model`` is the first model the plan calls and ``fallbacks`` the ordered models tried after it on
    error (for a ``single`` plan exactly ``plan.steps[0]``); ``candidates`` every model the router scored
    (excluded ones carry the reason); ``lam`` the cost weight in force (utility = quality - lam * cost).
    ``plan`` is what the gateway executes; ``signals`` the request signals that fed the decision;
    ``rule`` the decision rule that matched, if any; ``propensity`` the probability the policy gave the
    chosen action (1.0 for a deterministic choice: off-policy evaluation of logged traffic needs it);
    ``reasons`` the structured explanation, in order.
    """

    route: str
    model: str
    candidates: list[Candidate]
    lam: float
    router: str
    fallbacks: list[str] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    reasons: list[Reason] = field(default_factory=list)
    elapsed_ms: float = 0.0
    plan: Plan | None = None
    signals: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    propensity: float = 1.0

    def __post_init__(self) -> None:
        if self.plan is None:
            self.plan = Plan.single(self.model, self.fallbacks)

    def reason(self, kind: str, detail: str, **data: Any) -> None:
        """Append one structured reason."""
        self.reasons.append(Reason(kind, detail, data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = [
    "PLAN_CASCADE",
    "PLAN_FANOUT",
    "PLAN_SINGLE",
    "Candidate",
    "ChatRequest",
    "ChatResponse",
    "Decision",
    "Plan",
    "PlanStep",
    "Price",
    "Reason",
    "StreamChunk",
    "Usage",
]
