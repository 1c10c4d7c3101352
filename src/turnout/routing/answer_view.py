"""What an acceptance signal looks at (:class:`AnswerView`) and the signal protocol itself.

Kept apart from the signals (:mod:`turnout.routing.acceptance`) so that a signal defined elsewhere — the
learned verifier (:mod:`turnout.routing.verifier`) — depends on this small module, not on the registry that
names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class AnswerView:
    """What an acceptance signal may look at: one candidate answer and what came with it."""

    #: the user prompt text
    prompt: str
    #: the candidate answer text
    answer: str
    #: who answered
    model: str
    #: chosen-token log-probabilities, when the backend returned them
    token_logprobs: Sequence[float] | None = None
    #: logprob(top1) - logprob(top2) per token, when available
    top2_margins: Sequence[float] | None = None
    #: the request's ``response_format``, if any
    response_format: Mapping[str, Any] | None = None
    #: other answers to the same prompt (samples of the same model, or other models)
    others: Sequence[str] = ()
    #: who gave each of ``others`` (same order); empty when unknown (e.g. samples of one model)
    others_models: Sequence[str] = ()


#: the names a signal's ``needs`` may hold, each met when the view's field of that name is there
NEEDS = frozenset({"logprobs", "top2_margins", "response_format", "others"})


def available(view: AnswerView) -> frozenset[str]:
    """The needs ``view`` meets: ``logprobs``, ``top2_margins``, ``response_format``, ``others``."""
    have = {
        "logprobs": bool(view.token_logprobs),
        "top2_margins": bool(view.top2_margins),
        "response_format": view.response_format is not None,
        "others": bool(view.others),
    }
    return frozenset(k for k, ok in have.items() if ok)


@runtime_checkable
class AcceptanceSignal(Protocol):
    """A confidence in an answer. Implement ``name``, ``needs`` and ``confidence``.

    ``confidence`` returns a value in [0, 1] (higher: more likely good enough) or
    None when it cannot judge this answer (then a cascade escalates). It is only
    called on views that meet ``needs`` (see :func:`judge`).
    """

    name: str
    needs: frozenset[str]

    def confidence(self, view: AnswerView) -> float | None: ...


def judge(signal: AcceptanceSignal, view: AnswerView) -> float | None:
    """``signal``'s confidence in ``view``, or None when the view lacks what the signal needs.

    The result is clipped to [0, 1]; a NaN from a signal is None (it could not judge).
    """
    if not signal.needs <= available(view):
        return None
    c = signal.confidence(view)
    if c is None or math.isnan(c):
        return None
    return min(max(float(c), 0.0), 1.0)


__all__ = ["NEEDS", "AcceptanceSignal", "AnswerView", "available", "judge"]
