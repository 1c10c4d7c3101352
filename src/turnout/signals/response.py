"""Response-side checks: a hook the gateway runs on every answer, whole or streamed.

A :class:`ResponseCheck` looks at an answer and returns a :class:`ResponseVerdict` (pass it, pass a modified text,
or block it). For streams it hands out a :class:`StreamCheck`, fed piece by piece, that returns what may be sent
now; what it emits over the whole stream equals ``check(whole).text``. :class:`PiiResponseCheck` is the first
such check (redact secrets and PII); later ones (hallucination, response jailbreak) implement the same protocol.

Example::

    >>> check = PiiResponseCheck.default()
    >>> check.check("the key is sk-abc123def456ghi789jkl012mno").text
    'the key is [SECRET]'
    >>> stream = check.stream()
    >>> "".join([stream.feed("the key is sk-abc123"), stream.feed("def456ghi789jkl012mno"), stream.flush()])
    'the key is [SECRET]'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from turnout.signals._pii_types import PiiType
from turnout.signals.pii import PiiDetector
from turnout.signals.redact import RedactStyle, StreamRedactor, redact


class ResponseAction(StrEnum):
    """What the gateway does with an answer."""

    PASS = "pass"
    MODIFY = "modify"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class ResponseVerdict:
    """The outcome of one check on one answer: ``text`` is what to send (the original when ``PASS``)."""

    check: str
    action: ResponseAction
    text: str
    findings: dict[str, int] = field(default_factory=dict)
    reason: str = ""


@runtime_checkable
class StreamCheck(Protocol):
    """One streamed answer under one check: ``feed`` returns what may be sent now, ``flush`` the rest at the end."""

    def feed(self, piece: str) -> str: ...

    def flush(self) -> str: ...

    def verdict(self) -> ResponseVerdict:
        """The outcome once flushed (its ``text`` is empty: the text went out piece by piece)."""
        ...


@runtime_checkable
class ResponseCheck(Protocol):
    """A check on answers. ``name`` labels logs and metrics; ``check`` takes a whole answer; ``stream`` starts one
    streamed answer. Implementations are immutable and shared by all requests."""

    name: str

    def check(self, text: str) -> ResponseVerdict: ...

    def stream(self) -> StreamCheck: ...


class PiiResponseCheck:
    """Redacts secrets and PII in answers (``[SECRET]``-style by default: nothing for a client to restore)."""

    name = "pii"

    def __init__(self, detector: PiiDetector, style: RedactStyle = "type") -> None:
        self.detector = detector
        self.style: RedactStyle = style

    @classmethod
    def default(cls, types: Iterable[PiiType | str] = ("SECRET", "CREDIT_CARD", "IBAN", "SSN")) -> PiiResponseCheck:
        """Secrets and financial identifiers; e-mails and phones in answers are often the user's own, left as is."""
        return cls(PiiDetector(types))

    def check(self, text: str) -> ResponseVerdict:
        """Redact a whole answer."""
        spans = self.detector.find(text)
        if not spans:
            return ResponseVerdict(self.name, ResponseAction.PASS, text)
        redacted, _ = redact(text, spans, self.style)
        counts = dict(sorted(Counter(s.type.value for s in spans).items()))
        return ResponseVerdict(self.name, ResponseAction.MODIFY, redacted, counts, _reason(counts))

    def stream(self) -> _PiiStream:
        """Start one streamed answer."""
        return _PiiStream(StreamRedactor(self.detector, self.style), self.name)


class _PiiStream:
    def __init__(self, redactor: StreamRedactor, name: str) -> None:
        self._redactor = redactor
        self._name = name

    def feed(self, piece: str) -> str:
        return self._redactor.feed(piece)

    def flush(self) -> str:
        return self._redactor.flush()

    def verdict(self) -> ResponseVerdict:
        counts = dict(sorted(Counter(s.type.value for s in self._redactor.spans).items()))
        action = ResponseAction.MODIFY if counts else ResponseAction.PASS
        return ResponseVerdict(self._name, action, "", counts, _reason(counts) if counts else "")


def _reason(counts: dict[str, int]) -> str:
    return "redacted " + ", ".join(f"{t} x{n}" for t, n in counts.items())


__all__ = ["PiiResponseCheck", "ResponseAction", "ResponseCheck", "ResponseVerdict", "StreamCheck"]
