"""Reading answers: the options a prompt offers, the choice an answer makes, its code, its number, its JSON.

Pure string work (``re``, ``ast``, ``json``), shared by the acceptance signals
(:mod:`turnout.routing.acceptance`), the learned verifier and the offline cascade
simulation, so that an answer is read the same way live and offline.

Example::

    letters = offered_choices("Which is a metal?\\nA) wood\\nB) iron\\nAnswer:")   # {"A": "wood", "B": "iron"}
    extract_choice("B) iron", letters)                                          # "B"
    comparable("Which is a metal?\\nA) wood\\nB) iron", "iron")                   # "choice:B"
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

# An option line: "A) text", "(B) text", "C. text", "D: text" at the start of a line.
_OPTION = re.compile(r"^[ \t]*\(?([A-J])[\).:][ \t]+(\S.*?)[ \t]*$", re.MULTILINE)
# An answer that starts with a bare letter: "A", "A)", "(A)", "A.", "A\n", "A: because ...".
_LEAD = re.compile(r"^\W{0,2}\(?([A-J])\)?(?:$|[\s.,:;)!])")
# "the answer is (C)", "Answer: C", "correct option is C"
_SAID = re.compile(r"\b(?:answer|option|choice)\b[^A-Za-z0-9]{0,12}(?:is\W{0,3})?\(?([A-J])\)?(?:$|[\s.,:;)!])", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TAGGED = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|\Z)", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_CODE_ASK = re.compile(r"\b(?:function|program|script|class|method|code|implement|python)\b", re.IGNORECASE)
_CODE_LINE = re.compile(r"^\s*(?:def |class |import |from \S+ import |return\b|for .+:|if .+:)", re.MULTILINE)
#: languages a fenced block may name that are Python
PYTHON_TAGS = frozenset({"", "python", "py", "python3"})
#: the longest free-text answer that is still compared as a whole (longer texts are never "the same answer")
SHORT_TEXT = 64
#: prompts whose offered options are kept (a prompt is read for each of its answers, which come together;
#: few, as a cached prompt is held in memory)
CHOICES_CACHE = 32


def _lines(text: str) -> str:
    """``text`` with escaped line breaks read as line breaks.

    Some tables (RouterBench) store each prompt as the repr of a list, so its line
    breaks are the two characters ``\\n``; options sit on lines of their own only
    once those are read as line breaks.
    """
    return text.replace("\\r\\n", "\n").replace("\\n", "\n") if "\n" not in text else text


def offered_choices(prompt: str) -> dict[str, str]:
    """The lettered options of the prompt's *last* question (``{"A": "text", ...}``); empty when it has none.

    Few-shot prompts hold many questions with their options: the last run of
    consecutive letters (A, B, C, ...) is the question being asked. Fewer than two
    options is no multiple-choice question.
    """
    return dict(_choices(prompt))


@functools.lru_cache(maxsize=CHOICES_CACHE)
def _choices(prompt: str) -> tuple[tuple[str, str], ...]:
    """:func:`offered_choices` as an immutable value, cached: one long prompt is read for each of its answers."""
    runs: list[dict[str, str]] = []
    for m in _OPTION.finditer(_lines(prompt)):
        letter, text = m.group(1), m.group(2)
        if letter == "A":
            runs.append({"A": text})
        elif runs and ord(letter) == ord(max(runs[-1])) + 1:
            runs[-1][letter] = text
    return tuple(runs[-1].items()) if runs and len(runs[-1]) >= 2 else ()


def _plain(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def extract_choice(answer: str, options: Mapping[str, str]) -> str | None:
    """The one offered letter ``answer`` picks, or None (no letter, a letter not offered, or two options named).

    Read in order: a leading letter (``"B"``, ``"(B)"``, ``"B) iron"``), a stated one
    (``"the answer is B"``), then the option's own text (``"iron"``, or a prefix of
    at least 3 characters of exactly one option's text).
    """
    text = answer.strip()
    if not options or not text:
        return None
    lead = _LEAD.match(text)
    # "A dog ..." and "I do not know" start with a word, not a letter: a capital A or I followed by lowercase prose
    if lead and not (lead.group(1) in "AI" and re.match(r"\W{0,2}[AI]\s+[a-z]", text)) and lead.group(1) in options:
        return lead.group(1)
    said = _SAID.search(text)
    if said and said.group(1).upper() in options:
        return said.group(1).upper()
    words = _plain(text)
    if not words:
        return None
    exact = [k for k, v in options.items() if _plain(v) == words]
    if len(exact) == 1:
        return exact[0]
    prefix = [k for k, v in options.items() if len(words) >= 3 and _plain(v).startswith(words)]
    return prefix[0] if len(prefix) == 1 else None


def code_blocks(answer: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each code block in ``answer``: fenced (```lang) or ``[PYTHON]`` tagged.

    An answer with no block whose own lines read as Python code (``def``, ``import``,
    ``return`` ...) is one block of language ``""``. No code: an empty list.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(answer)]
    blocks += [("python", m.group(1)) for m in _TAGGED.finditer(answer)]
    if not blocks and _CODE_LINE.search(answer):
        blocks = [("", answer)]
    return blocks


def asks_for_code(prompt: str) -> bool:
    """True when the prompt reads as a request for code (it names a function, program, script, ...)."""
    return bool(_CODE_ASK.search(prompt)) and not offered_choices(prompt)


def parses_as_python(code: str) -> bool:
    """True when ``code`` is valid Python (after removing a common indentation)."""
    try:
        ast.parse(_dedent(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code.replace("\r\n", "\n")).strip("\n")


def python_code(answer: str) -> str | None:
    """The answer's solution code: its first Python block that defines something, else its first Python block.

    A block tagged with another language (```javascript) is not Python, and a block
    that is a REPL session (``>>> f(2)``) is an example of use, not the solution.
    None when no block is left.
    """
    code = [_dedent(c) for lang, c in code_blocks(answer) if lang in PYTHON_TAGS and not _dedent(c).lstrip().startswith(">>>")]
    defining = [c for c in code if re.search(r"^\s*(?:def|class|async def)\s", c, re.MULTILINE)]
    first = defining or code
    return first[0] if first else None


def normalized_code(code: str) -> str:
    """A form of ``code`` in which two programs that differ only in layout and comments are equal.

    The AST dump when the code parses; otherwise the code with its whitespace collapsed.
    """
    try:
        return ast.dump(ast.parse(_dedent(code)), annotate_fields=False)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(code.split())


def last_number(answer: str) -> str | None:
    """The last number in ``answer`` in a canonical form (``"1,000.50"`` -> ``"1000.5"``), or None."""
    found = _NUMBER.findall(answer)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        x = float(raw)
    except ValueError:
        return None
    return str(int(x)) if x.is_integer() else repr(x)


def comparable(prompt: str, answer: str) -> str | None:
    """A key under which two answers to ``prompt`` are the same answer; None when there is no such key.

    The choice for a multiple-choice prompt (``choice:B``); the normalised code when the
    answer has Python code (``code:...``); the last number for a short answer that has one
    (``number:42``); the answer's words for a short free-text answer (``text:...``). A long
    prose answer has no key: two such answers cannot be compared by their text.
    """
    options = offered_choices(prompt)
    if options:
        c = extract_choice(answer, options)
        return None if c is None else f"choice:{c}"
    code = python_code(answer)
    if code is not None:
        return f"code:{normalized_code(code)}"
    n = last_number(answer)
    if n is not None and (len(answer) <= 4 * SHORT_TEXT or "####" in answer):
        return f"number:{n}"
    words = _plain(answer)
    return f"text:{words}" if words and len(words) <= SHORT_TEXT else None


def json_value(answer: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``answer`` (or its one fenced block) is a JSON document, else ``(False, None)``."""
    text = answer.strip()
    blocks = _FENCE.findall(text)
    if len(blocks) == 1 and text.startswith("```"):
        text = blocks[0][1].strip()
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES.get(kind, object))


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the JSON Schema keywords structured outputs use); empty when it fits.

    Checked: ``type``, ``enum``, ``const``, ``properties``, ``required``,
    ``additionalProperties: false``, ``items``, ``minItems``/``maxItems``,
    ``minLength``/``maxLength``, ``minimum``/``maximum``, ``anyOf``/``oneOf``/``allOf``.
    Other keywords (``$ref``, ``pattern``, formats) are not checked: this is an
    acceptance signal, not a validator of record.
    """
    errs: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        options = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is_type(value, k) for k in options):
            return [f"{path}: not of type {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: not {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        errs += [f"{path}: lacks '{k}'" for k in schema.get("required") or () if k not in value]
        for k, v in value.items():
            if k in props:
                errs += schema_errors(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected '{k}'")
    if isinstance(value, list):
        if isinstance(schema.get("items"), Mapping):
            for i, v in enumerate(value):
                errs += schema_errors(v, schema["items"], f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errs.append(f"{path}: {len(value)} items")
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        errs.append(f"{path}: length {len(value)}")
    if _is_type(value, "number") and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        errs.append(f"{path}: {value} out of range")
    for sub in schema.get("allOf") or ():
        errs += schema_errors(value, sub, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            fits = sum(not schema_errors(value, s, path) for s in schema[key])
            if fits < 1 or (key == "oneOf" and fits > 1):
                errs.append(f"{path}: fits {fits} of {key}")
    return errs
