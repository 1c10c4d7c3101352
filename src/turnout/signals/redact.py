"""Redaction and restoration of PII spans, whole or streamed.

* :func:`redact` replaces spans with placeholders (``[EMAIL_1]``, stable within one :class:`PiiMapping`: the
  same value in two messages of a request gets the same placeholder) and returns the mapping;
* :func:`restore` puts the originals back into a model's answer ("redact before the request leaves and restore
  in the answer"); :class:`StreamRestorer` does the same on a streamed answer;
* :class:`StreamRedactor` redacts a streamed answer piece by piece. The concatenation of what it emits equals
  ``redact(whole_text, detector.find(whole_text))`` exactly, and it holds back only the tail where a match may
  still be growing: per recognizer at most its ``max_width`` (``PiiDetector.hold_bounds()``), and only where the
  tail can still be part of a match (a PEM key block is held from ``-----BEGIN`` to its END line or a cap).

Example::

    >>> from turnout.signals.pii import PiiDetector
    >>> detector = PiiDetector()
    >>> text = "Write to ann@example.org or ann@example.org"
    >>> redacted, mapping = redact(text, detector.find(text))
    >>> redacted
    'Write to [EMAIL_1] or [EMAIL_1]'
    >>> restore("I wrote to [EMAIL_1].", mapping)
    'I wrote to ann@example.org.'
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from turnout.signals._pii_types import PiiSpan, PiiType
from turnout.signals.pii import PiiDetector

#: ``placeholder``: ``[EMAIL_1]`` (restorable); ``type``: ``[EMAIL]``; ``mask``: as many ``*`` as characters
RedactStyle = Literal["placeholder", "type", "mask"]
STYLES: tuple[str, ...] = ("placeholder", "type", "mask")

_PLACEHOLDER = re.compile(r"\[(" + "|".join(t.value for t in PiiType) + r")_(\d{1,6})\]")
#: the longest placeholder: "[" + the longest type name + "_" + 6 digits + "]"
_MAX_PLACEHOLDER = 1 + max(len(t.value) for t in PiiType) + 1 + 6 + 1


@dataclass
class PiiMapping:
    """Placeholders given out in one request, both ways: ``originals[placeholder] == value``.

    Numbering is per type, in order of first appearance; the same (type, value) always gets the same
    placeholder, in every message of the request that shares the mapping.
    """

    originals: dict[str, str] = field(default_factory=dict)
    _by_value: dict[tuple[PiiType, str], str] = field(default_factory=dict, repr=False)
    _counts: dict[PiiType, int] = field(default_factory=dict, repr=False)

    def placeholder_for(self, type: PiiType, value: str) -> str:
        """The placeholder of ``value``, giving out the next number of its type the first time."""
        key = (type, value)
        found = self._by_value.get(key)
        if found is None:
            n = self._counts.get(type, 0) + 1
            self._counts[type] = n
            found = f"[{type.value}_{n}]"
            self._by_value[key] = found
            self.originals[found] = value
        return found

    def __len__(self) -> int:
        return len(self.originals)


def _replacement(span: PiiSpan, style: str, mapping: PiiMapping) -> str:
    if style == "placeholder":
        return mapping.placeholder_for(span.type, span.text)
    if style == "type":
        return f"[{span.type.value}]"
    return "*" * (span.end - span.start)


def _render(text: str, lo: int, hi: int, spans: Sequence[PiiSpan], style: str, mapping: PiiMapping) -> str:
    """``text[lo:hi]`` with every span (all within it, sorted, disjoint) replaced."""
    parts: list[str] = []
    pos = lo
    for span in spans:
        parts.append(text[pos : span.start])
        parts.append(_replacement(span, style, mapping))
        pos = span.end
    parts.append(text[pos:hi])
    return "".join(parts)


def redact(
    text: str, spans: Sequence[PiiSpan], style: RedactStyle = "placeholder", mapping: PiiMapping | None = None
) -> tuple[str, PiiMapping]:
    """Replace ``spans`` in ``text``; returns the new text and the mapping (extended in place when given).

    Spans must not overlap (``PiiDetector.find`` never returns overlapping ones); they may come in any order.
    """
    if style not in STYLES:
        raise ValueError(f"unknown redaction style {style!r} (use one of: {', '.join(STYLES)})")
    mapping = PiiMapping() if mapping is None else mapping
    ordered = sorted(spans, key=lambda s: s.start)
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise ValueError(f"overlapping spans {a.start}-{a.end} and {b.start}-{b.end}: resolve them first")
    return _render(text, 0, len(text), ordered, style, mapping), mapping


def restore(text: str, mapping: PiiMapping) -> str:
    """Put the originals back for every placeholder of ``mapping`` found in ``text``; others are left as they are.

    A placeholder the model altered (``[EMAIL 1]``, ``EMAIL_1``) is not restored: the answer keeps it as written.
    """
    if not mapping.originals:
        return text
    return _PLACEHOLDER.sub(lambda m: mapping.originals.get(m.group(), m.group()), text)


class StreamRedactor:
    """Redacts a streamed text: :meth:`feed` each piece, send what it returns, then send :meth:`flush`'s rest.

    ``"".join(feed(p) for p in pieces) + flush()`` equals ``redact(whole, detector.find(whole), style)[0]``,
    placeholders and their numbering included. ``mapping`` (shared with request-side redaction, or fresh) records
    what was replaced. One instance per stream; not thread-safe.
    """

    def __init__(self, detector: PiiDetector, style: RedactStyle = "placeholder", mapping: PiiMapping | None = None) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown redaction style {style!r} (use one of: {', '.join(STYLES)})")
        self.detector = detector
        self.style: RedactStyle = style
        self.mapping = PiiMapping() if mapping is None else mapping
        self.spans: list[PiiSpan] = []  # what was redacted so far, positions relative to the whole stream
        self._buf = ""  # kept left context + text not yet emitted
        self._ctx = 0  # how many leading characters of _buf were already emitted (context for lookbehinds)
        self._offset = 0  # position of _buf[0] in the whole stream

    @property
    def held(self) -> int:
        """How many characters are held back right now."""
        return len(self._buf) - self._ctx

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that is final (possibly empty)."""
        if piece:
            self._buf += piece
        return self._emit(final=False)

    def flush(self) -> str:
        """End of stream: return everything still held, redacted."""
        out = self._emit(final=True)
        self._buf, self._ctx = "", 0
        return out

    def _emit(self, final: bool) -> str:
        buf, lo = self._buf, self._ctx
        cut = len(buf) if final else self.detector.frontier(buf, lo)
        if cut <= lo:
            return ""
        scan = self.detector.scan(buf, lo)
        if not final:
            # never cut through a raw regex match, even a rejected one: the next scan must restart where the
            # whole-text scan would be between matches
            moved = True
            while moved:
                moved = False
                for a, b in scan.extents:
                    if a < cut < b:
                        cut, moved = a, True
            if cut <= lo:
                return ""
        spans = self.detector.resolve(buf, [c for c in scan.candidates if c.end <= cut])
        out = _render(buf, lo, cut, spans, self.style, self.mapping)
        self.spans.extend(
            PiiSpan(s.type, s.start + self._offset, s.end + self._offset, s.text, s.score, s.recognizer) for s in spans
        )
        keep = min(cut, self.detector.left_context)
        self._offset += cut - keep
        self._buf, self._ctx = buf[cut - keep :], keep
        return out


class StreamRestorer:
    """Restores placeholders in a streamed answer; holds back only a tail that may be a placeholder being written.

    ``"".join(feed(p) for p in pieces) + flush()`` equals ``restore(whole, mapping)``.
    """

    _PARTIAL = re.compile(r"\[[A-Z_]*\d*\Z")

    def __init__(self, mapping: PiiMapping) -> None:
        self.mapping = mapping
        self._buf = ""

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the restored text that is final."""
        self._buf += piece
        if not self.mapping.originals:
            out, self._buf = self._buf, ""
            return out
        hold = len(self._buf)
        start = self._buf.rfind("[", max(0, len(self._buf) - _MAX_PLACEHOLDER))
        if start >= 0 and self._PARTIAL.match(self._buf, start):
            hold = start
        out = restore(self._buf[:hold], self.mapping)
        self._buf = self._buf[hold:]
        return out

    def flush(self) -> str:
        """End of stream: the rest, restored."""
        out, self._buf = restore(self._buf, self.mapping), ""
        return out


__all__ = ["STYLES", "PiiMapping", "RedactStyle", "StreamRedactor", "StreamRestorer", "redact", "restore"]
