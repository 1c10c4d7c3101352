"""PII and secret detection: :class:`PiiDetector` finds spans of normalised types in a text.

Everything here is compiled regexes with validation (Luhn and issuer ranges for cards, mod-97 and the
country's length for IBANs, the SSA rules for SSNs, ``ipaddress`` for IPs, shape and context rules for phones,
entropy for generic secrets); nothing is downloaded and the core install needs no extra package. Persons,
street addresses and places come from word lists shipped in wheels (see ``_pii_names``) and are opt-in.

Example::

    >>> detector = PiiDetector()
    >>> [(s.type.value, s.text) for s in detector.find("Mail jo@example.com, card 4111 1111 1111 1111")]
    [('EMAIL', 'jo@example.com'), ('CREDIT_CARD', '4111 1111 1111 1111')]

The same detector drives :func:`turnout.signals.redact.redact` and the streaming
:class:`turnout.signals.redact.StreamRedactor`; both rely on two properties every recognizer keeps (checked
by the tests): a validator reads nothing right of its candidate, and overlapping finds are resolved within
their own cluster of overlapping candidates, so text far enough behind the end of a stream is final.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from turnout.errors import ConfigError
from turnout.signals._pii_names import place_recognizers
from turnout.signals._pii_patterns import LEFT_CONTEXT, Recognizer, structured_recognizers
from turnout.signals._pii_secrets import secret_recognizers
from turnout.signals._pii_types import STRUCTURED_TYPES, TYPE_ALIASES, PiiSpan, PiiType, normalise_type

#: what a detector looks for when no types are given: the structured types and secrets (no word lists needed)
DEFAULT_TYPES: frozenset[PiiType] = STRUCTURED_TYPES | {PiiType.SECRET}

#: the types a detector can look for (persons, addresses and places opt-in)
DETECTABLE_TYPES: frozenset[PiiType] = DEFAULT_TYPES | {PiiType.PERSON, PiiType.ADDRESS, PiiType.LOCATION}


def parse_types(names: Iterable[PiiType | str], *, key: str = "types") -> frozenset[PiiType]:
    """Normalise a list of type names (any alias); an unknown name is a :class:`ConfigError` naming ``key``."""
    out: set[PiiType] = set()
    for name in names:
        t = name if isinstance(name, PiiType) else normalise_type(name)
        if t is None or t not in DETECTABLE_TYPES:
            known = ", ".join(sorted(t.value for t in DETECTABLE_TYPES))
            raise ConfigError(f"unknown PII type {name!r}", key=key, fix=f"use one of: {known}")
        out.add(t)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class _Candidate:
    start: int
    end: int
    score: float
    recognizer: Recognizer


@dataclass(frozen=True, slots=True)
class Scan:
    """What one pass of every recognizer over a text found, before overlaps are resolved.

    ``extents`` are the raw regex matches (validated or not): streaming never cuts through one of them.
    """

    extents: list[tuple[int, int]]
    candidates: list[_Candidate] = field(default_factory=list)


class PiiDetector:
    """Finds PII and secrets in text; every span carries a normalised :class:`PiiType`.

    ``types``: what to look for (default :data:`DEFAULT_TYPES`; add ``PERSON``, ``ADDRESS``, ``LOCATION`` to use
    the word-list recognizers, which need ``pip install 'turnout[guards]'`` for persons). ``min_score``: finds scoring
    below it are dropped before overlaps are resolved (phone-shaped digits without a context word score 0.45).

    A detector is immutable and safe to share between requests and threads.
    """

    def __init__(self, types: Iterable[PiiType | str] | None = None, *, min_score: float = 0.5) -> None:
        self.types = DEFAULT_TYPES if types is None else parse_types(types)
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"min_score must be within [0, 1], got {min_score}", key="min_score")
        self.min_score = min_score
        pool = structured_recognizers() + secret_recognizers() + place_recognizers(self.types)
        self._recognizers: tuple[Recognizer, ...] = tuple(r for r in pool if r.type in self.types)
        #: how far back (characters) any validator or lookbehind reads: the streaming redactor keeps this much
        self.left_context = LEFT_CONTEXT + 8

    @property
    def recognizers(self) -> tuple[Recognizer, ...]:
        """The active recognizers, in no particular order (priority decides between overlapping finds)."""
        return self._recognizers

    def hold_bounds(self) -> dict[str, int]:
        """Each recognizer's longest reach in characters: the most a streamed answer is held back for it."""
        return {r.name: r.max_width for r in self._recognizers}

    def find(self, text: str) -> list[PiiSpan]:
        """Every PII span in ``text``, non-overlapping, in order of position."""
        return self.resolve(text, self.scan(text).candidates)

    def scan(self, text: str, pos: int = 0) -> Scan:
        """Run every recognizer over ``text[pos:]`` (lookbehinds and validators may read before ``pos``)."""
        extents: list[tuple[int, int]] = []
        candidates: list[_Candidate] = []
        for rec in self._recognizers:
            for m in rec.regex.finditer(text, pos):
                extents.append(m.span())
                for start, end, score in rec.validate(text, m):
                    if score >= self.min_score and end > start:
                        candidates.append(_Candidate(start, end, score, rec))
        return Scan(extents, candidates)

    @staticmethod
    def resolve(text: str, candidates: list[_Candidate]) -> list[PiiSpan]:
        """Keep non-overlapping finds: within each cluster of overlapping candidates, highest priority first,
        then highest score, then longest, then leftmost.

        Deciding cluster by cluster (never across a gap) is what lets a stream finalise its head early.
        """
        chosen: list[_Candidate] = []
        ordered = sorted(candidates, key=lambda c: (c.start, -c.end))
        i = 0
        while i < len(ordered):
            cluster = [ordered[i]]
            reach = ordered[i].end
            i += 1
            while i < len(ordered) and ordered[i].start < reach:
                cluster.append(ordered[i])
                reach = max(reach, ordered[i].end)
                i += 1
            kept: list[_Candidate] = []
            for c in sorted(cluster, key=lambda c: (-c.recognizer.priority, -c.score, c.start - c.end, c.start)):
                if all(c.end <= k.start or k.end <= c.start for k in kept):
                    kept.append(c)
            chosen.extend(kept)
        chosen.sort(key=lambda c: c.start)
        return [
            PiiSpan(c.recognizer.type, c.start, c.end, text[c.start : c.end], round(c.score, 3), c.recognizer.name)
            for c in chosen
        ]

    def frontier(self, text: str, lo: int) -> int:
        """The earliest position in ``text[lo:]`` where a match may still be growing (``len(text)`` if none).

        Text before it is final: more text cannot change which spans start there. Each recognizer looks back at
        most its ``max_width`` and only where its ``prefix`` accepts the whole tail.
        """
        n = len(text)
        edge = n
        for rec in self._recognizers:
            m = rec.prefix.search(text, max(lo, n - rec.max_width), n)
            if m is not None and m.start() < edge:
                edge = m.start()
        return edge


__all__ = [
    "DEFAULT_TYPES",
    "DETECTABLE_TYPES",
    "STRUCTURED_TYPES",
    "TYPE_ALIASES",
    "PiiDetector",
    "PiiSpan",
    "PiiType",
    "Scan",
    "normalise_type",
    "parse_types",
]
