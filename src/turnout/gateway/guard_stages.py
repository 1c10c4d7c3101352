"""The domain guard and the jailbreak guard as gateway stages (phase ``guard``).

Both read the prompt's embedding through :meth:`RequestContext.embedding`, so the router, the cache and
every guard share one vector per request, and both are plain classes built from keyword parameters
(global ``stages:`` or a decision's ``plugins:``)::

    stages:
      - type: jailbreak                 # the detector shipped in the wheel unless `artifact` is given
        params: {action: block}         # block | flag | route (with route: NAME)
      - type: domain_guard
        params:
          artifact: domains.npz         # `turnout signals train domain ...`
          domains: [banking, credit_cards]
          action: fallback              # refuse | canned (reply: TEXT) | fallback (route: NAME) | flag
          route: general
          routes: [support]             # guard only requests to these routes (default: every request)

What each action does:

* ``refuse`` / ``block``: a 400 in OpenAI's error form (:class:`~turnout.errors.OutOfScopeError`,
  :class:`~turnout.errors.GuardBlockedError`), saying why without repeating the prompt;
* ``canned``: answered with the configured reply, streamed like any answer, at no cost;
* ``fallback`` / ``route``: served by another route or model (the chain, budgets and keys apply there);
* ``flag``: let through, named in the ``x-turnout-flags`` header and in the log's reasons.

Every verdict goes to ``ctx.signals`` (``domain``: the label or ``out_of_scope``; ``jailbreak``: the score)
for decision rules and the log. The classifiers are numpy products on one vector (about 0.1-0.3 ms) and run
inline; a long or disguised prompt, which the jailbreak detector embeds again once per decoded reading, is
scored on the gateway's offload pool instead.
"""

from __future__ import annotations

import logging
from typing import Any

from turnout.errors import ConfigError, GuardBlockedError, OutOfScopeError, TurnoutError
from turnout.gateway import _stage_params as P
from turnout.gateway.context import RequestContext
from turnout.gateway.embeddings import EmbeddingService
from turnout.gateway.offload import Offloader
from turnout.gateway.stages import Block, Outcome, Redirect
from turnout.signals.domain import OUT_OF_SCOPE, DomainClassifier
from turnout.signals.jailbreak import (
    INLINE_CHARS,
    SHIPPED_JAILBREAK,
    JailbreakDetector,
    JailbreakVerdict,
    shipped_jailbreak_artifact,
)

log = logging.getLogger(__name__)

DOMAIN_ACTIONS = ("refuse", "canned", "fallback", "flag")
JAILBREAK_ACTIONS = ("block", "flag", "route")


def _embedder_name(given: Any, trained_on: str) -> str:
    """The embedder a stage reads vectors from: the artifact's, which ``embedder:`` may only repeat."""
    if given is None:
        return trained_on
    name = P.text("embedder", given)
    if name != trained_on:
        raise P.bad(
            "embedder",
            f"the artifact was trained on {trained_on!r} vectors, not {name!r}",
            f"leave embedder out (it defaults to {trained_on!r}), or train the artifact again with {name!r}",
        )
    return name


