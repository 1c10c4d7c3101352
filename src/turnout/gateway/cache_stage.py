"""The semantic cache as a gateway stage (phase ``cache``): a hit answers without any model, at no cost.

::

    stages:
      - type: cache
        params: {ttl_s: 3600, max_entries: 10000}     # every key optional; docs/guards.md lists them all

Per request, after the guards (so a refused request never reaches it, and a redacted one is looked up
redacted) and before the decision:

1. the request's :class:`~turnout.cache.fingerprint.ContextFingerprint` (API key, route, every earlier
   turn, every parameter that can change the answer) and its last user message;
2. an exact lookup, then a semantic one with the message's embedding (the router's own vector when the
   prompt is one message: :meth:`RequestContext.embedding` computes it once per request), refused on
   look-alikes (a changed number, negation, unit or name);
3. a hit is an :class:`~turnout.gateway.stages.Answer`: no model is called, nothing is held or charged,
   and a streamed request gets the cached answer replayed as chunks like a live one.

An answer the client received from a model is stored by :meth:`CacheStage.on_complete` (streamed ones
assembled from what was sent, so after the response stages' redaction). Entries are kept apart per API
key. Visible: the ``x-turnout-cache`` header (``hit``, ``miss``, ``blocked``: a look-alike was refused, or
``bypass``), ``x-turnout-cache-match`` / ``-similarity`` / ``-age`` on a hit, the
``turnout_answered_by_total{source="cache"}`` metric, and a ``cache`` reason in the request log.

Not cached: requests the cache policy refuses (``n > 1``, a temperature above ``max_temperature``), answers
it refuses (cut, tool calls, too long), requests whose personal data the PII stage restores into the answer
(:func:`~turnout.gateway.pii_stage.restores_pii`), and requests carrying ``x-turnout-cache: no-cache`` (no
lookup, no store) or ``no-store`` (lookup only). Entries live in the gateway's process, or, when the state
is in Redis, there (:class:`~turnout.state.cache_store.RedisCacheStore`): every replica serves what any of
them cached, and a Redis that fails is a miss, never a failed request.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from turnout.cache.fingerprint import ContextFingerprint
from turnout.cache.semantic import LookupResult
from turnout.cache.settings import MEASURED_THRESHOLDS, CacheSettings, build_cache
from turnout.errors import StateError
from turnout.gateway import _stage_params as P
from turnout.gateway.context import RequestContext
from turnout.gateway.embeddings import EmbeddingService
from turnout.gateway.pii_stage import restores_pii
from turnout.gateway.stages import Answer
from turnout.state.cache_store import cache_store_for
from turnout.types import ChatResponse, Usage

log = logging.getLogger(__name__)

#: the request header a client opts out with: ``no-cache`` (no lookup, no store) or ``no-store`` (no store)
REQUEST_HEADER = "x-turnout-cache"
HEADER = "x-turnout-cache"


class CacheStage:
    """Answers repeated and rephrased questions from a per-key semantic cache (module docstring).

    ``params`` are :class:`~turnout.cache.settings.CacheSettings` (``threshold``, ``ttl_s``, ``max_entries``,
    ``max_entries_per_key``, ``embedder``, ``guard``, ``candidates``, ``max_temperature``, ``finish_reasons``,
    ``cache_tool_calls``, ``max_answer_chars``); ``threshold`` defaults to the one measured for the
    embedder. ``routes``: the routes (or models) whose requests it serves (default: every request).

    Example::

        stage = CacheStage(ttl_s=600)        # minilm, threshold 0.86, 10,000 entries
        # first "What is the boiling point of water?" -> miss, the model answers, stored;
        # then "what's the boiling point of water" -> x-turnout-cache: hit (semantic), no model call
    """

    phase = "cache"

    def __init__(
        self,
        *,
        name: str = "cache",
        routes: Any = None,
        embeddings: EmbeddingService | None = None,
        gateway_config: Any = None,
        state: Any = None,
        **params: Any,
    ) -> None:
        self.name = name
        settings = dict(params)
        embedder = settings.get("embedder", CacheSettings.embedder)
        if "threshold" not in settings:
            if embedder not in MEASURED_THRESHOLDS:
                raise P.bad(
                    "threshold",
                    f"no similarity threshold was measured for embedder {embedder!r}",
                    "give params.threshold (measure one with 'turnout guards eval cache' on your "
                    "embedder; similarities are not comparable across embedders)",
                )
            settings["threshold"] = MEASURED_THRESHOLDS[embedder]
        self.settings = CacheSettings.from_params(settings, where="params")
        self.embedder = self.settings.embedder  # the builder loads it with the gateway, not on a request
        if embeddings is not None:
            P.embedder(self.embedder, embeddings)
        self.routes = P.routes("routes", routes, gateway_config)
        # with Redis state, the entries live there (turnout.state.cache_store, failing open): replicas share them
        shared = cache_store_for(state, ttl_s=self.settings.ttl_s) if state is not None else None
        self.cache = build_cache(self.settings, storage=shared)

    # ------------------------------------------------------------------------------------------- helpers
    def _fingerprint(self, ctx: RequestContext) -> tuple[ContextFingerprint | None, str]:
        """The request's fingerprint, or None and why it bypasses the cache.

        Built once per request: :meth:`on_complete` gets the one :meth:`on_request` built (kept on the context),
        unless the request or its target was replaced since.
        """
        kept = ctx.stage_data.get(self)
        if kept is None or kept[0] is not ctx.request or kept[1] != ctx.target:
            kept = ctx.stage_data[self] = (ctx.request, ctx.target, self._fingerprint_of(ctx))
        found: tuple[ContextFingerprint | None, str] = kept[2]
        return found

    def _fingerprint_of(self, ctx: RequestContext) -> tuple[ContextFingerprint | None, str]:
        if not P.applies(self.routes, ctx):
            return None, ""
        if ctx.headers.get(REQUEST_HEADER, "").strip().lower() == "no-cache":
            return None, "the client asked for no-cache"
        why = self.cache.policy.request_reason(ctx.request)
        if why is not None:
            return None, why
        if restores_pii(ctx):
            return None, "personal data is restored into this request's answer"
        tenant = ctx.key.name if ctx.key is not None else "anonymous"
        return ContextFingerprint.of(ctx.request, tenant=tenant, route=ctx.target), ""

    async def _vector(self, ctx: RequestContext, fp: ContextFingerprint) -> np.ndarray:
        # the router's vector when the last message is the whole prompt (one user turn; ctx.embedding shares it)
        return await ctx.embedding(self.embedder, fp.text)

    # ------------------------------------------------------------------------------------------ lookup
    async def on_request(self, ctx: RequestContext) -> Answer | None:
        """Look the request up; a hit answers it."""
        fp, why = self._fingerprint(ctx)
        if fp is None:
            if why:
                ctx.response_headers[HEADER] = "bypass"
                ctx.note("cache", f"{self.name}: bypassed ({why})", stage=self.name, cache="bypass")
            return None
        try:
            result = await self.cache.lookup(fp)
            if result.hit is None and fp.text:
                result = await self.cache.lookup(fp, await self._vector(ctx, fp), exact=False)
        except StateError as exc:  # a shared store that is down costs the cache, never the request
            log.warning("request %s: cache lookup failed: %s", ctx.request_id, exc)
            ctx.note("cache", f"{self.name}: lookup failed ({exc}); served without the cache", stage=self.name)
            return None
        return self._outcome(ctx, result)

    def _outcome(self, ctx: RequestContext, result: LookupResult) -> Answer | None:
        fields = result.log_fields()
        for b in result.blocked:
            ctx.note(
                "cache",
                f"{self.name}: a cached look-alike ({b.similarity:.3f}) was refused: {b.reason}",
                stage=self.name,
                similarity=round(b.similarity, 4),
                check=b.check,
            )
        hit = result.hit
        if hit is None:
            ctx.response_headers[HEADER] = "blocked" if result.blocked else "miss"
            if not result.blocked:
                best = "" if result.best_similarity is None else f", nearest {result.best_similarity:.3f}"
                ctx.note("cache", f"{self.name}: miss{best}", stage=self.name, **fields)
            return None
        ctx.response_headers.update(
            {
                HEADER: "hit",
                f"{HEADER}-match": hit.kind,
                f"{HEADER}-similarity": f"{hit.similarity:.4f}",
                f"{HEADER}-age": str(int(hit.age_s)),
            }
        )
        body = hit.response_body(id=f"chatcmpl-{ctx.request_id}")
        u = hit.usage or {}
        usage = Usage(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")))
        # the note carries the log fields (cache, cache_similarity, cache_age_s); the pipeline adds its own
        # "answered without a model" reason with this one's text
        ctx.note("cache", f"{self.name}: {hit.kind} hit", stage=self.name, **fields)
        return Answer(
            ChatResponse(body, usage),
            source="cache",
            model=hit.model or "cache",
            reason=f"{hit.kind} hit, similarity {hit.similarity:.3f}, {hit.age_s:.0f} s old",
        )

    # ------------------------------------------------------------------------------------------- store
    async def on_complete(self, ctx: RequestContext, response: ChatResponse) -> None:
        """Store the answer a model gave (the policy refuses cut answers, tool calls, several choices)."""
        if ctx.answered_by != "model" or ctx.dry_run:
            return
        if ctx.headers.get(REQUEST_HEADER, "").strip().lower() == "no-store":
            return
        fp, _ = self._fingerprint(ctx)
        if fp is None:
            return
        vec = await self._vector(ctx, fp) if fp.text else None
        outcome = await self.cache.store(fp, vec, response.body)
        if not outcome.stored:
            log.debug("request %s: answer not cached: %s", ctx.request_id, outcome.reason)

    def __repr__(self) -> str:
        s = self.settings
        return f"CacheStage({self.name!r}, embedder={s.embedder!r}, threshold={s.threshold}, ttl_s={s.ttl_s})"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


__all__ = ["HEADER", "MEASURED_THRESHOLDS", "REQUEST_HEADER", "CacheStage"]
