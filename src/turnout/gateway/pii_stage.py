"""The PII stage: personal data and secrets in a request are blocked, redacted (and restored in the answer),
or sent only to models marked ``private``; secrets and PII in answers are redacted, streamed or not.

One stage, two sides::

    stages:
      - type: pii
        params:
          action: redact              # allow | redact | block | private_only, for the types below
          types: [EMAIL, PHONE, CREDIT_CARD, IBAN, SSN, IP_ADDRESS, SECRET]   # the default
          per_type: {SECRET: block}   # overrides by type (the strictest action found wins)
          restore: true               # the originals go back into the answer
          response: {redact: true, types: [SECRET, CREDIT_CARD, IBAN, SSN]}  # the answer side (default)

* **request side** (phase ``guard``): every text of every message (content strings, text parts, tool-call
  arguments) is scanned by :class:`~turnout.signals.pii.PiiDetector`; :class:`~turnout.signals.pii_policy.PiiPolicy`
  decides. ``block`` refuses with :class:`~turnout.errors.PiiBlockedError` (a 400 naming the types and
  counts, never the values); ``private_only`` restricts the request to the models marked ``private: true``;
  ``redact`` replaces each value by a placeholder (``[EMAIL_1]``, the same value the same placeholder) in
  the request the model receives, which the router, the log and every later stage see too.
* **answer side**: the request gets a per-request response plugin (``ctx.plugins``) that redacts the
  configured types in the answer (new secrets the model wrote) and then restores this request's
  placeholders. Streamed answers go through :class:`~turnout.signals.redact.StreamRedactor` and
  :class:`~turnout.signals.redact.StreamRestorer`: a piece is held back only while it may still be part of
  a match (the longest pattern's width, a placeholder being written), and the text the client gets equals
  the whole-answer result exactly.

A request whose PII was redacted and restored is never cached (its answer holds the user's own data
under a key that only says ``[EMAIL_1]``): :func:`restores_pii` is what the cache stage asks.
Nothing here logs a value: notes, headers (``x-turnout-pii``) and ``ctx.signals["pii"]`` carry types and
counts only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from turnout.errors import PiiBlockedError
from turnout.gateway import _stage_params as P
from turnout.gateway.context import RequestContext
from turnout.gateway.offload import Offloader
from turnout.gateway.stages import Block, Outcome, Redirect
from turnout.signals._pii_types import PiiSpan
from turnout.signals.pii import PiiDetector
from turnout.signals.pii_policy import PiiAction, PiiPolicy
from turnout.signals.redact import PiiMapping, StreamRestorer, redact, restore
from turnout.signals.response import PiiResponseCheck, StreamCheck
from turnout.types import ChatResponse

#: requests with more text than this (characters, all messages) are scanned on the offload pool
#: (the detector reads ~2 MB/s: about 10 ms at this size)
INLINE_CHARS = 20_000
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _walk(messages: list[Any], roles: frozenset[str] | None, fn: Callable[[str], str]) -> tuple[list[Any], bool]:
    """``messages`` with every text ``fn`` returns in place of the old one, in one fixed order; and whether any
    changed. Texts: a message's content string or text parts, and its tool calls' argument strings."""
    out: list[Any] = []
    changed = False
    for m in messages:
        if not isinstance(m, dict) or (roles is not None and m.get("role") not in roles):
            out.append(m)
            continue
        new = dict(m)
        content = m.get("content")
        if isinstance(content, str):
            new["content"] = fn(content)
        elif isinstance(content, list):
            parts = []
            for p in content:
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                    p = {**p, "text": fn(p["text"])}
                parts.append(p)
            new["content"] = parts
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            new_calls = []
            for c in calls:
                fn_part = c.get("function") if isinstance(c, dict) else None
                if isinstance(fn_part, dict) and isinstance(fn_part.get("arguments"), str):
                    c = {**c, "function": {**fn_part, "arguments": fn(fn_part["arguments"])}}
                new_calls.append(c)
            new["tool_calls"] = new_calls
        if new != m:
            changed = True
        out.append(new)
    return out, changed


def _texts(messages: list[Any], roles: frozenset[str] | None) -> list[str]:
    seen: list[str] = []

    def keep(text: str) -> str:
        seen.append(text)
        return text

    _walk(messages, roles, keep)
    return seen


class PiiStage:
    """Acts on PII in requests and answers (module docstring). Built from keyword parameters.

    ``action``, ``types``, ``per_type``, ``restore``, ``min_score``, ``response``: the PII policy
    (:meth:`PiiPolicy.from_config`; defaults: redact the structured types and secrets, restore them, redact
    secrets and financial identifiers in answers). ``roles``: the message roles scanned (default: all).
    ``private_models``: the models ``private_only`` may use (default: those marked ``private: true``); a
    route's candidates are narrowed to them, and a request for another model by name is served by the first.
    ``routes``: the routes (or models) it applies to (default: every request). ``signal``: the
    ``ctx.signals`` key that gets the counts per type.

    Example::

        stage = PiiStage(action="redact", per_type={"SECRET": "block"})
        # "mail ann@example.org" reaches the model as "mail [EMAIL_1]"; the answer gets the address back
    """

    phase = "guard"

    def __init__(
        self,
        *,
        name: str = "pii",
        action: Any = "redact",
        types: Any = None,
        per_type: Any = None,
        restore: Any = True,
        min_score: Any = 0.5,
        response: Any = None,
        roles: Any = None,
        private_models: Any = None,
        routes: Any = None,
        signal: Any = "pii",
        offloader: Offloader | None = None,
        gateway_config: Any = None,
    ) -> None:
        self.name = name
        raw: dict[str, Any] = {"action": action, "restore": restore, "min_score": min_score}
        for key, value in (("types", types), ("per_type", per_type), ("response", response)):
            if value is not None:
                raw[key] = value
        self.policy = PiiPolicy.from_config(raw, key="params")
        self.detector = PiiDetector(self.policy.detect_types, min_score=self.policy.min_score)
        r = self.policy.response
        self.response_check = PiiResponseCheck(PiiDetector(r.types), style=r.style) if r.redact and r.types else None  # type: ignore[arg-type]
        self.roles = None if roles is None else frozenset(P.names("roles", roles))
        if self.roles is not None:
            P.check_known("roles", sorted(self.roles), ROLES, "role(s)")
        self.private_models = self._private(private_models, gateway_config)
        #: the config's routes (None: unknown); a model asked for by name that is not private is replaced
        self._route_names = frozenset(gateway_config.routes) if gateway_config is not None else None
        self.routes = P.routes("routes", routes, gateway_config)
        self.signal = P.text("signal", signal)
        self._offloader = offloader

    def _private(self, given: Any, cfg: Any | None) -> tuple[str, ...] | None:
        """The models ``private_only`` restricts requests to; a policy that may need them must have some."""
        may_restrict = self.policy.action is PiiAction.PRIVATE_ONLY or PiiAction.PRIVATE_ONLY in self.policy.per_type.values()
        if given is not None:
            models = tuple(P.target(f"private_models[{i}]", m, cfg) for i, m in enumerate(P.names("private_models", given)))
        elif cfg is not None:
            models = tuple(m for m, s in cfg.models.items() if getattr(s, "private", False))
        else:
            models = None
        if may_restrict and not models:
            raise P.bad(
                "action",
                "private_only needs models marked private, and there are none",
                "mark the models that may see personal data with 'private: true' under models:, "
                "or list them in params.private_models",
            )
        return models

    # ----------------------------------------------------------------------------------- request side
    def _find(self, texts: list[str]) -> list[list[PiiSpan]]:
        return [self.detector.find(t) for t in texts]

    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        """Scan the request, act on the verdict, and hand the answer side to a per-request response plugin."""
        if not P.applies(self.routes, ctx):
            return None
        texts = _texts(ctx.request.messages, self.roles)
        if self._offloader is not None and sum(map(len, texts)) > INLINE_CHARS:
            found = await self._offloader.run(self._find, texts)
        else:
            found = self._find(texts)
        verdict = self.policy.decide([s for spans in found for s in spans])
        mapping: PiiMapping | None = None
        if verdict.counts:
            ctx.signals[self.signal] = dict(verdict.counts)
            ctx.response_headers["x-turnout-pii"] = verdict.reason.removeprefix("pii: ")
            ctx.note(
                "guard",
                f"{self.name}: {verdict.reason}",
                stage=self.name,
                action=verdict.action.value,
                counts=dict(verdict.counts),
            )
            if verdict.blocked:
                return Block(
                    PiiBlockedError(
                        f"this request was refused: it carries personal data or secrets that "
                        f"may not be sent to a model ({verdict.reason})",
                        guard=self.name,
                    )
                )
            if verdict.action is PiiAction.REDACT:
                mapping = self._redact(ctx, found, verdict.by_type)
        if mapping or self.response_check is not None:
            ctx.plugins.append(PiiAnswer(self.name, self.response_check, mapping if self.policy.restore else None))
        if verdict.private_only:
            assert self.private_models is not None  # checked when the stage was built
            target = ctx.target
            asked_a_model = self._route_names is not None and target not in self._route_names
            if asked_a_model and target not in self.private_models:
                # a model asked for by name that may not see the data: the first private model serves instead
                return Redirect(
                    route=self.private_models[0],
                    models=self.private_models,
                    reason=f"{verdict.reason}; {target} is not marked private",
                )
            return Redirect(models=self.private_models, reason=verdict.reason)
        return None

    def _redact(self, ctx: RequestContext, found: list[list[PiiSpan]], by_type: Mapping[str, PiiAction]) -> PiiMapping:
        """Replace the request by its redacted copy; the mapping holds the originals for the answer."""
        mapping = PiiMapping()
        pending = iter(found)

        def rewrite(text: str) -> str:
            spans = [s for s in next(pending) if by_type.get(s.type.value) is PiiAction.REDACT]
            return redact(text, spans, "placeholder", mapping)[0] if spans else text

        messages, changed = _walk(ctx.request.messages, self.roles, rewrite)
        if changed:
            ctx.replace_request(dataclasses.replace(ctx.request, messages=messages))
        return mapping

    def __repr__(self) -> str:
        return f"PiiStage({self.name!r}, action={self.policy.action.value!r})"


# ------------------------------------------------------------------------------------------ answer side
class PiiAnswer:
    """One request's answer side: redact (``check``) then restore (``mapping``), whole or streamed.

    Added to ``ctx.plugins`` by :class:`PiiStage`, so it runs in the ``response`` phase of that request only.
    ``mapping`` is None when nothing is to be restored.
    """

    phase = "response"

    def __init__(self, name: str, check: PiiResponseCheck | None, mapping: PiiMapping | None) -> None:
        self.name = name
        self.check = check
        self.mapping = mapping if mapping else None

    def _restore(self, text: str) -> str:
        return restore(text, self.mapping) if self.mapping is not None else text

    def _text(self, ctx: RequestContext, text: str) -> str:
        if self.check is not None:
            v = self.check.check(text)
            if v.findings:
                _note_answer(ctx, self.name, v.findings)
            text = v.text
        return restore(text, self.mapping) if self.mapping is not None else text

    def on_response(self, ctx: RequestContext, response: ChatResponse) -> ChatResponse:
        """The whole answer with every choice's content checked and restored (tool-call arguments restored)."""
        body = response.body
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list):
            return response
        new_choices = []
        for choice in choices:
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict):
                new_msg = dict(msg)
                if isinstance(msg.get("content"), str):
                    new_msg["content"] = self._text(ctx, msg["content"])
                if self.mapping is not None and isinstance(msg.get("tool_calls"), list):
                    # arguments the model wrote with a placeholder get the original back
                    restored, _ = _walk([{"tool_calls": msg["tool_calls"]}], None, self._restore)
                    new_msg["tool_calls"] = restored[0]["tool_calls"]
                choice = {**choice, "message": new_msg}
            new_choices.append(choice)
        return ChatResponse({**body, "choices": new_choices}, response.usage)

    def stream_filter(self, ctx: RequestContext) -> PiiStreamFilter:
        """The streamed answer's filter (one per stream)."""
        return PiiStreamFilter(
            ctx,
            self.name,
            self.check.stream() if self.check is not None else None,
            StreamRestorer(self.mapping) if self.mapping is not None else None,
        )


