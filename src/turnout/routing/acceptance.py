"""Acceptance signals: how sure may a cascade be that an answer it already paid for is good enough?

A cascade asks models from cheap to strong and stops at the first answer it
accepts. What it may look at is an :class:`AnswerView` (the prompt, the answer,
who answered, and what the backend or earlier calls returned beside it); an
:class:`AcceptanceSignal` turns that into a confidence in [0, 1], or ``None``
when it cannot judge. The same signals run live (the gateway's cascade plan)
and offline (:mod:`turnout.evaluation.cascade`, on tables that carry answers).

**None means "cannot judge", and a cascade escalates on it**: a signal that cannot
vouch for an answer does not accept it (the last step of a cascade is always
accepted). A signal whose ``needs`` the view does not meet is not asked at all
(:func:`judge` returns None for it), so a log-prob signal over a backend that
returns no log-probs costs nothing and escalates. Pure functions: no I/O.

Built-in signals (:func:`signal_names`): ``logprob_mean``, ``logprob_min``, ``margin``
(token log-probabilities), ``agreement`` (with other answers: samples or other models),
``choice`` (a multiple-choice answer names one offered option), ``code_parses``
(Python code that parses), ``json_schema`` (valid JSON for the request's
``response_format``) and ``verifier`` (a learned model, :mod:`turnout.routing.verifier`).

Example::

    from turnout.routing.acceptance import AnswerView, create_signal, judge

    view = AnswerView(prompt="Which is a metal?\\nA) wood\\nB) iron", answer="B", model="small",
                      others=("B) iron",))
    judge(create_signal("agreement"), view)   # 1.0: the other answer picks B too
    judge(create_signal("logprob_mean"), view)  # None: the backend returned no log-probs
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout.errors import RoutingError
from turnout.routing import answers
from turnout.routing.answer_view import NEEDS, AcceptanceSignal, AnswerView, available, judge


@dataclass
class LogprobMean:
    """The answer's per-token geometric mean probability: exp(mean chosen-token log-prob)."""

    name: str = "logprob_mean"
    needs: frozenset[str] = frozenset({"logprobs"})

    def confidence(self, view: AnswerView) -> float | None:
        lp = list(view.token_logprobs or ())
        return math.exp(sum(lp) / len(lp)) if lp else None


@dataclass
class LogprobMin:
    """The probability of the answer's least likely token: exp(min chosen-token log-prob).

    One token the model was unsure of (a digit, a name) is what a mean hides.
    """

    name: str = "logprob_min"
    needs: frozenset[str] = frozenset({"logprobs"})

    def confidence(self, view: AnswerView) -> float | None:
        lp = list(view.token_logprobs or ())
        return math.exp(min(lp)) if lp else None


@dataclass
class Margin:
    """How far the model's first choice led its second, per token: the mean of tanh(margin / 2).

    tanh(m/2) = (p1 - p2) / (p1 + p2) for the top two tokens: 0 when they tie,
    near 1 when the first dominates.
    """

    name: str = "margin"
    needs: frozenset[str] = frozenset({"top2_margins"})

    def confidence(self, view: AnswerView) -> float | None:
        ms = [max(float(m), 0.0) for m in view.top2_margins or ()]
        return sum(math.tanh(m / 2) for m in ms) / len(ms) if ms else None


@dataclass
class Agreement:
    """The share of the other answers that give the same answer (self-consistency, or ACAR's σ-probe).

    Answers are compared under :func:`turnout.routing.answers.comparable`: the
    extracted choice for a multiple-choice prompt, AST-normalised code, the last
    number of a short answer, or the words of a short answer. None when the
    answer has no such key (long prose); another answer without one disagrees.
    """

    name: str = "agreement"
    needs: frozenset[str] = frozenset({"others"})

    def confidence(self, view: AnswerView) -> float | None:
        key = answers.comparable(view.prompt, view.answer)
        if key is None:
            return None
        return sum(answers.comparable(view.prompt, o) == key for o in view.others) / len(view.others)


@dataclass
class Choice:
    """For a multiple-choice prompt: 1 when the answer names exactly one offered option, else 0.

    None when the prompt offers no lettered options. It catches refusals and
    rambling ("I do not have enough context"), not wrong picks.
    """

    name: str = "choice"
    needs: frozenset[str] = frozenset()

    def confidence(self, view: AnswerView) -> float | None:
        options = answers.offered_choices(view.prompt)
        if not options:
            return None
        return 1.0 if answers.extract_choice(view.answer, options) is not None else 0.0


