"""Prompt and parameter plugins: stages that change a request, usually added by a matched decision rule.

Three built-in stage types (``BUILTIN_STAGES``), usable in a decision's ``plugins:`` (for the requests it
matches) or under ``stages:`` (for every request)::

    plugins:
      - {type: system_prompt, params: {text: "Answer in French.", mode: add}}     # add | append | replace
      - {type: set_params, params: {params: {max_tokens: 256, reasoning_effort: low}, mode: override}}
      - {type: add_headers, params: {headers: {x-answer-language: "{lang}"}}}    # {signal} takes its value

All three run in the ``guard`` phase (after the signals and the decision, before the cache and the
route's decision), so the cache, the router and the log see the request as they changed it. A system
prompt does not change the user turns, so the prompt's embedding (the router's, the cache's) stays valid.

* ``system_prompt``: ``add`` puts a system message before the client's (theirs are kept); ``append`` puts it
  after the client's system messages; ``replace`` removes the client's system (and developer) messages.
* ``set_params``: request fields (``max_tokens``, ``temperature``, ``reasoning_effort``...) forwarded to the
  model; ``override`` replaces what the client sent, ``default`` sets only what it did not send.
* ``add_headers``: response headers; ``{name}`` in a value is replaced by that signal's value (a list of
  labels joined by commas; empty when missing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from turnout.gateway import _stage_params as P  # P.bad: a relative key, build_stage puts it under the stage's path
from turnout.gateway.context import RequestContext
from turnout.gateway.stages import Outcome

#: request fields a plugin may not set (the route, the conversation, the stream framing)
FIXED_PARAMS = frozenset({"model", "messages", "stream", "n"})
#: headers the server sets itself on every answer
RESERVED_HEADERS = frozenset(
    {
        "x-turnout-request-id",
        "x-turnout-route",
        "x-turnout-model",
        "x-turnout-rule",
        "x-turnout-plan",
        "x-turnout-calls",
        "x-turnout-answered-by",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "set-cookie",
    }
)
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)\}")
_SYSTEM_ROLES = ("system", "developer")


class SystemPromptStage:
    """Adds or replaces the system prompt (module docstring). ``text``: the prompt; ``mode``: add | append |
    replace; ``role``: system (default) or developer."""

    phase = "guard"

    def __init__(self, text: str, mode: str = "add", role: str = "system", name: str = "system_prompt") -> None:
        if not isinstance(text, str) or not text.strip():
            raise P.bad("text", "the system prompt is empty", "give text: the prompt to add")
        if mode not in ("add", "append", "replace"):
            raise P.bad("mode", f"{mode!r} is not a mode", "use add, append or replace")
        if role not in _SYSTEM_ROLES:
            raise P.bad("role", f"{role!r} is not a system role", "use system or developer")
        self.name, self.text, self.mode, self.role = name, text, mode, role

    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        msgs = list(ctx.request.messages)
        mine: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.mode == "replace":
            msgs = [m for m in msgs if not (isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES)]
            msgs.insert(0, mine)
        elif self.mode == "add":
            msgs.insert(0, mine)
        else:  # append: after the leading system messages
            i = 0
            while i < len(msgs) and isinstance(msgs[i], dict) and msgs[i].get("role") in _SYSTEM_ROLES:
                i += 1
            msgs.insert(i, mine)
        ctx.request.messages = msgs
        ctx.system_changed()
        ctx.note(
            "plugin",
            f"{self.name}: system prompt {'replaced' if self.mode == 'replace' else 'added'} ({len(self.text)} characters)",
            stage=self.name,
            mode=self.mode,
        )
        return None


class SetParamsStage:
    """Sets request parameters (module docstring). ``params``: the fields; ``mode``: override | default."""

    phase = "guard"

    def __init__(self, params: Mapping[str, Any], mode: str = "override", name: str = "set_params") -> None:
        if not isinstance(params, Mapping) or not params:
            raise P.bad("params", "no parameter to set", "give params: {max_tokens: 256, ...}")
        fixed = sorted(FIXED_PARAMS & set(params))
        if fixed:
            raise P.bad(
                f"params.{fixed[0]}",
                f"{fixed[0]!r} cannot be set by a plugin",
                "send the request elsewhere with a decision's use.route; change messages with system_prompt",
            )
        if mode not in ("override", "default"):
            raise P.bad("mode", f"{mode!r} is not a mode", "use override or default")
        self.name, self.params, self.mode = name, dict(params), mode

    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        set_now = apply_params(ctx, self.params, override=self.mode == "override")
        if set_now:
            ctx.note("plugin", f"{self.name}: set {', '.join(sorted(set_now))}", stage=self.name, params=set_now)
        return None


def apply_params(ctx: RequestContext, params: Mapping[str, Any], *, override: bool) -> dict[str, Any]:
    """Set ``params`` on the request (``override``: replace the client's; else only the missing); returns what
    was set."""
    target = ctx.request.params
    done = {k: v for k, v in params.items() if override or k not in target}
    target.update(done)
    return done


class AddHeadersStage:
    """Adds response headers (module docstring). ``headers``: ``{name: value}``; ``{signal}`` in a value is
    replaced by the signal's value for this request."""

    phase = "guard"

    def __init__(self, headers: Mapping[str, str], name: str = "add_headers") -> None:
        if not isinstance(headers, Mapping) or not headers:
            raise P.bad("headers", "no header to add", "give headers: {x-my-header: value}")
        self.headers: dict[str, str] = {}
        for k, v in headers.items():
            key = str(k).lower()
            if not _HEADER_NAME.fullmatch(key) or key in RESERVED_HEADERS:
                raise P.bad(
                    f"headers.{k}",
                    f"{k!r} cannot be added" + (" (turnout sets it)" if key in RESERVED_HEADERS else " (not a header name)"),
                    "use lower-case letters, digits and '-', e.g. x-team-route",
                )
            if not isinstance(v, (str, int, float)) or isinstance(v, bool) or any(c in str(v) for c in "\r\n\0"):
                raise P.bad(f"headers.{k}", f"the value of {k!r} must be text on one line", "give a string without line breaks")
            try:
                str(v).encode("latin-1")
            except UnicodeEncodeError:
                raise P.bad(
                    f"headers.{k}",
                    f"the value of {k!r} has characters a header cannot carry",
                    "use ASCII (or Latin-1) characters",
                ) from None
            self.headers[key] = str(v)
        self.name = name

    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        for k, v in self.headers.items():
            ctx.response_headers[k] = _PLACEHOLDER.sub(lambda m: _header_value(ctx.signals.get(m.group(1))), v)
        return None


def _header_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, set, frozenset)):
        text = ",".join(sorted(str(x) for x in value))
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    # a signal's value comes from the request: never let it break the header line or its encoding
    return re.sub(r"[\r\n\0]", " ", text).encode("latin-1", "replace").decode("latin-1")[:256]


__all__ = ["FIXED_PARAMS", "RESERVED_HEADERS", "AddHeadersStage", "SetParamsStage", "SystemPromptStage", "apply_params"]
