"""The ``structure`` signal: does the prompt hold code, math or JSON? Regular expressions, no model.

Outputs (for a signal named ``st``):

* ``st.code`` — a fenced block (```` ``` ````), or at least ``min_code_lines`` lines that read as code
  (``def``/``class``/``import``/``#include``/``function``/``SELECT`` openings, lines ending in ``;``, ``{``
  or ``}``, ``=>``, shell prompts);
* ``st.code_blocks`` — fenced blocks;
* ``st.math`` — LaTeX (``\\frac``, ``\\int``, ``$...$`` with an operator inside), math symbols
  (∫ ∑ √ ≤ ≠ ...), or arithmetic on numbers and powers (``3 * (4 + 5)``, ``x^2``);
* ``st.json`` — a JSON object or array (of at least one member) parses somewhere in the text (the
  first ``{``/``[`` to the last ``}``/``]``, or a fenced ``json`` block), within ``max_json_chars``.

A heuristic, measured on hand-labelled prompts in ``tests/signals/test_signals_heuristic.py``; it is
meant to split traffic, not to be a parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from turnout.signals.base import BuildContext, Output, RequestView, Signal, Value, view_text
from turnout.signals.heuristic import _check_text
from turnout.signals.registry import param_error

_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)
_FENCED_JSON = re.compile(r"```json[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_CODE_LINE = re.compile(
    r"^[ \t]*(?:(?:def|class|import|from\s+[\w.]+\s+import|function|fn|func|const|let|var|public|private|static|"
    r"return|#include|#define|package|using|SELECT|INSERT|UPDATE|DELETE|CREATE)\b"
    r"|[$>]\s+(?:sudo|pip|npm|git|cd|ls|python|docker|kubectl)\b"
    r"|.*(?:;|\{|\}|=>|\):)[ \t]*$)",
    re.MULTILINE,
)
_MATH = re.compile(
    r"\\(?:frac|sqrt|int|iint|oint|sum|prod|lim|cdot|times|infty|partial|nabla|mathbb|mathrm|begin\{(?:equation|align))"
    r"|[∫∑∏√∞≤≥≠±∂∇∈∉⊂⊆∪∩≈≡]"
    r"|\$[^$\n]*[=+\-*/^_\\][^$\n]*\$"
    r"|\b\d+(?:\.\d+)?\s*[-+*/×÷^]\s*\(?\s*\d"
    r"|\b[a-zA-Z]\s*\^\s*\(?[\d a-z]"
    r"|\b\d*[a-z]\s*[+\-]\s*\d+\s*=\s*-?\d"
)


class StructureSignal(Signal):
    """Code, math and JSON in the prompt (module docstring); ``text`` picks the view (default: user turns)."""

    type_name = "structure"

    def __init__(
        self,
        name: str,
        text: str = "prompt",
        min_code_lines: int = 2,
        max_json_chars: int = 100_000,
        build: BuildContext | None = None,
    ) -> None:
        super().__init__(name)
        self._text = _check_text(text)
        if not isinstance(min_code_lines, int) or min_code_lines < 1:
            raise param_error("min_code_lines must be an integer >= 1", "min_code_lines", "write e.g. 2")
        if not isinstance(max_json_chars, int) or max_json_chars < 2:
            raise param_error("max_json_chars must be an integer >= 2", "max_json_chars", "write e.g. 100000")
        self._min_lines = min_code_lines
        self._max_json = max_json_chars
        self.outputs.update(
            {
                f"{name}.code": Output("bool", "code: a fenced block or lines that read as code"),
                f"{name}.code_blocks": Output("number", "fenced code blocks", lo=0),
                f"{name}.math": Output("bool", "math: LaTeX, math symbols or arithmetic"),
                f"{name}.json": Output("bool", "a JSON object or array parses in the text"),
            }
        )

    def extract(self, view: RequestView) -> dict[str, Value]:
        text = view_text(view, self._text)
        n = self.name
        fences = len(_FENCE.findall(text)) // 2
        code = fences > 0 or _enough(_CODE_LINE.finditer(text), self._min_lines)
        return {
            f"{n}.code": code,
            f"{n}.code_blocks": fences,
            f"{n}.math": _MATH.search(text) is not None,
            f"{n}.json": self._has_json(text),
        }

    def _has_json(self, text: str) -> bool:
        for block in _FENCED_JSON.findall(text):
            if _parses(block):
                return True
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        if not starts:
            return False
        start = min(starts)
        end = max(text.rfind("}"), text.rfind("]"))
        if end <= start or end - start + 1 > self._max_json:
            return False
        return _parses(text[start : end + 1])


def _enough(matches: Iterator[re.Match[str]], n: int) -> bool:
    return any(count >= n for count, _ in enumerate(matches, 1))


def _parses(candidate: str) -> bool:
    try:
        value = json.loads(candidate)
    except ValueError:
        return False
    return isinstance(value, (dict, list)) and len(value) > 0


__all__ = ["StructureSignal"]