# ----------------------------------------------------------------------------------------------- domain
class DomainGuardStage:
    """Guarded routing: a request that belongs to none of the declared ``domains`` is refused, answered with a
    canned reply, sent to a fallback route, or flagged.

    ``artifact``: a domain classifier (``turnout signals train domain EXAMPLES --out FILE.npz``).
    ``domains``: the in-scope domains (default: every domain of the artifact). ``threshold``: overrides the
    artifact's out-of-scope similarity threshold. ``action``: ``refuse`` (default), ``canned`` (with
    ``reply``), ``fallback`` (with ``route``) or ``flag``. ``message``: the refusal's text. ``routes``: the
    routes (or models) it guards (default: every request). ``signal``: the ``ctx.signals`` key it writes.

    Example::

        stage = DomainGuardStage(artifact="domains.npz", domains=["banking"], action="canned",
                                 reply="I can only help with banking questions.")
        # in the pipeline: await stage.on_request(ctx) -> None (in scope) or an Answer with the reply
    """

    phase = "guard"

    def __init__(
        self,
        *,
        artifact: Any = None,
        name: str = "domain_guard",
        domains: Any = None,
        threshold: Any = None,
        action: Any = "refuse",
        reply: Any = None,
        route: Any = None,
        message: Any = None,
        routes: Any = None,
        signal: Any = "domain",
        embedder: Any = None,
        embeddings: EmbeddingService | None = None,
        gateway_config: Any = None,
    ) -> None:
        self.name = name
        if artifact is None:
            raise P.bad(
                "artifact",
                "the domain guard needs its classifier",
                "give artifact: FILE.npz, trained with 'turnout signals train domain EXAMPLES --out FILE.npz' "
                "(EXAMPLES: {text, label} JSONL rows of each domain)",
            )
        path = P.existing_file(
            "artifact", artifact, gateway_config, "train one with 'turnout signals train domain EXAMPLES --out FILE.npz'"
        )
        try:
            self.classifier = DomainClassifier.load(path)
        except TurnoutError as exc:  # a damaged or foreign artifact: its DataError names the file
            raise P.bad("artifact", *_message_and_fix(exc, "train it again with 'turnout signals train domain'")) from exc
        clf = self.classifier
        self.domains = frozenset(clf.domains if domains is None else P.names("domains", domains))
        P.check_known("domains", sorted(self.domains), clf.domains, "domain(s) of the artifact")
        if threshold is not None:
            clf.threshold = P.number("threshold", threshold, lo=-1.0, hi=1.0)
        self.action = P.choice("action", action, DOMAIN_ACTIONS)
        self.reply = P.text("reply", reply) if self.action == "canned" else None
        self.route = P.target("route", route, gateway_config) if self.action == "fallback" else None
        for param, value, needed in (("reply", reply, "canned"), ("route", route, "fallback")):
            if value is not None and self.action != needed:
                raise P.bad(
                    param,
                    f"{param} is only read when action is {needed} (action is {self.action})",
                    f"set action: {needed}, or remove {param}",
                )
        self.message = P.text("message", message) if message is not None else None
        self.routes = P.routes("routes", routes, gateway_config)
        self.signal = P.text("signal", signal)
        self.embedder = _embedder_name(embedder, clf.embedder)
        try:
            clf.check_embedder(P.embedder(self.embedder, embeddings))
        except ConfigError as exc:
            raise P.bad("artifact", exc.message, exc.fix or "train the artifact with the gateway's embedder") from exc

    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        """Classify the prompt; act when it is out of scope for this stage's domains."""
        if not P.applies(self.routes, ctx) or not ctx.prompt_text.strip():
            return None  # nothing to classify (an image-only request): the route decides
        pred = self.classifier.predict(await ctx.embedding(self.embedder))
        inside = not pred.out_of_scope and pred.label in self.domains
        ctx.signals[self.signal] = pred.label if inside else OUT_OF_SCOPE
        ctx.response_headers["x-turnout-domain"] = ctx.signals[self.signal]
        if inside:
            return None
        why = (
            f"similarity {pred.similarity:.3f} to the nearest examples is under the threshold {pred.threshold:.3f}"
            if pred.out_of_scope
            else f"it reads as {pred.label!r}, which this service does not answer"
        )
        ctx.note(
            "guard",
            f"{self.name}: out of scope ({why})",
            stage=self.name,
            nearest=pred.nearest,
            similarity=round(pred.similarity, 4),
            threshold=round(pred.threshold, 4),
            action=self.action,
        )
        if self.action == "refuse":
            served = ", ".join(sorted(self.domains))
            return Block(
                OutOfScopeError(
                    self.message or f"this request is outside what this service answers ({served}): {why}", guard=self.name
                )
            )
        if self.action == "canned":
            assert self.reply is not None
            return P.canned_answer(ctx, self.reply, source=self.name, reason=f"out of scope: {why}")
        if self.action == "fallback":
            return Redirect(route=self.route, reason=f"out of scope: {why}")
        P.flag(ctx, OUT_OF_SCOPE)
        return None

    def __repr__(self) -> str:
        return f"DomainGuardStage({self.name!r}, domains={sorted(self.domains)}, action={self.action!r})"