class PiiStreamFilter:
    """Redacts then restores a streamed answer piece by piece; what it emits equals the whole-answer result."""

    def __init__(self, ctx: RequestContext, name: str, check: StreamCheck | None, restorer: StreamRestorer | None) -> None:
        self._ctx = ctx
        self._name = name
        self._check = check
        self._restorer = restorer

    def feed(self, text: str) -> str:
        if self._check is not None:
            text = self._check.feed(text)
        return self._restorer.feed(text) if self._restorer is not None and text else text

    def flush(self) -> str:
        text = ""
        if self._check is not None:
            text = self._check.flush()
            findings = self._check.verdict().findings
            if findings:
                _note_answer(self._ctx, self._name, findings)
        if self._restorer is not None:
            text = self._restorer.feed(text) + self._restorer.flush()
        return text


def _note_answer(ctx: RequestContext, name: str, findings: Mapping[str, int]) -> None:
    counts = ", ".join(f"{t} x{n}" for t, n in findings.items())
    ctx.note("response", f"{name}: redacted in the answer: {counts}", stage=name, counts=dict(findings))


def restores_pii(ctx: RequestContext) -> bool:
    """Whether this request's answer gets personal data restored into it (then it must not be cached)."""
    return any(isinstance(p, PiiAnswer) and p.mapping is not None for p in ctx.plugins)


__all__ = ["INLINE_CHARS", "PiiAnswer", "PiiStage", "PiiStreamFilter", "restores_pii"]