@dataclass
class CodeParses:
    """1 when the answer's code is Python that parses; 0 when its code does not parse or is another language.

    A prompt that asks for code (a function, a program, ...) answered with no
    code at all is 0; an answer with no code to a prompt that asks for none is
    None (nothing to judge).
    """

    name: str = "code_parses"
    needs: frozenset[str] = frozenset()

    def confidence(self, view: AnswerView) -> float | None:
        code = answers.python_code(view.answer)
        if code is not None:
            return 1.0 if answers.parses_as_python(code) else 0.0
        if answers.code_blocks(view.answer) or answers.asks_for_code(view.prompt):
            return 0.0  # code in another language, or none where some was asked for
        return None


@dataclass
class JsonSchema:
    """For a request with a JSON ``response_format``: 1 when the answer is JSON that fits it, else 0.

    ``{"type": "json_object"}`` asks for a JSON object; ``{"type": "json_schema",
    "json_schema": {"schema": {...}}}`` for a value that fits the schema
    (:func:`turnout.routing.answers.schema_errors`). None for ``{"type": "text"}``.
    """

    name: str = "json_schema"
    needs: frozenset[str] = frozenset({"response_format"})

    def confidence(self, view: AnswerView) -> float | None:
        fmt = view.response_format or {}
        kind = fmt.get("type")
        if kind not in ("json_object", "json_schema"):
            return None
        ok, value = answers.json_value(view.answer)
        if not ok:
            return 0.0
        if kind == "json_object":
            return 1.0 if isinstance(value, dict) else 0.0
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, Mapping):
            return 1.0  # a schema-less json_schema request: any JSON document fits
        return 0.0 if answers.schema_errors(value, schema) else 1.0


@dataclass
class AllOf:
    """The lowest confidence among ``signals`` that can judge the view (None when none can).

    For gates that must all hold, e.g. a JSON answer that must also be likely:
    ``AllOf((JsonSchema(), LogprobMean()))``.
    """

    signals: tuple[AcceptanceSignal, ...]
    name: str = "all_of"
    needs: frozenset[str] = frozenset()

    def confidence(self, view: AnswerView) -> float | None:
        seen = [c for s in self.signals if (c := judge(s, view)) is not None]
        return min(seen) if seen else None


SignalFactory = Callable[..., AcceptanceSignal]


def _verifier(**params: Any) -> AcceptanceSignal:
    from turnout.routing.verifier import VerifierSignal

    return VerifierSignal.from_params(**params)


_FACTORIES: dict[str, SignalFactory] = {
    "logprob_mean": LogprobMean,
    "logprob_min": LogprobMin,
    "margin": Margin,
    "agreement": Agreement,
    "choice": Choice,
    "code_parses": CodeParses,
    "json_schema": JsonSchema,
    "verifier": _verifier,
}


class SignalRegistry:
    """Acceptance signals by name, so config can name them; built-ins register like plugins.

    Example::

        registry = SignalRegistry()
        registry.register("always", lambda: MySignal())
        registry.create("choice")
    """

    def __init__(self, factories: Mapping[str, SignalFactory] | None = None) -> None:
        self._factories: dict[str, SignalFactory] = dict(_FACTORIES if factories is None else factories)

    def register(self, name: str, factory: SignalFactory) -> None:
        """Make ``factory(**params)`` creatable as ``name``; a name already taken is an error."""
        if name in self._factories and self._factories[name] is not factory:
            raise RoutingError(f"acceptance signal '{name}' is already registered")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Every registered signal name, sorted."""
        return sorted(self._factories)

    def create(self, name: str, **params: Any) -> AcceptanceSignal:
        """The signal registered as ``name``, built with ``params`` (the verifier needs ``artifact=PATH``)."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise RoutingError(f"unknown acceptance signal '{name}'; choose one of: {', '.join(self.names())}") from None
        try:
            return factory(**params)
        except TypeError as exc:
            raise RoutingError(f"acceptance signal '{name}': invalid parameters {params}: {exc}") from exc


DEFAULT_SIGNALS = SignalRegistry()


def create_signal(name: str, **params: Any) -> AcceptanceSignal:
    """An acceptance signal by name from the default registry, e.g. ``create_signal("agreement")``."""
    return DEFAULT_SIGNALS.create(name, **params)


def signal_names() -> list[str]:
    """Names accepted by :func:`create_signal`."""
    return DEFAULT_SIGNALS.names()


def register_signal(name: str, factory: SignalFactory) -> None:
    """Register a signal factory in the default registry (plugins use this)."""
    DEFAULT_SIGNALS.register(name, factory)


__all__ = [
    "DEFAULT_SIGNALS",
    "NEEDS",
    "AcceptanceSignal",
    "Agreement",
    "AllOf",
    "AnswerView",
    "Choice",
    "CodeParses",
    "JsonSchema",
    "LogprobMean",
    "LogprobMin",
    "Margin",
    "SignalFactory",
    "SignalRegistry",
    "available",
    "create_signal",
    "judge",
    "register_signal",
    "signal_names",
]