# -------------------------------------------------------------------------------------------- jailbreak
class JailbreakStage:
    """Jailbreak and prompt-injection guard: ``block`` (400), ``flag`` (header + log) or ``route`` to a
    hardened model or route.

    ``artifact``: a detector from ``turnout signals train jailbreak`` (default: the one shipped in the
    wheel for ``embedder``, ``minilm`` (default) or ``minilm-int8``: 2.5 times faster to embed, same figures).
    ``threshold``: overrides the artifact's. ``action``: ``block`` (default), ``flag`` or
    ``route`` (with ``route``). ``act_at``: the score from which the action applies; a request flagged under
    it is only flagged (default: every flagged request; the embedded default blocks from 0.9, where the
    shipped detector refused no benign prompt of the measured sets). ``message``: the refusal's text.
    ``routes``: the routes (or models) it guards (default: every request). ``signal``: the ``ctx.signals``
    key that gets the score.

    Example::

        stage = JailbreakStage(action="flag")
        # a flagged request goes on, with "x-turnout-flags: jailbreak" on its answer and the reasons logged
    """

    phase = "guard"

    def __init__(
        self,
        *,
        name: str = "jailbreak",
        artifact: Any = None,
        threshold: Any = None,
        action: Any = "block",
        act_at: Any = None,
        route: Any = None,
        message: Any = None,
        routes: Any = None,
        signal: Any = "jailbreak",
        embedder: Any = None,
        embeddings: EmbeddingService | None = None,
        offloader: Offloader | None = None,
        gateway_config: Any = None,
    ) -> None:
        self.name = name
        self.embedder = P.text("embedder", embedder) if embedder is not None else "minilm"
        if artifact is None:
            if self.embedder not in SHIPPED_JAILBREAK:
                raise P.bad(
                    "embedder",
                    f"no jailbreak detector is shipped for embedder {self.embedder!r}",
                    f"use {' or '.join(SHIPPED_JAILBREAK)}, or give artifact: FILE.npz trained with "
                    f"'turnout signals train jailbreak TRAIN --embedder {self.embedder} --out FILE.npz'",
                )
            path = shipped_jailbreak_artifact(self.embedder)
            if not path.is_file():  # a broken installation, not a user's mistake
                raise P.bad(
                    "artifact",
                    f"the shipped jailbreak detector is missing ({path})",
                    "reinstall turnout, or give artifact: FILE.npz from 'turnout signals train jailbreak'",
                )
        else:
            path = P.existing_file(
                "artifact", artifact, gateway_config, "train one with 'turnout signals train jailbreak TRAIN --out FILE.npz'"
            )
        self.artifact = path
        try:
            self.detector = JailbreakDetector.load(path, P.embedder(self.embedder, embeddings))
        except TurnoutError as exc:  # damaged, or fitted on another embedder's vectors
            raise P.bad("artifact", *_message_and_fix(exc, "train it again with 'turnout signals train jailbreak'")) from exc
        if self.detector.embedder_name != self.embedder:
            raise P.bad(
                "embedder",
                f"the artifact was trained on {self.detector.embedder_name!r} vectors, not {self.embedder!r}",
                f"set embedder: {self.detector.embedder_name}",
            )
        if threshold is not None:
            self.detector.threshold = P.number("threshold", threshold, lo=0.0, hi=1.0)
        self.action = P.choice("action", action, JAILBREAK_ACTIONS)
        if route is not None and self.action != "route":
            raise P.bad(
                "route",
                f"route is only read when action is route (action is {self.action})",
                "set action: route, or remove route",
            )
        self.route = P.target("route", route, gateway_config) if self.action == "route" else None
        if act_at is not None and self.action == "flag":
            raise P.bad(
                "act_at",
                "act_at is only read when action is block or route (action is flag)",
                "remove act_at, or set action: block",
            )
        #: the score from which the action applies; flagged requests under it are only flagged
        self.act_at = P.number("act_at", act_at, lo=0.0, hi=1.0) if act_at is not None else None
        self.message = P.text("message", message) if message is not None else None
        self.routes = P.routes("routes", routes, gateway_config)
        self.signal = P.text("signal", signal)
        self._offloader = offloader

    async def _verdict(self, text: str, ctx: RequestContext) -> JailbreakVerdict:
        vec = await ctx.embedding(self.embedder)
        if self._offloader is not None and (len(text) > INLINE_CHARS or _disguised(text)):
            # decoded readings are embedded again inside the detector: a blocking call, kept off the loop
            return await self._offloader.run(self.detector.score, text, vec)
        return self.detector.score(text, vec)

    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        """Score the user turns; act when the detector flags them."""
        text = ctx.prompt_text
        if not P.applies(self.routes, ctx) or not text.strip():
            return None
        v = await self._verdict(text, ctx)
        ctx.signals[self.signal] = round(v.score, 4)
        if not v.flagged:
            return None
        why = "; ".join(v.reasons) or f"score {v.score:.2f} >= {v.threshold:.2f}"
        acts = self.act_at is None or v.score >= self.act_at
        action = self.action if acts else "flag"
        ctx.note(
            "guard",
            f"{self.name}: flagged as a jailbreak / prompt-injection attempt ({why})",
            stage=self.name,
            score=round(v.score, 4),
            threshold=round(v.threshold, 4),
            reasons=list(v.reasons),
            action=action,
        )
        if action == "block":
            return Block(
                GuardBlockedError(
                    self.message
                    or "this request was refused: it reads as an attempt to "
                    f"override the assistant's instructions (jailbreak / prompt injection: "
                    f"{why})",
                    guard=self.name,
                )
            )
        P.flag(ctx, self.name)
        if action == "route":
            return Redirect(route=self.route, reason=f"flagged as a jailbreak attempt ({why})")
        return None

    def __repr__(self) -> str:
        return f"JailbreakStage({self.name!r}, artifact={self.artifact.name!r}, action={self.action!r})"


def _message_and_fix(exc: TurnoutError, default_fix: str) -> tuple[str, str]:
    """A loader's error as (message, fix), the fix not repeated in the message."""
    fix = getattr(exc, "fix", None)
    text = getattr(exc, "message", None) or str(exc)
    if fix and text.endswith(f" (fix: {fix})"):
        text = text[: -len(f" (fix: {fix})")]
    return text, fix or default_fix


def _disguised(text: str) -> bool:
    """Whether the detector will read ``text`` again de-obfuscated or decoded (then it embeds each reading).

    The detector's own test (its module-level ``variants``): about 0.06 ms for a question, and it keeps a
    blocking embedding per reading off the event loop.
    """
    from turnout.signals._deobfuscate import variants

    return bool(variants(text))


__all__ = [
    "DOMAIN_ACTIONS",
    "INLINE_CHARS",
    "JAILBREAK_ACTIONS",
    "SHIPPED_JAILBREAK",
    "DomainGuardStage",
    "JailbreakStage",
    "shipped_jailbreak_artifact",
]
