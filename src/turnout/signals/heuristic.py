"""Cheap request signals read straight from the request: no model, microseconds, run on the event loop.

* ``keywords``: named sets of words and phrases, matched on word boundaries (case-insensitive unless a set
  says otherwise);
* ``regex``: named regular expressions (compiled at start-up: one that does not compile is a config error);
* ``tokens``: estimated tokens of the whole conversation, the last user message and the system prompt;
* ``conversation``: depth (user turns), messages, the roles present, tool results;
* ``request``: images, tools, ``response_format``, streaming, the model asked for, ``max_tokens``;
* ``key``: the API key's name, team and tags;
* ``metadata``: request headers: ``x-turnout-tags`` and any ``x-*`` header given an alias.

Structure (code, math, JSON) is in :mod:`turnout.signals.structure`, language in
:mod:`turnout.signals.language`.

Example (``turnout.yaml``)::

    signals:
      kw: {type: keywords, params: {sets: {code: [python, "stack trace", c++], legal: [contract, lawsuit]}}}
      rx: {type: regex, params: {patterns: {ticket: "\\\\bTCK-\\\\d{4,}\\\\b"}}}
      tokens: {type: tokens}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from turnout.signals.base import TEXT_VIEWS, BuildContext, Output, RequestView, Signal, Value, view_text
from turnout.signals.registry import param_error
from turnout.tokens import estimate_prompt_tokens, estimate_tokens

#: the header whose comma-separated values are a request's tags
TAGS_HEADER = "x-turnout-tags"
#: the roles a chat message may have
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: response_format types (and "none" when the request gives none)
RESPONSE_FORMATS = frozenset({"none", "text", "json_object", "json_schema"})


def _check_text(text: str) -> str:
    if text not in TEXT_VIEWS:
        raise param_error(f"text {text!r} is not a text view", "text", f"use one of: {', '.join(TEXT_VIEWS)}")
    return text


def _check_sets(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise param_error(
            f"{param} must be a mapping of names to entries, with at least one", param, f"write {param}: {{name: ...}}"
        )
    for set_name in value:
        if not isinstance(set_name, str) or not re.fullmatch(r"[a-z0-9_]+", set_name):
            raise param_error(
                f"{set_name!r} is not a valid name (it becomes part of an output name)",
                f"{param}.{set_name}",
                "use lower-case letters, digits and '_'",
            )
    return dict(value)


class _SetSignal(Signal):
    """A signal of named sets: output ``name`` is the set of names that matched, ``name.<set>`` each as a bool."""

    def __init__(self, name: str, sets: Sequence[str], what: str) -> None:
        super().__init__(name)
        names = frozenset(sets)
        self.outputs[name] = Output("labels", f"the {what} that matched", choices=names)
        for s in sets:
            self.outputs[f"{name}.{s}"] = Output("bool", f"whether {what} {s!r} matched", member_of=(name, s))
        self._names = list(sets)
        self._patterns: list[re.Pattern[str]] = []
        self._text = "prompt"

    def extract(self, view: RequestView) -> dict[str, Value]:
        text = view_text(view, self._text)
        hit = [n for n, p in zip(self._names, self._patterns) if p.search(text) is not None]
        out: dict[str, Value] = {self.name: frozenset(hit)}
        for n in self._names:
            out[f"{self.name}.{n}"] = n in hit
        return out


class KeywordSignal(_SetSignal):
    """Named sets of keywords and phrases, each set one regular expression with word boundaries.

    ``sets``: ``{name: [word, "a phrase", ...]}`` or ``{name: {words: [...], case_sensitive: true,
    whole_words: false}}``. A keyword matches where it is not preceded or followed by a letter, digit or
    ``_`` (so ``c++`` and ``#include`` work, and ``cat`` does not match ``concatenate``); spaces in a phrase
    match any run of white space. ``case_sensitive`` (default false) and ``text`` (``prompt``: the user
    turns; ``last``, ``system``, ``conversation``) apply to every set unless a set overrides the case.
    """

    type_name = "keywords"

    def __init__(
        self,
        name: str,
        sets: Mapping[str, Any],
        case_sensitive: bool = False,
        text: str = "prompt",
        build: BuildContext | None = None,
    ) -> None:
        checked = _check_sets(sets, "sets")
        super().__init__(name, list(checked), "keyword set")
        self._text = _check_text(text)
        for set_name, entry in checked.items():
            words, case, whole = entry, case_sensitive, True
            if isinstance(entry, Mapping):
                extra = sorted(set(entry) - {"words", "case_sensitive", "whole_words"})
                if extra:
                    raise param_error(
                        f"unknown key {extra[0]!r}",
                        f"sets.{set_name}.{extra[0]}",
                        "a set is a list of words, or {words: [...], case_sensitive, whole_words}",
                    )
                words = entry.get("words")
                case = bool(entry.get("case_sensitive", case_sensitive))
                whole = bool(entry.get("whole_words", True))
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise param_error(
                    f"keyword set {set_name!r} must be a non-empty list of non-empty strings",
                    f"sets.{set_name}",
                    'write e.g. code: [python, "stack trace"]',
                )
            # longest first: the alternation then prefers "stack trace" over "stack" (the match is the same bool,
            # but the regex engine stops sooner on the common prefix)
            alts = "|".join(r"\s+".join(map(re.escape, w.split())) for w in sorted(set(words), key=len, reverse=True))
            body = rf"(?<!\w)(?:{alts})(?!\w)" if whole else f"(?:{alts})"
            self._patterns.append(re.compile(body, 0 if case else re.IGNORECASE))


class RegexSignal(_SetSignal):
    """Named regular expressions (Python syntax), compiled at start-up; a match anywhere counts.

    ``patterns``: ``{name: "regex"}`` or ``{name: {pattern: "regex", case_sensitive: false}}``. Case is as
    written unless ``case_sensitive: false`` (for all, or per pattern); ``(?i)`` inside a pattern works too.
    """

    type_name = "regex"

    def __init__(
        self,
        name: str,
        patterns: Mapping[str, Any],
        case_sensitive: bool = True,
        text: str = "prompt",
        build: BuildContext | None = None,
    ) -> None:
        checked = _check_sets(patterns, "patterns")
        super().__init__(name, list(checked), "pattern")
        self._text = _check_text(text)
        for pname, entry in checked.items():
            pattern, case = entry, case_sensitive
            if isinstance(entry, Mapping):
                extra = sorted(set(entry) - {"pattern", "case_sensitive"})
                if extra:
                    raise param_error(
                        f"unknown key {extra[0]!r}",
                        f"patterns.{pname}.{extra[0]}",
                        "a pattern is a string, or {pattern: ..., case_sensitive: ...}",
                    )
                pattern = entry.get("pattern")
                case = bool(entry.get("case_sensitive", case_sensitive))
            if not isinstance(pattern, str) or not pattern:
                raise param_error(
                    f"pattern {pname!r} must be a non-empty string", f"patterns.{pname}", "write e.g. ticket: 'TCK-\\d+'"
                )
            self._patterns.append(compile_pattern(pattern, 0 if case else re.IGNORECASE, f"patterns.{pname}"))


def compile_pattern(pattern: str, flags: int, param: str) -> re.Pattern[str]:
    """``pattern`` compiled, or a ConfigError that says where it breaks and how to write it."""
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        shown = pattern if len(pattern) <= 80 else pattern[:80] + "..."
        raise param_error(
            f"the regular expression {shown!r} does not compile: {exc.msg}{where}",
            param,
            "fix the pattern (Python 're' syntax); escape special characters such as . + ( [ with a "
            "backslash, and in YAML quote it with single quotes so backslashes stay as written",
        ) from exc


class TokensSignal(Signal):
    """Estimated tokens (about 4 characters each): ``name`` the whole conversation with framing,
    ``name.last`` the last user message, ``name.system`` the system prompt."""

    type_name = "tokens"

    def __init__(self, name: str, build: BuildContext | None = None) -> None:
        super().__init__(name)
        self.outputs[name] = Output("number", "estimated prompt tokens of the whole conversation", lo=0)
        self.outputs[f"{name}.last"] = Output("number", "estimated tokens of the last user message", lo=0)
        self.outputs[f"{name}.system"] = Output("number", "estimated tokens of the system prompt", lo=0)

    def extract(self, view: RequestView) -> dict[str, Value]:
        return {
            self.name: estimate_prompt_tokens(view.request.messages),
            f"{self.name}.last": estimate_tokens(view.last_user_text),
            f"{self.name}.system": estimate_tokens(view.system_text),
        }


class ConversationSignal(Signal):
    """The conversation's shape: ``name`` the user turns (depth), ``name.messages``, ``name.roles`` (the roles
    present), ``name.tool_results`` (a tool's answer is in it)."""

    type_name = "conversation"

    def __init__(self, name: str, build: BuildContext | None = None) -> None:
        super().__init__(name)
        self.outputs[name] = Output("number", "user turns", lo=0)
        self.outputs[f"{name}.messages"] = Output("number", "messages of every role", lo=0)
        self.outputs[f"{name}.roles"] = Output("labels", "the roles present", choices=ROLES)
        self.outputs[f"{name}.tool_results"] = Output(
            "bool", "a tool result is in the conversation", member_of=(f"{name}.roles", "tool")
        )

    def extract(self, view: RequestView) -> dict[str, Value]:
        roles = [m.get("role") for m in view.request.messages if isinstance(m, dict)]
        present = frozenset(r for r in roles if isinstance(r, str) and r in ROLES)
        return {
            self.name: sum(1 for r in roles if r == "user"),
            f"{self.name}.messages": len(roles),
            f"{self.name}.roles": present,
            f"{self.name}.tool_results": "tool" in present,
        }


def _has_image(messages: Sequence[Any]) -> bool:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image"):
                    return True
    return False


class RequestSignal(Signal):
    """What the request asks for besides text: ``name.images``, ``name.tools``, ``name.response_format``
    (``none``, ``text``, ``json_object``, ``json_schema``), ``name.json`` (a JSON answer is required),
    ``name.stream``, ``name.model`` (the route or model asked for) and ``name.max_tokens`` (missing when
    not given)."""

    type_name = "request"

    def __init__(self, name: str, build: BuildContext | None = None) -> None:
        super().__init__(name)
        n = name
        self.outputs.update(
            {
                f"{n}.images": Output("bool", "an image is part of a message"),
                f"{n}.tools": Output("bool", "tools (or functions) are offered to the model"),
                f"{n}.response_format": Output("label", "the response_format type", choices=RESPONSE_FORMATS),
                f"{n}.json": Output("bool", "the answer must be JSON (response_format json_object or json_schema)"),
                f"{n}.stream": Output("bool", "the answer is streamed"),
                f"{n}.model": Output("label", "the route or model the client asked for"),
                f"{n}.max_tokens": Output("number", "max_tokens (or max_completion_tokens) asked for", lo=0, optional=True),
            }
        )

    def extract(self, view: RequestView) -> dict[str, Value]:
        req, n = view.request, self.name
        params = req.params
        rf = params.get("response_format")
        kind = rf.get("type") if isinstance(rf, dict) and isinstance(rf.get("type"), str) else "none"
        kind = kind if kind in RESPONSE_FORMATS else "none"
        max_tokens = params.get("max_completion_tokens", params.get("max_tokens"))
        return {
            f"{n}.images": _has_image(req.messages),
            f"{n}.tools": bool(params.get("tools") or params.get("functions")),
            f"{n}.response_format": kind,
            f"{n}.json": kind in ("json_object", "json_schema"),
            f"{n}.stream": bool(req.stream),
            f"{n}.model": req.model,
            f"{n}.max_tokens": max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
        }


class KeySignal(Signal):
    """The API key: ``name`` its name (``anonymous`` on an open server), ``name.team`` (missing when the key
    has none) and ``name.tags`` (``keys[].team`` and ``keys[].tags`` in the config)."""

    type_name = "key"

    def __init__(self, name: str, build: BuildContext | None = None) -> None:
        super().__init__(name)
        self.outputs[name] = Output("label", "the API key's name")
        self.outputs[f"{name}.team"] = Output("label", "the API key's team", optional=True)
        self.outputs[f"{name}.tags"] = Output("labels", "the API key's tags")

    def extract(self, view: RequestView) -> dict[str, Value]:
        key = view.key
        team = getattr(key, "team", None)
        tags = getattr(key, "tags", None) or ()
        return {
            self.name: getattr(key, "name", None) or "anonymous",
            f"{self.name}.team": team if isinstance(team, str) else None,
            f"{self.name}.tags": frozenset(str(t) for t in tags),
        }


class MetadataSignal(Signal):
    """Request metadata from ``x-*`` headers: ``name.tags`` (the comma-separated ``x-turnout-tags``, lower-cased)
    and, for each ``headers: {alias: x-header-name}``, ``name.<alias>`` (the header's value; missing when
    absent)."""

    type_name = "metadata"

    def __init__(self, name: str, headers: Mapping[str, str] | None = None, build: BuildContext | None = None) -> None:
        super().__init__(name)
        self.outputs[f"{name}.tags"] = Output("labels", f"the request's tags ({TAGS_HEADER})")
        self._headers: dict[str, str] = {}
        for alias, header in (headers or {}).items():
            if not isinstance(alias, str) or not re.fullmatch(r"[a-z0-9_]+", alias) or alias == "tags":
                raise param_error(
                    f"{alias!r} is not a valid alias",
                    f"headers.{alias}",
                    "use lower-case letters, digits and '_' (and not 'tags')",
                )
            if not isinstance(header, str) or not header.lower().startswith("x-"):
                raise param_error(
                    f"{header!r} is not an x-* header (only those reach the pipeline)",
                    f"headers.{alias}",
                    "name a request header that starts with x-",
                )
            self._headers[alias] = header.lower()
            self.outputs[f"{name}.{alias}"] = Output("label", f"the {header} header", optional=True)

    def extract(self, view: RequestView) -> dict[str, Value]:
        h = view.headers
        raw = h.get(TAGS_HEADER, "")
        out: dict[str, Value] = {f"{self.name}.tags": frozenset(t.strip().lower() for t in raw.split(",") if t.strip())}
        for alias, header in self._headers.items():
            v = h.get(header)
            out[f"{self.name}.{alias}"] = v.strip() if isinstance(v, str) and v.strip() else None
        return out


__all__ = [
    "RESPONSE_FORMATS",
    "ROLES",
    "TAGS_HEADER",
    "ConversationSignal",
    "KeySignal",
    "KeywordSignal",
    "MetadataSignal",
    "RegexSignal",
    "RequestSignal",
    "TokensSignal",
    "compile_pattern",
]
